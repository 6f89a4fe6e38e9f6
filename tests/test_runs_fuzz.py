"""The run-folder fuzzer: every mutation of a float run's checkpoint either loads and then runs (the
model's forward pass, the optimizer state restored into a fresh optimizer) or raises a BitsmithError.

One tiny run is trained once per session (lenet5 on the synthetic data set, two steps). hypothesis
mutates its checkpoint's metadata JSON (the schema of `bitsmith.runs._parse_meta`), its tensors
(model weights, optimizer state, generator states: dtypes, shapes, edge values, keys), the raw
bytes of the checkpoint (run.json re-tied to the mutated checkpoint), and run.json / metrics.json
(run.json is checked against the checkpoint it describes; metrics.json is not read back).
Derandomized; `DEFAULT_EXAMPLES` in the default run, `SLOW_EXAMPLES` with `-m slow`.
"""

from __future__ import annotations

import hashlib

import json
import os
import shutil
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsmith.errors import BitsmithError
from bitsmith.runs import CHECKPOINT_FILE, METRICS_FILE, RUN_FILE, load_optimizer_state, load_run, read_checkpoint
from bitsmith.storage import load_tensors
from bitsmith.train import TrainConfig, make_optimizer, train
from tests.fuzz import flip_bytes, mutate_json, mutate_tensors

TINY = TrainConfig(model="lenet5", dataset="synthetic", epochs=1, batch_size=32, limit_train=64, limit_test=32)
DEFAULT_EXAMPLES = int(os.environ.get("BITSMITH_FUZZ_RUN_EXAMPLES", 300))
SLOW_EXAMPLES = int(os.environ.get("BITSMITH_FUZZ_SLOW_RUN_EXAMPLES", 6_000))
STATS_FILE = os.environ.get("BITSMITH_FUZZ_STATS")
EXTRA_KEYS = {"epoch": 1, "dataset": "synthetic", "data_dir": None, "model": {"name": "lenet5"}, "kwargs": {},
              "num_classes": 10, "input_shape": [1, 32, 32], "name": "nin", "type": "Adam", "lr": 0.1,
              "num_params": 5, "betas": [0.9, 0.999], "state_values": {"0": {"step": 1}}, "history": [],
              "metrics": {}, "optimizer": {"type": "SGD", "param_groups": [{"num_params": 5}]}, "bias": True}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TINY, out, quiet=True)
    tensors, header = load_tensors(out / CHECKPOINT_FILE)
    return out, tensors, json.loads(header["bitsmith"])


@st.composite
def run_mutations(draw, tensors, meta, data: bytes):
    """("meta", tensors, meta) | ("raw", checkpoint bytes) | ("copies", text for run.json, text for metrics.json)."""
    mode = draw(st.sampled_from(["meta", "meta", "meta", "tensors", "tensors", "raw", "copies"]))
    if mode == "raw":
        return "raw", flip_bytes(draw, data), None
    if mode == "copies":
        return "copies", draw(st.sampled_from(["", "[]", "{", json.dumps(meta)[:-9]])), "null"
    names = sorted(set(tensors)) + ["lenet5", "SGD", "synthetic"]
    for _ in range(draw(st.integers(1, 3))):
        if mode == "meta":
            meta = mutate_json(draw, meta, names, EXTRA_KEYS)
        else:
            tensors = mutate_tensors(draw, tensors)
    return "meta", tensors, meta


def check_run(folder, x) -> str:
    try:
        checkpoint = read_checkpoint(folder)
        run = load_run(folder)
    except BitsmithError:
        return "refused"
    with torch.no_grad():
        y = run.model(x)
    assert y.shape == (len(x), run.model.num_classes)
    # Resuming puts the optimizer state back into a fresh optimizer of the run's kind.
    config = TrainConfig(model="lenet5", dataset="synthetic", epochs=1,
                         optimizer="adam" if checkpoint.meta["optimizer"]["type"] == "Adam" else "sgd").resolved()
    try:
        load_optimizer_state(make_optimizer(config, run.model), checkpoint)
    except BitsmithError:
        return "optimizer refused"
    return "loaded"


def _retie_run_json(folder) -> None:
    """Record the mutated checkpoint's sha256 in run.json: a consistent-but-wrong folder, so the
    mutation meets the checkpoint's own checks, not the run.json/checkpoint tie (tested in test_runs)."""
    view = json.loads((folder / RUN_FILE).read_text())
    view["checkpoint_sha256"] = hashlib.sha256((folder / CHECKPOINT_FILE).read_bytes()).hexdigest()
    (folder / RUN_FILE).write_text(json.dumps(view))


def fuzz_runs(tiny_run, examples: int, work) -> dict:
    src, tensors, meta = tiny_run
    data = (src / CHECKPOINT_FILE).read_bytes()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    stats = {"base": "run", "mutations": 0, "refused": 0, "loaded": 0, "optimizer refused": 0}

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(run_mutations(tensors, meta, data))
    def run(mutation):
        stats["mutations"] += 1
        folder = work / "run"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(src, folder)
        kind, a, b = mutation
        if kind == "raw":
            (folder / CHECKPOINT_FILE).write_bytes(a)
        elif kind == "copies":
            (folder / RUN_FILE).write_text(a)
            (folder / METRICS_FILE).write_text(b)
        else:
            from safetensors.torch import save
            (folder / CHECKPOINT_FILE).write_bytes(save({k: v.contiguous() for k, v in a.items()},
                                                        metadata={"bitsmith": json.dumps(b)}))
        if kind != "copies":
            _retie_run_json(folder)
        stats[check_run(folder, x)] += 1

    start = time.perf_counter()
    run()
    stats["seconds"] = round(time.perf_counter() - start, 2)
    if STATS_FILE:
        with open(STATS_FILE, "a") as f:
            f.write(json.dumps(stats) + "\n")
    assert stats["mutations"] >= examples and stats["loaded"] > 0 and stats["refused"] > 0
    return stats


def test_fuzz_run_folder(tiny_run, tmp_path, one_thread):
    fuzz_runs(tiny_run, DEFAULT_EXAMPLES, tmp_path)


@pytest.mark.slow
def test_fuzz_run_folder_long(tiny_run, tmp_path, one_thread):
    fuzz_runs(tiny_run, SLOW_EXAMPLES, tmp_path)
