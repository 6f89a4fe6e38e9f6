"""Every back end computes the engine's codes, element by element, on random graphs (ONNX Runtime, the
HLS files, the accelerator's cycle model).

`tests.random_graphs.random_graph(seed)` draws a valid IntegerGraph mixing dense, grouped and
depthwise Conv2d (symmetric and four-sided padding), residual Add, Concat, MaxPool, AvgPool, Reorg,
ReLU / ReLU6 clamps and a Linear head, with random zero points, widths of 4 to 8 bits and scales.
Each back end in `BACKENDS` runs it on a few images (ordinary ones, one far beyond the input range so
that every quantizer saturates, and exact rounding ties of the input quantizer), and every tensor it
exposes must equal the reference interpreter's (`engine.run(graph, x, return_all=True)`, which the
fast path and the int64 oracle equal: tests/integer/test_add_and_pads.py).

A back end is one entry: `BACKENDS[name] = fn`, `fn(graph, images)` returning the graph output's
codes (an array [N, …]) or a dict of graph tensor name → codes for every tensor it exposes (which
must include the output). Tests are parametrized over (back end, seed), so one more entry — the
accelerator's cycle model, say — runs on every seed and in the hypothesis search with no other change.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitsmith.accel import AccelConfig
from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.simulate import simulate
from bitsmith.integer import IntegerGraph, engine
from bitsmith.onnx import export_onnx, run_onnx
from bitsmith.targets.hls import export_hls, read_hls, run_hls_layers
from tests.random_graphs import random_graph

Codes = np.ndarray | dict[str, np.ndarray]
Backend = Callable[[IntegerGraph, torch.Tensor], Codes]


def onnx_integer(graph: IntegerGraph, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The integer ONNX export in onnxruntime, every graph tensor exposed (as `bitsmith verify` runs it)."""
    with tempfile.TemporaryDirectory(prefix="bitsmith_agree_") as work:
        path = export_onnx(graph, Path(work) / "model.onnx", intermediates=True)
        return run_onnx(path, images, all_outputs=True)


def hls_files(graph: IntegerGraph, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The HLS export's three files, read back and computed by their numpy model (the g++ reference
    costs a compile per graph: tests/targets/test_hls_graphs.py runs it on its own seeds)."""
    codes = engine.run(graph, images, return_all=True)[graph.nodes[0].output].numpy()  # the host's part
    with tempfile.TemporaryDirectory(prefix="bitsmith_agree_") as work:
        export_hls(graph, work)
        layers = read_hls(work)
    outputs = run_hls_layers(layers, codes)
    return {layer.name: y.reshape((len(images), *graph.tensors[layer.name].shape))
            for layer, y in zip(layers, outputs)}


def accel_cycle_model(graph: IntegerGraph, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The compiled accelerator program on its cycle-level model (executing the memory words); every
    layer's output. `max_kernel` covers random_graph's global average pools (up to 12x12)."""
    program = compile_graph(graph, AccelConfig(pe=3, simd=4, max_kernel=16))
    codes = engine.run(graph, images, return_all=True)[program.input_name]  # the host's part
    return simulate(program, codes).outputs


BACKENDS: dict[str, Backend] = {
    "onnx": onnx_integer,
    "hls": hls_files,
    "accel": accel_cycle_model,
}

#: Seeds of the fixed sweep (each a test of its own, so a failure names its seed).
SEEDS = range(30)


def images_for(graph: IntegerGraph, seed: int) -> torch.Tensor:
    """Three ordinary images, one 20x beyond the calibrated range, one of exact input-rounding ties."""
    gen = torch.Generator().manual_seed(seed)
    shape = graph.input_spec.shape
    scale = float(graph.tensors[graph.nodes[0].output].scale)  # QuantizeInput's output grid
    ties = (torch.randint(-40, 40, (1, *shape), generator=gen) + 0.5) * scale
    return torch.cat([torch.randn(3, *shape, generator=gen), torch.randn(1, *shape, generator=gen) * 20,
                      ties.to(torch.float32)])


def assert_agrees(backend: str, graph: IntegerGraph, images: torch.Tensor) -> int:
    """Every tensor `backend` exposes equals the reference's, in execution order (the first mismatch
    is the layer at fault); returns how many tensors were compared."""
    want = engine.run(graph, images, return_all=True)
    assert torch.equal(engine.run(graph, images), want[graph.outputs[0]])  # fast path == reference
    got = BACKENDS[backend](graph, images)
    if not isinstance(got, dict):
        got = {graph.outputs[0]: got}
    assert graph.outputs[0] in got, f"{backend} returned no codes for the graph output {graph.outputs[0]!r}"
    compared = 0
    for node in graph.nodes:
        if node.output not in got:
            continue
        value = np.asarray(got[node.output])
        expected = want[node.output].numpy()
        assert value.shape == expected.shape, f"{backend}: tensor {node.output!r} ({node.op}) has shape {value.shape}"
        mismatch = np.argwhere(value.astype(np.int64) != expected)
        assert not len(mismatch), (f"{backend}: tensor {node.output!r} ({node.op}) differs at {len(mismatch)} "
                                   f"elements, first {tuple(mismatch[0])}: got {value[tuple(mismatch[0])]}, "
                                   f"want {expected[tuple(mismatch[0])]}")
        compared += 1
    return compared


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_equals_the_engine_on_random_graphs(backend, seed):
    g = random_graph(seed)
    compared = assert_agrees(backend, g, images_for(g, seed))
    assert compared >= 1


def test_the_fixed_seeds_cover_every_block_and_padding():
    """The sweep above is only as good as what it draws: every block of random_graph, a depthwise and
    a grouped conv, four-sided padding, Add inputs with non-zero zero points and a Linear head."""
    ops, features = set(), set()
    for seed in SEEDS:
        g = random_graph(seed)
        for node in g.nodes:
            ops.add(node.op)
            if node.op == "Conv2d":
                groups, channels = node.attrs["groups"], g.tensors[node.inputs[0]].shape[0]
                features.add("depthwise" if groups == channels > 1 else "grouped" if groups > 1 else "dense")
                if len(node.attrs["padding"]) == 4:
                    features.add("four-sided padding")
            if node.op == "Add" and all(g.tensors[i].zero_point != 0 for i in node.inputs):
                features.add("Add with zero points")
    assert ops == {"QuantizeInput", "Conv2d", "Requant", "Add", "Concat", "MaxPool2d", "AvgPool2d", "Reorg",
                   "Flatten", "Linear"}
    assert features >= {"dense", "grouped", "depthwise", "four-sided padding", "Add with zero points"}


def test_a_wrong_back_end_is_caught(monkeypatch):
    """The comparison can fail: a back end that is off by one in one element of one layer is named."""
    seed = next(s for s in SEEDS if any(n.op == "Add" for n in random_graph(s).nodes))
    g = random_graph(seed)
    x = images_for(g, seed)
    add = next(n for n in g.nodes if n.op == "Add")

    def off_by_one(graph, images):
        values = dict(onnx_integer(graph, images))
        values[add.output] = values[add.output].copy()
        values[add.output].flat[7] += 1
        return values

    monkeypatch.setitem(BACKENDS, "broken", off_by_one)
    with pytest.raises(AssertionError, match=rf"broken: tensor '{add.output}' \(Add\) differs at 1 elements"):
        assert_agrees("broken", g, x)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(1000, 2**32 - 1), blocks=st.integers(1, 6))
def test_backends_equal_the_engine_on_drawn_graphs(seed, blocks):
    """Beyond the fixed seeds: hypothesis (derandomized, so every run draws the same graphs) picks
    seeds and depths; the failing seed and depth is printed."""
    g = random_graph(seed, blocks)
    for backend in BACKENDS:
        assert_agrees(backend, g, images_for(g, seed))

