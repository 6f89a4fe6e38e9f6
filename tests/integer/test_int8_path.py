"""The engine's int8 path (oneDNN's int8 kernels, uint8 codes between layers, numba requantization)
against its literal path, element by element, and its building blocks against plain integers."""

import numpy as np
import pytest
import torch

from bitsmith.errors import AccumulatorOverflowError
from bitsmith.integer import engine, int8_gemm, u8s8
from bitsmith.integer.engine import float_requant, max_pool_strided
from bitsmith.integer.requant_kernels import CodeRequant
from bitsmith.models import MODEL_NAMES
from bitsmith.quant import QuantConfig
from tests.integer.test_engine_fast_paths import W4A4_PC, W8A8, assert_fast_equals_literal, graph
from tests.random_graphs import random_graph

needs_int8 = pytest.mark.skipif(not int8_gemm.available(),
                                reason="no exact int8 kernels on this CPU (needs VNNI/AMX, or AVX2 and a C compiler at install)")
BATCH = engine.INT8_MIN_BATCH + 3  # large enough for the int8 path


def int8_steps(g):
    return engine._plan(g).int8_program.steps


@needs_int8
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_model_on_the_int8_path(name):
    g, shape = graph(name, W8A8)
    assert_fast_equals_literal(g, torch.randn(BATCH, *shape) * 1.5)


@needs_int8
@pytest.mark.parametrize("config", [W8A8, W4A4_PC, QuantConfig(per_channel=True)],
                         ids=["w8a8", "w4a4-per-channel", "w8a8-per-channel"])
def test_lenet_int8_path_uses_int8_kernels_and_is_exact(config, monkeypatch):
    g, shape = graph("lenet5", config, bias=True)  # biases: added by the int8 kernels
    kernels = (int8_gemm.Int8Conv, int8_gemm.Int8Linear, u8s8.U8S8Conv, u8s8.U8S8Linear, u8s8.ConvRequant)
    on_kernels = [s for s in int8_steps(g) if isinstance(s.fn, kernels)]
    assert len(on_kernels) == sum(n.op in ("Conv2d", "Linear") for n in g.nodes)  # every layer
    x = torch.randn(3 * engine.INT8_CHUNK + 5, *shape) * 2  # chunks, a short last chunk, saturation
    out = assert_fast_equals_literal(g, x)
    assert len(torch.unique(out)) > 10
    monkeypatch.setenv(int8_gemm.ENV_SWITCH, "0")  # the float path gives the same codes
    assert not int8_gemm.available()
    assert torch.equal(engine.run(g, x), out)


@needs_int8
def test_chunks_run_side_by_side_on_two_threads():
    """Several chunks with two torch threads: the chunk workers (each single-threaded) give the
    literal path's codes, keep their order, and leave the caller's thread setting as it was."""
    g, shape = graph("lenet5", W4A4_PC, bias=True)
    x = torch.randn(5 * engine.INT8_CHUNK + 7, *shape) * 2
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = assert_fast_equals_literal(g, x)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[: engine.INT8_CHUNK], engine.run(g, x[: engine.INT8_CHUNK]))


@needs_int8
def test_a_forked_child_after_the_chunk_workers_started():
    """A child forked after the pool started (a DataLoader worker: one thread) gets the same codes
    and does not wait on the parent's worker threads, which it does not have."""
    import multiprocessing

    g, shape = graph("lenet5", W8A8)
    x = torch.randn(3 * engine.INT8_CHUNK, *shape)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = engine.run(g, x)  # starts the pool in this process
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_run_in_child, (g, x)).get(timeout=120)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want)


def _run_in_child(g, x):
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP is not fork-safe with more
    return engine.run(g, x)


@needs_int8
def test_overflow_is_detected_inside_a_chunk_worker():
    g, shape = graph("lenet5", W8A8, bias=True)
    acc = next(n for n in g.nodes if n.name.startswith("q_conv3"))
    g.tensors[acc.output].bits = 12  # 400 int8 × uint8 terms do not fit 12 bits
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(AccumulatorOverflowError, match="q_conv3"):
            engine.run(g, torch.randn(4 * engine.INT8_CHUNK, *shape) * 3)
    finally:
        torch.set_num_threads(before)


@needs_int8
@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_on_the_int8_path(seed):
    g = random_graph(seed)  # signed codes, zero points, asymmetric pads, groups, Add, Concat, AvgPool
    x = torch.randn(BATCH, *g.input_spec.shape) * 2
    assert torch.equal(engine.run(g, x), engine.run(g, x, return_all=True)[g.outputs[0]])


def test_the_backend_is_onednn_only_with_vnni_else_the_avx2_kernel(monkeypatch):
    vnni = int8_gemm._cpu_has_vnni() and int8_gemm._ops_present() and int8_gemm._probe()
    assert int8_gemm.backend() == ("onednn" if vnni else "avx2" if u8s8.available() else None)
    monkeypatch.setenv(int8_gemm.ENV_SWITCH, "off")
    assert not int8_gemm.available()
    assert engine._plan(graph("lenet5", W8A8)[0]).int8_program is None


@needs_int8
def test_int8_kernels_at_the_extremes():
    """255 × −128 over many channels, with a zero point, padding and a bias, against int64, on
    this machine's kernels (`int8_gemm.backend`)."""
    torch.manual_seed(0)
    w = torch.randint(-128, 128, (8, 64, 3, 3), dtype=torch.int8)
    w[0], w[1] = -128, 127
    bias = torch.randint(-1000, 1000, (8,))
    x = torch.randint(0, 256, (5, 64, 6, 6), dtype=torch.uint8)
    x[0], x[1] = 255, 0
    conv = int8_gemm.conv(w, 7, stride=[1, 1], pads=(1, 1, 1, 1), dilation=[1, 1], groups=1, bias=bias,
                          a_range=(0, 255))
    got = conv(x.contiguous(memory_format=torch.channels_last))
    want = torch.nn.functional.conv2d(x.double() - 7, w.double(), bias.double(), padding=1)
    assert torch.equal(got.double(), want)
    flat = x[:, :, :3, :3].reshape(5, -1)  # 576 = the weights' fan-in
    lin = int8_gemm.linear(w.reshape(8, -1), 200, bias, a_range=(0, 255))
    assert torch.equal(lin(flat).double(), (flat.double() - 200) @ w.reshape(8, -1).double().t() + bias.double())


# -- the requantization kernel ---------------------------------------------------------------

def per_channel_requant(channels, seed, v_range, lo=0, hi=255, z=0, rank=4):
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(1 << 20, 1 << 31, (channels,), generator=g).tolist()
    s = torch.randint(30, 40, (channels,), generator=g).tolist()
    return float_requant(m, s, z, lo, hi, v_range, rank=rank)


@pytest.mark.parametrize("channels,size,kernel,stride", [(16, 8, (2, 2), (2, 2)), (6, 7, (3, 3), (2, 2)),
                                                         (5, 6, (3, 2), (1, 2)), (3, 4, (1, 1), (1, 1))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_code_requant_equals_float_requant(channels, size, kernel, stride, dtype):
    v_range = (-(1 << 22), 1 << 22)
    fr = per_channel_requant(channels, size, v_range, lo=-20, hi=200, z=3)
    acc = torch.randint(v_range[0], v_range[1], (9, channels, size, size + 1)).to(dtype)
    acc[0, :, 0, 0] = v_range[0]
    acc[1, :, 0, 0] = v_range[1]
    for layout in (torch.contiguous_format, torch.channels_last):
        a = acc.contiguous(memory_format=layout)
        plain = CodeRequant(fr, (channels, size, size + 1), 5, 20)
        assert torch.equal(plain(a).to(torch.int64) - 20, fr(acc.double() - 5).to(torch.int64))
        pooled = CodeRequant(fr, (channels, size, size + 1), 5, 20, pool=(kernel, stride))
        want = fr(max_pool_strided(acc, kernel, stride).double() - 5).to(torch.int64)
        assert torch.equal(pooled(a).to(torch.int64) - 20, want)


def test_code_requant_needs_its_saturation_clamp():
    """A range so wide that float64 needs FloatRequant's clamp: the kernel applies it too."""
    fr = per_channel_requant(4, 1, (-(1 << 52), 1 << 52), rank=2)
    assert fr.v_min is not None
    acc = torch.tensor(np.array([-(1 << 52), -(1 << 40), -5, 0, 5, 1 << 30, 1 << 40, 1 << 52], dtype=np.float64))
    acc = acc.reshape(8, 1).expand(8, 4).contiguous()
    assert torch.equal(CodeRequant(fr, (4,), 0, 0)(acc).to(torch.int64), fr(acc).to(torch.int64))


def test_code_requant_refuses_codes_wider_than_a_byte():
    fr = float_requant([1 << 30], [30], 0, -200, 200, (-1000, 1000))
    with pytest.raises(ValueError, match="uint8"):
        CodeRequant(fr, (1,), 0, 200)


@pytest.mark.parametrize("batch", [3, BATCH, 3 * engine.INT8_CHUNK + 1])
def test_non_finite_images_are_refused_on_every_path(batch):
    """The finite check runs inside each chunk (on its worker): a NaN in the last chunk is found."""
    from bitsmith.errors import GraphError

    g, shape = graph("lenet5", W8A8)
    x = torch.randn(batch, *shape)
    x[-1, 0, 5, 5] = float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(GraphError, match="NaN or infinity"):
            engine.run(g, x)
    finally:
        torch.set_num_threads(before)


def test_int8_chunks_shrink_for_wide_intermediates():
    g, shape = graph("vgg_tiny", W8A8)  # full width: 64 channels at 32×32 in float32 is 256 KB an image
    chunk = engine._plan(g).int8_program.chunk if engine._plan(g).int8_program else None
    if chunk is None:
        pytest.skip("no int8 program here")
    assert engine.INT8_MIN_BATCH <= chunk < engine.INT8_CHUNK
    assert chunk * 64 * 32 * 32 * 4 <= engine.INT8_CHUNK_BYTES
