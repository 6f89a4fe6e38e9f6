"""The graph-folder fuzzer: every mutation of a saved graph either loads and then runs identically on
the fast path, the reference interpreter and ONNX Runtime, or raises a BitsmithError.

Starting from small golden graphs (tests/golden/), hypothesis draws one to three mutations of a
folder: graph.json fields (types, edge values, missing and unknown keys, node order, names, a
consistent rename), the parameters (dtypes, shapes, elements at the edges of their dtype, keys
removed, added, renamed), and raw bytes of either file. The folder is written with
`tests.fuzz.rewrite_graph_folder` (no IntegerGraph involved) and loaded with `load`. Then:

* loading raises a BitsmithError (a GraphError), or
* the graph runs: `engine.run(g, x)` and `engine.run(g, x, return_all=True)[output]` return the same
  codes or raise the same BitsmithError, and the integer ONNX export (run in onnxruntime) returns
  those codes too, or refuses with a BitsmithError (an exportable-but-unsupported graph). Where the
  engine refuses a graph (not an input), ONNX refuses it as well.

Anything else, a foreign exception or a disagreement, fails the test with the mutation that caused
it (hypothesis shrinks it). Derandomized, so CI draws the same mutations every run; the budget is
`DEFAULT_EXAMPLES` per base graph in the default run, `SLOW_EXAMPLES` in the slow one
(`pytest -m slow tests/integer/test_fuzz.py`; docs/guarantees.md has the measured counts and times).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from bitsmith.errors import AccumulatorOverflowError, BitsmithError
from bitsmith.integer import engine, load
from bitsmith.integer.ops import OPS
from bitsmith.onnx.export import export_onnx, run_onnx
from tests.fuzz import flip_bytes, mutate_json, mutate_tensors, rewrite_graph_folder
from tests.helpers import golden_path

BASES = ("single_layer", "mixed_small", "concat", "reorg", "avgpool_small", "lenet5_clipq")
DEFAULT_EXAMPLES = int(os.environ.get("BITSMITH_FUZZ_EXAMPLES", 350))
SLOW_EXAMPLES = int(os.environ.get("BITSMITH_FUZZ_SLOW_EXAMPLES", 8_400))
#: Where to append one JSON line of counts and times per fuzz test (set it to measure the budget).
STATS_FILE = os.environ.get("BITSMITH_FUZZ_STATS")


class Base:
    """A golden graph's files as the fuzzer mutates them."""

    def __init__(self, name: str):
        folder = golden_path(name)
        self.name = name
        self.doc = json.loads((folder / "graph.json").read_text())
        self.tensors = load_file(folder / "tensors.safetensors")
        self.json_bytes = (folder / "graph.json").read_bytes()
        self.tensor_bytes = (folder / "tensors.safetensors").read_bytes()
        tensors = [t["name"] for t in self.doc["tensors"]]
        self.names = sorted(set(tensors) | set(self.tensors) | set(OPS))
        param = sorted(self.tensors)[0]
        self.extra_keys = {
            "bias": param, "weight": param, "multiplier": param, "shift": param, "codebook": param,
            "weight_index": param, "weight_format": "codebook", "index_bits": 2, "scale": [1.0], "bits": 8,
            "signed": True, "zero_point": 0, "stride": 2, "kernel": 2, "padding": 1, "dilation": 2, "groups": 2,
            "weight_bits": 8, "clamp_min": 0, "clamp_max": 127, "multiplier_bits": 16, "metadata": {},
            "dataset": "synthetic", "model": {"name": "lenet5"}, "attrs": {}, "params": {}, "name": tensors[-1],
            "inputs": [tensors[0]], "output": tensors[-1], "op": "Flatten", "dtype": "int", "shape": [1],
        }


@st.composite
def folder_mutations(draw, base: Base):
    """("files", doc, tensors) to write with rewrite_graph_folder, or ("raw", json bytes, tensor bytes)."""
    mode = draw(st.sampled_from(["json", "json", "json", "tensors", "tensors", "both", "rename", "raw"]))
    if mode == "raw":
        json_bytes, tensor_bytes = base.json_bytes, base.tensor_bytes
        if draw(st.booleans()):
            tensor_bytes = flip_bytes(draw, tensor_bytes)
        else:
            json_bytes = flip_bytes(draw, json_bytes)
        return "raw", json_bytes, tensor_bytes
    doc, tensors = base.doc, base.tensors
    if mode == "rename":
        doc = renamed(base.doc, draw(st.sampled_from([t["name"] for t in base.doc["tensors"]])),
                      draw(st.sampled_from(["renamed", "x.y-z", "_", "input", "a/b", ""])))
    for _ in range(draw(st.integers(1, 3))):
        if mode in ("json", "both", "rename") and draw(st.booleans() if mode != "json" else st.just(True)):
            doc = mutate_json(draw, doc, base.names, base.extra_keys)
        if mode in ("tensors", "both"):
            tensors = mutate_tensors(draw, tensors)
    return "files", doc, tensors


def renamed(doc: dict, old: str, new: str) -> dict:
    """`doc` with tensor `old` (and the node producing it) called `new` everywhere: the same graph."""
    doc = json.loads(json.dumps(doc))
    swap = lambda name: new if name == old else name  # noqa: E731
    doc["inputs"] = [swap(n) for n in doc["inputs"]]
    doc["outputs"] = [swap(n) for n in doc["outputs"]]
    for t in doc["tensors"]:
        t["name"] = swap(t["name"])
    for n in doc["nodes"]:
        n["name"], n["output"], n["inputs"] = swap(n["name"]), swap(n["output"]), [swap(i) for i in n["inputs"]]
    return doc


def images(shape) -> torch.Tensor:
    """Two ordinary images and one far beyond any calibrated range (saturation)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, *shape, generator=gen)
    x[2] *= 1000
    return x


def outcome(fn):
    """("ok", codes) or ("refused", error class); any other exception propagates and fails the test."""
    try:
        return "ok", fn()
    except BitsmithError as e:
        return "refused", type(e)


class Fuzzer:
    def __init__(self, base: Base, work: Path):
        self.base, self.work = base, work
        self.stats = {"base": base.name, "mutations": 0, "loaded": 0, "refused": 0, "ran": 0, "onnx_runs": 0,
                      "onnx_agreed": 0, "onnx_refused": 0}
        self.onnx_cache: dict[str, object] = {}

    def __call__(self, mutation) -> None:
        self.stats["mutations"] += 1
        folder = self.work / "g"
        shutil.rmtree(folder, ignore_errors=True)
        kind, a, b = mutation
        if kind == "raw":
            folder.mkdir(parents=True)
            (folder / "graph.json").write_bytes(a)
            (folder / "tensors.safetensors").write_bytes(b)
        else:
            rewrite_graph_folder(folder, a, b)
        try:
            g = load(folder)
        except BitsmithError:
            self.stats["refused"] += 1
            return
        self.stats["loaded"] += 1
        saved = load(g.save(self.work / "saved"))  # what loaded is valid in memory and saves as it was
        assert saved.to_json() == g.to_json() and saved.params.keys() == g.params.keys()
        assert all(torch.equal(saved.params[k], g.params[k]) for k in g.params)
        x = images(g.input_spec.shape)
        fast = outcome(lambda: engine.run(g, x))
        literal = outcome(lambda: engine.run(g, x, return_all=True)[g.outputs[0]])
        assert fast[0] == literal[0], f"fast path {fast}, reference {literal}"
        if fast[0] == "ok":
            self.stats["ran"] += 1
            assert fast[1].dtype == literal[1].dtype == torch.int64
            assert torch.equal(fast[1], literal[1]), "fast path and reference interpreter disagree"
        else:
            assert fast[1] is literal[1], f"fast path raised {fast[1].__name__}, reference {literal[1].__name__}"
        self._onnx(folder, g, x, fast)

    def _onnx(self, folder: Path, g, x, engine_outcome) -> None:
        doc = g.to_json()
        doc.pop("metadata")
        key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()
                             + (folder / "tensors.safetensors").read_bytes()).hexdigest()
        if key not in self.onnx_cache:
            self.stats["onnx_runs"] += 1
            path = self.work / f"m{self.stats['onnx_runs']}.onnx"
            self.onnx_cache[key] = outcome(lambda: run_onnx(export_onnx(g, path), x))
            path.unlink(missing_ok=True)
        onnx = self.onnx_cache[key]
        if onnx[0] == "refused":
            self.stats["onnx_refused"] += 1
            return
        if engine_outcome[0] == "ok":
            assert onnx[1].dtype == np.int64
            assert np.array_equal(onnx[1], engine_outcome[1].numpy()), "ONNX Runtime and the engine disagree"
            self.stats["onnx_agreed"] += 1
        else:  # the engine refused: only an accumulator overflow of this input may pass in ONNX (no check there)
            assert engine_outcome[1] is AccumulatorOverflowError, \
                f"the engine refused the graph ({engine_outcome[1].__name__}) but ONNX ran it"


def fuzz(name: str, examples: int, work: Path) -> dict:
    base = Base(name)
    fuzzer = Fuzzer(base, work)

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(folder_mutations(base))
    def run(mutation):
        fuzzer(mutation)

    start = time.perf_counter()
    run()
    stats = fuzzer.stats | {"seconds": round(time.perf_counter() - start, 2)}
    if STATS_FILE:
        with open(STATS_FILE, "a") as f:
            f.write(json.dumps(stats) + "\n")
    assert stats["mutations"] >= examples  # the budget was spent (hypothesis did not stop early)
    assert stats["loaded"] > 0 and stats["refused"] > 0  # both outcomes were exercised
    return stats


@pytest.mark.parametrize("name", BASES)
def test_fuzz_graph_folder(name, tmp_path, one_thread):
    fuzz(name, DEFAULT_EXAMPLES, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASES)
def test_fuzz_graph_folder_long(name, tmp_path, one_thread):
    fuzz(name, SLOW_EXAMPLES, tmp_path)


def test_a_consistent_rename_loads_and_runs_identically(tmp_path, one_thread):
    base = Base("mixed_small")
    doc = renamed(base.doc, base.doc["tensors"][1]["name"], "renamed")
    rewrite_graph_folder(tmp_path / "g", doc, base.tensors)
    x = images(load(golden_path("mixed_small")).input_spec.shape)
    assert torch.equal(engine.run(load(tmp_path / "g"), x), engine.run(load(golden_path("mixed_small")), x))
