"""The engine's fast path (the default) against its literal path (return_all=True).

The literal path is checked element by element against an independent int64 reference
(tests/oracle.py, in test_integer_reference.py); here the fast path must give the very same output
codes, and its exact helpers (float64 requantization, strided max-pooling) are checked against
plain integer arithmetic.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from bitsmith.errors import AccumulatorOverflowError
from bitsmith.integer import engine, exactness
from bitsmith.quant import lower
from bitsmith.integer.arithmetic import requantize
from bitsmith.integer.engine import float_requant, max_pool_strided
from bitsmith.models import MODEL_NAMES, build_model
from bitsmith.quant import QuantConfig, quantize

W8A8 = QuantConfig()
W4A4_PC = QuantConfig(weight_bits=4, act_bits=4, per_channel=True)
WIDE = QuantConfig(weight_bits=12, act_bits=10, multiplier_bits=16, requantize_output=True)


def graph(name="lenet5", config=W8A8, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = build_model(name, **kwargs).eval()
    calib = [torch.randn(8, *model.input_shape) for _ in range(2)]
    return lower(quantize(model, calib, config)), model.input_shape


def assert_fast_equals_literal(g, x):
    literal = engine.run(g, x, return_all=True)[g.outputs[0]]
    fast = engine.run(g, x)
    assert fast.dtype == torch.int64 and literal.dtype == torch.int64
    torch.testing.assert_close(fast, literal, rtol=0, atol=0)
    return fast


def steps(g):
    return engine._plan(g).program.steps


# -- whole graphs -----------------------------------------------------------------------------

@pytest.mark.parametrize("config", [W8A8, W4A4_PC, WIDE], ids=["w8a8", "w4a4-per-channel", "w12a10-float64"])
def test_lenet_fast_equals_literal(config):
    g, shape = graph("lenet5", config, bias=True)
    out = assert_fast_equals_literal(g, torch.randn(40, *shape))
    assert len(torch.unique(out)) > 10  # a constant output would make the comparison vacuous


def test_saturating_inputs():
    g, shape = graph("lenet5", W8A8)
    x = torch.randn(32, *shape) * 6  # far beyond the calibrated range
    literal = engine.run(g, x, return_all=True)
    q_in = literal[g.nodes[0].output]
    spec = g.tensors[g.nodes[0].output]
    assert (q_in == spec.qmin).any() and (q_in == spec.qmax).any()  # the input saturates both ways
    first_act = next(n for n in g.nodes if n.op == "Requant")
    assert (literal[first_act.output] == first_act.attrs["clamp_max"]).any()  # so does an activation
    assert_fast_equals_literal(g, x)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_model(name):
    g, shape = graph(name, W8A8)
    assert_fast_equals_literal(g, torch.randn(3, *shape) * 1.5)


def test_fast_path_takes_its_shortcuts_on_lenet():
    g, shape = graph("lenet5", W8A8)
    plan = steps(g)
    by_output = {s.output: s for s in plan}
    # Both Requant → MaxPool pairs become one step: the pool reads the accumulator and the
    # requantization to 8-bit codes follows in the same pass.
    for pool in ("pool1", "pool2"):
        assert by_output[pool].inputs[0].endswith("_acc") and by_output[pool].dtype == torch.uint8
    # Accumulators stay in float32 and 8-bit codes in uint8 (no int64 fallback), and no overflow
    # check is needed: int8 × int8 LeNet sums cannot leave 32 bits.
    assert {s.dtype for s in plan} == {torch.float32, torch.uint8}
    assert all(s.check is None for s in plan)
    assert by_output[g.outputs[0]].dtype == torch.float32 and engine.run(g, torch.randn(2, *shape)).dtype == torch.int64


def test_chunked_batches_and_single_image(monkeypatch):
    g, shape = graph("lenet5", W4A4_PC)
    x = torch.randn(11, *shape)
    monkeypatch.setattr(engine, "FAST_CHUNK", 4)  # 4 + 4 + 3
    chunked = assert_fast_equals_literal(g, x)
    monkeypatch.setattr(engine, "FAST_CHUNK", 512)
    assert torch.equal(chunked, engine.run(g, x))
    assert torch.equal(engine.run(g, x[0]), chunked[:1])  # an unbatched image


def test_chunks_are_sized_by_their_widest_intermediate_and_run_side_by_side(monkeypatch):
    g, shape = graph("vgg_tiny", W8A8)
    monkeypatch.setattr(engine, "FAST_CHUNK_BYTES", 1)          # every chunk is "too wide": the floor
    monkeypatch.setattr(engine, "FAST_MIN_CHUNK", 4)
    engine._PLANS.pop(g, None)
    assert engine._plan(g).program.chunk == 4
    x = torch.randn(11, *shape) * 2                              # 4 + 4 + 3 images
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)                                 # chunks on the single-threaded workers
        assert_fast_equals_literal(g, x)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(engine, "FAST_CHUNK_BYTES", 1 << 40)
    engine._PLANS.pop(g, None)
    assert engine._plan(g).program.chunk == engine.FAST_CHUNK


def test_int64_fallbacks_match_the_literal_path():
    g, shape = graph("lenet5", WIDE, bias=True)
    plan = {s.output: s for s in steps(g)}
    # conv2 sums 150 products of 12 × 10 bits: beyond 2^24, so float64.
    assert plan["q_conv2_acc"].dtype == torch.float64
    # A multiplier the float64 path cannot prove exact there: m·2^-62 with m ≈ 2^31.
    req = next(n for n in g.nodes if n.op == "Requant" and n.inputs == ["q_conv2_acc"])
    g.params[req.params["multiplier"]].fill_((1 << 31) - 1)
    g.params[req.params["shift"]].fill_(62)
    requant = next(s for s in steps(g) if s.output == req.output or s.inputs[0].endswith(f"/before_{req.name}"))
    assert requant.dtype == torch.int64
    out = assert_fast_equals_literal(g, torch.randn(16, *shape))
    assert len(torch.unique(out)) > 1


def test_overflow_is_still_detected():
    g, shape = graph("lenet5", W8A8, bias=True)
    acc = next(n for n in g.nodes if n.name.startswith("q_conv3"))
    g.tensors[acc.output].bits = 12  # 400 int8 × uint8 terms do not fit 12 bits
    assert steps(g)[[s.output for s in steps(g)].index(acc.output)].check is not None
    x = torch.randn(16, *shape) * 3
    with pytest.raises(AccumulatorOverflowError, match="q_conv3"):
        engine.run(g, x)
    with pytest.raises(AccumulatorOverflowError, match="q_conv3"):
        engine.run(g, x, return_all=True)


@pytest.mark.parametrize("batch", [8, 1], ids=["batch", "single-image program"])
def test_plan_is_rebuilt_when_the_graph_changes(batch):
    g, shape = graph("lenet5", W8A8)
    x = torch.randn(batch, *shape)
    before = engine.run(g, x)
    w = g.params[next(n for n in g.nodes if n.op == "Conv2d").params["weight"]]
    w.copy_(torch.roll(w, 1, dims=0))  # in place: same tensor object, new values
    after = assert_fast_equals_literal(g, x)
    assert not torch.equal(before, after)
    relu = next(n for n in g.nodes if n.op == "Requant")
    relu.attrs["clamp_max"] = 7  # an attribute edit
    assert int(engine.run(g, x, return_all=True)[relu.output].max()) == 7
    assert_fast_equals_literal(g, x)


# -- exact float64 requantization -------------------------------------------------------------

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def python_requant(v: int, m: int, s: int, z: int, lo: int, hi: int) -> int:
    """docs/arithmetic.md §4 with Python's unbounded integers."""
    rounding = 1 << (s - 1) if s else 0
    return min(max(z + ((v * m + rounding) >> s), lo), hi)


def edge_values(m, s, z, lo, hi, v_range):
    """Range ends, int32 extremes, the saturation thresholds and the ties next to zero, each ±1."""
    vlo, vhi = v_range
    rounding = 1 << (s - 1) if s else 0
    core = {vlo, vhi, INT32_MIN, INT32_MAX, 0, 1, -1, 2, -2, 3, -3}
    if m:
        core |= {(((lo - z + 1) << s) - rounding - 1) // m, -((rounding - ((hi - z) << s)) // m)}
        for k in range(-3, 4):  # v·m + R = k·2^s: exact halves before the shift
            core.add(((k << s) - rounding) // m)
    vals = {v + d for v in core for d in (-1, 0, 1)}
    return sorted(v for v in vals if vlo <= v <= vhi)


def check_float_requant(m, s, z, lo, hi, v_range, rank=2, dense=None):
    """float_requant must be exact where it accepts; returns whether it accepted."""
    fr = float_requant([m], [s], z, lo, hi, v_range, rank)
    if fr is None:
        return False
    values = edge_values(m, s, z, lo, hi, v_range)
    if dense is not None:
        values += list(range(max(dense[0], v_range[0]), min(dense[1], v_range[1]) + 1))
    v = torch.tensor(values, dtype=torch.int64)
    want = torch.tensor([python_requant(int(a), m, s, z, lo, hi) for a in v], dtype=torch.int64)
    got = fr(v.to(torch.float64).reshape(1, -1))
    assert got.dtype == torch.float64
    assert torch.equal(got.reshape(-1).to(torch.int64), want), (m, s, z, lo, hi, v_range)
    if max(abs(v_range[0]), abs(v_range[1])) <= INT32_MAX:  # the engine's int64 formula agrees
        assert torch.equal(requantize(v, torch.tensor([m]), torch.tensor([s]), z, lo, hi), want)
    return True


def test_negative_ties_round_toward_plus_infinity():
    m, s = 3 << 29, 31  # M = 0.75: v = ±2 lands on ±1.5 exactly
    fr = float_requant([m], [s], 0, -128, 127, (-1000, 1000))
    v = torch.tensor([[-6.0, -2.0, -1.0, 1.0, 2.0, 6.0]], dtype=torch.float64)
    assert fr(v).tolist() == [[-4.0, -1.0, -1.0, 1.0, 2.0, 5.0]]  # -4.5 → -4, -1.5 → -1, -0.75 → -1, 1.5 → 2


MULTIPLIERS = [0, 1, 3 << 29, 1 << 30, 1202961458, (1 << 31) - 1]
SHIFTS = [0, 1, 31, 38, 45, 62]
OUTPUTS = [(0, -128, 127), (0, 0, 255), (-3, -8, 7), (100, 0, 255), (0, 0, 0)]


@pytest.mark.parametrize("m", MULTIPLIERS)
def test_float_requant_edges(m):
    accepted = 0
    for s, (z, lo, hi) in itertools.product(SHIFTS, OUTPUTS):
        for v_range in [(INT32_MIN, INT32_MAX), (-(1 << 24), 1 << 24), (0, 4095), (-300, 300)]:
            accepted += check_float_requant(m, s, z, lo, hi, v_range, dense=(-300, 300))
    assert accepted > len(SHIFTS) * len(OUTPUTS)  # the float path is taken in most of these cases


def test_float_requant_refuses_what_it_cannot_prove():
    # m·2^-62 with m ≈ 2^31 on int32 accumulators: v·m reaches 2^62 inside the unsaturated range.
    assert float_requant([(1 << 31) - 1], [62], 0, -128, 127, (INT32_MIN, INT32_MAX)) is None
    # Any shift above 53 is refused: the rounding term 2^(s-1) alone is beyond 2^53 (the engine
    # then uses int64; see test_int64_fallbacks_match_the_literal_path).
    assert float_requant([1 << 30], [62], 0, -128, 127, (-10, 10)) is None
    assert float_requant([1 << 30], [54], 0, -128, 127, (-10, 10)) is None
    assert float_requant([1 << 30], [53], 0, -128, 127, (-10, 10)) is not None
    # Without saturation help, |v|·m above 2^53 is refused too...
    assert float_requant([(1 << 31) - 1], [31], 0, INT32_MIN, INT32_MAX, (-(1 << 23), 1 << 23)) is None
    # ...but saturation makes the same multiplier provable on an 8-bit output, with a clamp of the input
    assert check_float_requant((1 << 31) - 1, 31, 0, -128, 127, (INT32_MIN, INT32_MAX))
    assert float_requant([(1 << 31) - 1], [31], 0, -128, 127, (INT32_MIN, INT32_MAX)).v_min is not None
    assert float_requant([(1 << 31) - 1], [31], 0, -128, 127, (-(1 << 21), 1 << 21)).v_min is None  # not needed
    assert float_requant([-1], [3], 0, 0, 255, (0, 10)) is None  # a negative multiplier is not monotone


def test_float_requant_per_channel_and_random():
    gen = torch.Generator().manual_seed(0)
    m = torch.randint(1 << 30, 1 << 31, (5,), generator=gen).tolist() + [0]
    s = [0, 20, 38, 40, 45, 39]
    v_range = (-(1 << 20), 1 << 20)
    fr = float_requant(m, s, 5, 0, 255, v_range, rank=4)
    assert fr is not None and fr.scale.shape == (1, 6, 1, 1)
    v = torch.randint(v_range[0], v_range[1] + 1, (7, 6, 3, 3), generator=gen)
    want = requantize(v, torch.tensor(m), torch.tensor(s), 5, 0, 255)
    assert torch.equal(fr(v.to(torch.float64)).to(torch.int64), want)
    assert len(torch.unique(want)) > 2


# -- strided max-pooling ----------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (2, 1), (1, 1), ((3, 2), (1, 2)), (3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_max_pool_strided_equals_max_pool2d(kernel, stride, dtype):
    x = torch.randint(-1000, 1000, (2, 3, 11, 10)).to(dtype)
    want = F.max_pool2d(x.double(), kernel, stride).to(dtype)
    got = max_pool_strided(x, kernel, stride)
    assert got.dtype == dtype and torch.equal(got, want)


def test_reduced_precision_float32_settings_switch_to_float64():
    g, shape = graph("lenet5", W8A8)
    x = torch.randn(6, *shape)
    want = engine.run(g, x)
    conv = torch.backends.mkldnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "bf16"  # a user setting that would allow bf16 products in float32 convolutions
    try:
        assert not exactness.float32_gemm_is_ieee()
        conv_steps = [s for s in steps(g) if s.output.endswith("_acc")]
        assert conv_steps and all(s.dtype == torch.float64 for s in conv_steps)
        assert torch.equal(assert_fast_equals_literal(g, x), want)
    finally:
        conv.fp32_precision = saved
    assert exactness.float32_gemm_is_ieee()
