"""The engine's single-image program (`bitsmith.integer.single_image`) against the literal path,
element by element, and its fallbacks: input checks, overflow checks, a busy program, graph edits."""

import threading

import numpy as np
import pytest
import torch

from bitsmith.errors import AccumulatorOverflowError, GraphError
from bitsmith.integer import engine, int8_gemm, single_image
from bitsmith.integer.arithmetic import quantize_multiplier
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.models import MODEL_NAMES
from tests.integer.test_engine_fast_paths import W4A4_PC, W8A8, WIDE, graph
from tests.random_graphs import random_graph


@pytest.fixture(autouse=True)
def without_int8_kernels(monkeypatch):
    """These tests exercise the single-image program, which the int8 program replaces for large
    graphs on the AVX2 kernel (engine.AVX2_SMALL_BATCH_MACS): switched off here."""
    monkeypatch.setenv(int8_gemm.ENV_SWITCH, "0")


def single(g):
    return engine._plan(g).single_image


def literal(g, x):
    return engine.run(g, x, return_all=True)[g.outputs[0]]


def assert_single_equals_literal(g, images):
    for x in images:
        got = engine.run(g, x)
        assert got.dtype == torch.int64 and got.shape == (1, *g.output_spec.shape)
        assert torch.equal(got, literal(g, x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_model_runs_single_images_exactly(name):
    g, shape = graph(name, W8A8)
    assert single(g) is not None
    assert_single_equals_literal(g, [torch.randn(1, *shape) * 1.5 for _ in range(3)])


@pytest.mark.parametrize("config", [W8A8, W4A4_PC], ids=["w8a8", "w4a4-per-channel"])
def test_lenet_single_images_with_biases_and_saturation(config):
    g, shape = graph("lenet5", config, bias=True)
    images = [torch.randn(1, *shape) * scale for scale in (0.1, 1, 3, 30)]  # 30: every input saturates
    assert_single_equals_literal(g, images)
    assert len(torch.unique(torch.cat([engine.run(g, x) for x in images]))) > 5


@pytest.mark.parametrize("seed", range(16))
def test_random_graphs_run_single_images_exactly(seed):
    g = random_graph(seed)  # signed codes, zero points, asymmetric pads, groups, Add, Concat, AvgPool, Reorg
    assert single(g) is not None
    assert_single_equals_literal(g, [torch.randn(1, *g.input_spec.shape) * 2 for _ in range(2)])


@pytest.mark.parametrize("case", [f"random{seed}" for seed in range(8)] + ["lenet5_wide"])
def test_convolutions_as_one_conv2d_call_are_exact(case, monkeypatch):
    """Every convolution with symmetric padding through `direct_conv` (F.conv2d of the centred codes;
    by default only those of DIRECT_CONV_MACS and more): zero points, groups, strides, float64 sums."""
    monkeypatch.setattr(single_image, "DIRECT_CONV_MACS", 0)
    if case == "lenet5_wide":
        g, shape = graph("lenet5", WIDE, bias=True)   # conv2's sums exceed 2^24: float64
    else:
        g = random_graph(int(case.removeprefix("random")))
        shape = g.input_spec.shape
    assert single(g) is not None
    assert_single_equals_literal(g, [torch.randn(1, *shape) * 2 for _ in range(2)])


def test_direct_convolutions_pass_channels_last_buffers_through_the_requants(monkeypatch):
    monkeypatch.setattr(single_image, "DIRECT_CONV_MACS", 0)
    g, shape = graph("vgg_tiny", W8A8)
    program = single(g)
    hwc = {name for name, b in program.buffers.items() if not b.flags.c_contiguous}
    # conv1's input has one channel (kept as is); the maps between convolutions and the
    # accumulators whose Requant writes one of them are channels-last; the last pool feeds the
    # Flatten (C order), so it and conv6's accumulator are not
    assert {"q_conv1_acc", "q_conv1", "q_conv2_acc", "pool1", "q_conv5", "q_conv5_acc"} <= hwc
    assert not hwc & {"input_quant", "q_conv6_acc", "pool3", "flatten"}
    for name in hwc:
        assert program.buffers[name].transpose(1, 2, 0).flags.c_contiguous
    assert_single_equals_literal(g, [torch.randn(1, *shape) * 2 for _ in range(3)])


def test_small_gemms_run_on_one_mkl_thread_and_the_setting_is_restored(monkeypatch):
    local = single_image._mkl_local_threads()
    if local is None:
        pytest.skip("this PyTorch build has no mkl_set_num_threads_local")
    monkeypatch.setattr(single_image, "DIRECT_CONV_MACS", 100_000)   # conv2 direct, the rest small
    g, shape = graph("vgg_tiny", W8A8)
    program = single(g)
    assert 0 < len(program.parallel) < len(program.steps)
    seen = []

    def observed(step):
        def run():
            setting = local(0)     # reads this thread's MKL setting (and sets it to 0) ...
            local(setting)         # ... then puts it back
            seen.append(setting)
            step()
        return run
    program.schedule = [(observed(step), parallel) for step, parallel in program.schedule]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        before = local(3)
        assert_single_equals_literal(g, [torch.randn(1, *shape) * 2 for _ in range(2)])
        assert local(before) == 3 and torch.get_num_threads() == 2      # both restored
    finally:
        torch.set_num_threads(threads)
    per_step = [parallel for _, parallel in program.schedule] * 2
    assert seen == [3 if parallel else 1 for parallel in per_step]


def test_wide_accumulators_take_float64_buffers():
    g, shape = graph("lenet5", WIDE, bias=True)  # conv2's sums exceed 2^24: float64, as the torch program
    assert single(g).buffers["q_conv2_acc"].dtype == np.float64
    assert single(g).buffers["q_conv1_acc"].dtype == np.float32
    assert_single_equals_literal(g, [torch.randn(1, *shape) for _ in range(3)])


def test_a_requant_float64_cannot_prove_keeps_the_torch_program():
    g, shape = graph("lenet5", WIDE, bias=True)
    req = next(n for n in g.nodes if n.op == "Requant" and n.inputs == ["q_conv2_acc"])
    g.params[req.params["multiplier"]].fill_((1 << 31) - 1)
    g.params[req.params["shift"]].fill_(62)
    assert single(g) is None
    assert_single_equals_literal(g, [torch.randn(1, *shape)])


def test_non_finite_single_images_are_refused():
    g, shape = graph("lenet5", W8A8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(1, *shape)
        x[0, 0, 3, 4] = bad
        with pytest.raises(GraphError, match="NaN or infinity"):
            engine.run(g, x)


def test_other_input_dtypes_are_read_as_quantize_input_reads_them():
    g, shape = graph("lenet5", W8A8)
    x = torch.randn(1, *shape, dtype=torch.float64) * 2
    assert_single_equals_literal(g, [x, x.to(torch.float16), x.to(torch.bfloat16), x.numpy()])
    assert_single_equals_literal(g, [x[0].to(torch.float32)])  # an unbatched image


def test_results_are_fresh_tensors():
    g, shape = graph("lenet5", W8A8)
    a, b = torch.randn(1, *shape), torch.randn(1, *shape) * 3
    first = engine.run(g, a)
    kept = first.clone()
    engine.run(g, b)
    assert torch.equal(first, kept)


def test_a_busy_program_hands_the_call_to_the_torch_program():
    g, shape = graph("lenet5", W8A8)
    x = torch.randn(1, *shape)
    want = engine.run(g, x)
    program = single(g)
    assert program.lock.acquire()  # another thread is in the middle of a call
    try:
        assert program.run(x) is None
        assert torch.equal(engine.run(g, x), want)
    finally:
        program.lock.release()


def test_threads_calling_at_once_get_their_own_answers():
    g, shape = graph("lenet5", W8A8)
    images = [torch.randn(1, *shape) * (1 + i % 3) for i in range(40)]
    want = [literal(g, x) for x in images]
    got = [None] * len(images)

    def work(k):
        for i in range(k, len(images), 4):
            got[i] = engine.run(g, images[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_overflow_checks_keep_the_torch_program():
    g, shape = graph("lenet5", W8A8, bias=True)
    acc = next(n for n in g.nodes if n.name.startswith("q_conv3"))
    g.tensors[acc.output].bits = 12  # 400 int8 × uint8 terms do not fit 12 bits
    x = torch.randn(1, *shape) * 3
    assert single(g).needs_check
    with pytest.raises(AccumulatorOverflowError, match="q_conv3"):
        engine.run(g, x)
    assert torch.equal(engine.run(g, x, check_overflow=False), literal_unchecked(g, x))


def literal_unchecked(g, x):
    return engine.run(g, x, return_all=True, check_overflow=False)[g.outputs[0]]


def test_a_finite_float64_beyond_float32_saturates_as_in_the_reference():
    g, shape = graph("lenet5", W8A8)
    x = torch.randn(1, *shape, dtype=torch.float64)
    x[0, 0, 3, 4] = 1e39  # finite, but ±inf once cast to float32, where the reference clamps it
    assert_single_equals_literal(g, [x, -x])


def zero_point_graph(zero_point: int, lo: int, hi: int) -> IntegerGraph:
    """QuantizeInput → Conv → Requant to codes with `zero_point` (clamped to [lo, hi]) → Conv."""
    t = {"input": TensorSpec("input", (1, 4, 4), "float32"),
         "q": TensorSpec("q", (1, 4, 4), "int", 8, False, 6 / 255, 128),
         "acc1": TensorSpec("acc1", (2, 4, 4), "int", 32, True, 1e-3, 0),
         "c1": TensorSpec("c1", (2, 4, 4), "int", 26, True, 0.01, zero_point),
         "acc2": TensorSpec("acc2", (3, 2, 2), "int", 32, True, 1e-3, 0)}
    m, s = quantize_multiplier(0.05, 8)
    p = {"w1": torch.tensor([[[[1, 2, -1], [0, 3, 1], [1, -2, 1]]], [[[2, 1, 0], [-1, 1, 1], [0, 1, 2]]]], dtype=torch.int8),
         "m1": torch.tensor([m]), "s1": torch.tensor([s]),
         "w2": torch.randint(-3, 4, (3, 2, 3, 3), dtype=torch.int8, generator=torch.Generator().manual_seed(1))}
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "weight_bits": 8}
    nodes = [Node("QuantizeInput", "qi", ["input"], "q", {}, {}),
             Node("Conv2d", "conv1", ["q"], "acc1", conv, {"weight": "w1"}),
             Node("Requant", "rq1", ["acc1"], "c1", {"clamp_min": lo, "clamp_max": hi, "multiplier_bits": 8},
                  {"multiplier": "m1", "shift": "s1"}),
             Node("Conv2d", "conv2", ["c1"], "acc2", {**conv, "stride": [2, 2]}, {"weight": "w2"})]
    g = IntegerGraph(t, nodes, p, ["input"], ["acc2"])
    g.validate()
    return g


@pytest.mark.parametrize("zero_point, lo, hi", [((1 << 24) + 1, 0, 255), ((1 << 24) + 3, -100, 100)])
def test_a_zero_point_beyond_float32_is_centred_in_float64(zero_point, lo, hi):
    """Codes in a small range on a grid whose zero point needs float64: centring them in float32
    would shift every term by a code (the second Conv then sums in float64)."""
    g = zero_point_graph(zero_point, lo, hi)
    assert single(g).buffers["acc2"].dtype == np.float64
    assert_single_equals_literal(g, [torch.randn(1, 1, 4, 4) * 2 for _ in range(3)])


def test_an_overflow_before_a_nan_reports_the_nan():
    g, shape = graph("lenet5", W8A8, bias=True)
    acc = next(n for n in g.nodes if n.name.startswith("q_conv3"))
    g.tensors[acc.output].bits = 12
    x = torch.randn(600, *shape) * 3
    x[-1, 0, 0, 0] = float("nan")
    with pytest.raises(GraphError, match="NaN or infinity"):
        engine.run(g, x)
