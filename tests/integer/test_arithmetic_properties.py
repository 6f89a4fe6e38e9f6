"""Property tests of the integer arithmetic (docs/arithmetic.md) against exact Python big integers.

Every function of `bitsmith.integer.arithmetic`, and the fast path's `float_requant` whenever it
returns a plan, is compared with the spec's formula computed on unbounded Python integers (and
`fractions.Fraction` for the two real-valued steps), over the whole declared ranges: multipliers
m in [0, 2^(mb−1) − 1] for every width mb in 2..32, shifts 0..MAX_SHIFT, 32-bit accumulators,
zero points and clamp bounds of every output width. Hypothesis runs derandomized (reproducible
in CI) with no deadline.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bitsmith.errors import ConfigError
from bitsmith.integer.arithmetic import (MAX_SHIFT, MULTIPLIER_BITS, TENSOR_BITS, int_range, quantize_input,
                                         quantize_multiplier, requantize, rounding_right_shift)
from bitsmith.integer.engine import float_requant

PROPERTIES = settings(max_examples=400, deadline=None, derandomize=True)
INT32 = (-(1 << 31), (1 << 31) - 1)


# -- the spec on Python integers ----------------------------------------------------------------

def spec_requant(v: int, m: int, s: int, z: int, lo: int, hi: int) -> int:
    """docs/arithmetic.md §4: clamp(z + ((v·m + R) >> s), lo, hi), R = 2^(s−1) (0 when s = 0); >> floors."""
    rounding = (1 << (s - 1)) if s > 0 else 0
    return min(max(z + ((v * m + rounding) >> s), lo), hi)


def spec_round_half_even(q: Fraction) -> int:
    return round(q)  # Python rounds a Fraction half to even, exactly


@st.composite
def requant_cases(draw, channels: int = 1):
    """(m list, s list, z, lo, hi) over the whole declared ranges: any multiplier width 2..32, any
    m of it, any shift, an output code range of any width with its zero point and clamp inside."""
    mbits = draw(st.integers(*MULTIPLIER_BITS))
    m = [draw(st.integers(0, (1 << (mbits - 1)) - 1)) for _ in range(channels)]
    s = [draw(st.integers(0, MAX_SHIFT)) for _ in range(channels)]
    bits, signed = draw(st.integers(*TENSOR_BITS)), draw(st.booleans())
    qmin, qmax = int_range(bits, signed)
    z = draw(st.integers(qmin, qmax))
    lo = draw(st.integers(qmin, qmax))
    hi = draw(st.integers(lo, qmax))
    return m, s, z, lo, hi


accumulators = st.lists(st.integers(*INT32), min_size=1, max_size=16)


# -- requantize -------------------------------------------------------------------------------------

@PROPERTIES
@given(requant_cases(), accumulators)
def test_requantize_equals_the_big_integer_formula(case, acc):
    (m,), (s,), z, lo, hi = case
    got = requantize(torch.tensor(acc, dtype=torch.int64), torch.tensor([m]), torch.tensor([s]), z, lo, hi)
    assert got.tolist() == [spec_requant(v, m, s, z, lo, hi) for v in acc]


@PROPERTIES
@given(requant_cases(channels=3), st.lists(st.tuples(*[st.integers(*INT32)] * 3), min_size=1, max_size=8))
def test_requantize_per_channel_equals_the_big_integer_formula(case, rows):
    m, s, z, lo, hi = case
    got = requantize(torch.tensor(rows, dtype=torch.int64), torch.tensor(m), torch.tensor(s), z, lo, hi)
    assert got.tolist() == [[spec_requant(v, m[c], s[c], z, lo, hi) for c, v in enumerate(row)] for row in rows]


@PROPERTIES
@given(requant_cases(), st.integers(*INT32), st.integers(*INT32), st.data())
def test_float_requant_when_it_returns_a_plan_equals_the_big_integer_formula(case, a, b, data):
    (m,), (s,), z, lo, hi = case
    v_range = (min(a, b), max(a, b))
    plan = float_requant([m], [s], z, lo, hi, v_range)
    assume(plan is not None)
    span = st.integers(*v_range)
    vs = data.draw(st.lists(span, min_size=1, max_size=16)) + list(v_range)
    got = plan(torch.tensor(vs, dtype=torch.float64))
    assert got.dtype == torch.float64
    assert [int(g) for g in got.tolist()] == [spec_requant(v, m, s, z, lo, hi) for v in vs]


@PROPERTIES
@given(requant_cases(channels=3), st.integers(-(1 << 24), 0), st.integers(0, 1 << 24), st.data())
def test_float_requant_per_channel_plans_are_exact(case, a, b, data):
    m, s, z, lo, hi = case
    plan = float_requant(m, s, z, lo, hi, (a, b), rank=2)
    assume(plan is not None)
    rows = data.draw(st.lists(st.tuples(*[st.integers(a, b)] * 3), min_size=1, max_size=8))
    got = plan(torch.tensor(rows, dtype=torch.float64))
    assert [[int(v) for v in row] for row in got.tolist()] == [
        [spec_requant(v, m[c], s[c], z, lo, hi) for c, v in enumerate(row)] for row in rows]


def test_float_requant_returns_plans_often_enough_to_be_tested():
    # The properties above skip the cases float_requant refuses; most small ones it must accept.
    accepted = sum(float_requant([m], [s], 0, -128, 127, (-(1 << 20), 1 << 20)) is not None
                   for m in (0, 1, 3, 1 << 15, (1 << 31) - 1) for s in range(0, 54, 3))
    assert accepted > 60


# -- quantize_multiplier -------------------------------------------------------------------------------

def spec_multiplier(real: float, bits: int) -> tuple[int, int] | None:
    """docs/arithmetic.md §4's construction in exact rationals; None where the multiplier is rejected."""
    if real == 0:
        return 0, 0
    frac, exp = math.frexp(real)
    m = spec_round_half_even(Fraction(frac) * (1 << (bits - 1)))
    s = bits - 1 - exp
    if m == 1 << (bits - 1):
        m, s = m >> 1, s - 1
    if s < 0:
        return None
    if s > MAX_SHIFT:
        return spec_round_half_even(Fraction(real) * (1 << MAX_SHIFT)), MAX_SHIFT
    return m, s


reals = st.floats(min_value=0, max_value=2.0 ** 40, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@PROPERTIES
@given(reals, st.integers(*MULTIPLIER_BITS))
def test_quantize_multiplier_equals_the_exact_construction(real, bits):
    want = spec_multiplier(real, bits)
    if want is None:
        with pytest.raises(ConfigError, match="too large"):
            quantize_multiplier(real, bits)
        return
    m, s = quantize_multiplier(real, bits)
    assert (m, s) == want
    assert 0 <= m < 1 << (bits - 1) and 0 <= s <= MAX_SHIFT
    if real and s < MAX_SHIFT:
        assert 1 << (bits - 2) <= m  # normalised: bits − 1 significant bits
        assert abs(Fraction(m, 1 << s) - Fraction(real)) <= Fraction(1, 1 << (s + 1))  # within half an LSB


@PROPERTIES
@given(st.one_of(st.floats(max_value=-1e-300), st.just(math.nan), st.just(math.inf)), st.integers(*MULTIPLIER_BITS))
def test_quantize_multiplier_rejects_negative_and_non_finite(real, bits):
    with pytest.raises(ConfigError):
        quantize_multiplier(real, bits)


@pytest.mark.parametrize("bits", [MULTIPLIER_BITS[0] - 1, MULTIPLIER_BITS[1] + 1, 64])
def test_quantize_multiplier_rejects_widths_outside_the_spec(bits):
    with pytest.raises(ConfigError, match="not supported"):
        quantize_multiplier(0.5, bits)


# -- int_range, rounding_right_shift ----------------------------------------------------------------

@PROPERTIES
@given(st.integers(-4, 70), st.booleans())
def test_int_range(bits, signed):
    if not TENSOR_BITS[0] <= bits <= TENSOR_BITS[1]:
        with pytest.raises(ConfigError, match="not supported"):
            int_range(bits, signed)
        return
    lo, hi = int_range(bits, signed)
    assert hi - lo + 1 == 1 << bits  # 2^bits codes
    assert (lo, hi) == ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1))


@st.composite
def shifts_and_values(draw):
    s = draw(st.integers(0, MAX_SHIFT))
    # Ties (v = k·2^s − 2^(s−1)), negative ones included, and arbitrary values that keep v + R in int64.
    k = draw(st.integers(-(1 << 20), 1 << 20))
    tie = k * (1 << s) - ((1 << (s - 1)) if s else 0)
    bound = (1 << 62) - 1
    v = draw(st.one_of(st.integers(-bound, bound), st.just(max(min(tie, bound), -bound))))
    return v, s


@PROPERTIES
@given(st.lists(shifts_and_values(), min_size=1, max_size=16))
def test_rounding_right_shift_rounds_half_toward_plus_infinity(cases):
    values = torch.tensor([v for v, _ in cases], dtype=torch.int64)
    shifts = torch.tensor([s for _, s in cases], dtype=torch.int64)
    got = rounding_right_shift(values, shifts).tolist()
    for (v, s), g in zip(cases, got):
        want = math.floor(Fraction(v, 1 << s) + Fraction(1, 2)) if s else v
        assert g == want, (v, s)


def test_rounding_right_shift_negative_ties_go_up():
    v = torch.tensor([-3, -1, 1, 3, -5, -6, -2], dtype=torch.int64)
    assert rounding_right_shift(v, torch.tensor(1)).tolist() == [-1, 0, 1, 2, -2, -3, -1]


# -- quantize_input -------------------------------------------------------------------------------

def spec_quantize_input(x: float, scale: float, z: int, qmin: int, qmax: int) -> int:
    """§2: one correctly rounded float32 division (a float64 quotient rounded to float32 is the
    correctly rounded float32 quotient: 53 ≥ 2·24 + 2), round half to even, add z, clamp."""
    with np.errstate(over="ignore"):
        q32 = np.float32(float(Fraction(x) / Fraction(scale)))
    if math.isinf(q32):
        return qmax if q32 > 0 else qmin
    return min(max(spec_round_half_even(Fraction(float(q32))) + z, qmin), qmax)


floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
scales32 = st.floats(width=32, min_value=float(np.nextafter(np.float32(0), np.float32(1))), allow_infinity=False)


@st.composite
def code_ranges(draw):
    bits, signed = draw(st.integers(*TENSOR_BITS)), draw(st.booleans())
    qmin, qmax = int_range(bits, signed)
    return draw(st.integers(qmin, qmax)), qmin, qmax


@PROPERTIES
@given(st.lists(floats32, min_size=1, max_size=16), scales32, code_ranges())
def test_quantize_input_equals_the_exact_formula(xs, scale, codes):
    z, qmin, qmax = codes
    got = quantize_input(torch.tensor(xs, dtype=torch.float32), scale, z, qmin, qmax)
    assert got.dtype == torch.int64
    assert got.tolist() == [spec_quantize_input(x, scale, z, qmin, qmax) for x in xs]


@PROPERTIES
@given(st.integers(-1000, 1000), st.sampled_from([1.0, 0.5, 0.25, 2.0]))
def test_quantize_input_rounds_exact_halves_to_even(k, scale):
    x = (k + 0.5) * scale  # exactly representable: a tie after the division
    got = quantize_input(torch.tensor([x]), scale, 0, -(1 << 15), (1 << 15) - 1).item()
    assert got == round(Fraction(k) + Fraction(1, 2)) and got % 2 == 0
