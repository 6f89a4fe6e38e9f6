"""The integer arithmetic of docs/arithmetic.md, written once and used by every back end.

Every function here works on int64 torch tensors (or Python ints) and is exact; the only float
operation is `quantize_input`, whose float32 division and round-half-to-even are part of the spec
(they match ONNX QuantizeLinear).
"""

from __future__ import annotations

import math

import torch

from bitsmith.errors import ConfigError

#: Largest right shift a requantizer may use. |acc| < 2^31 and |m| < 2^31 keep acc·m below 2^62,
#: so acc·m plus the rounding term 2^(s-1) ≤ 2^61 never leaves int64.
MAX_SHIFT = 62
#: Widths (inclusive) a requantization multiplier may be declared with: m is unsigned in bits − 1 bits.
MULTIPLIER_BITS = (2, 32)
#: Widths (inclusive) of integer weight codes (signed, so at least 2 bits: docs/arithmetic.md §3)
#: and of integer tensors.
WEIGHT_BITS = (2, 16)
TENSOR_BITS = (1, 32)
#: Integers of magnitude below this are float32 values (clamp bounds of QuantizeInput; see exactness.py).
FLOAT32_CLAMP_EXACT = 1 << 24


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """The inclusive code range of a `bits`-wide integer: [-2^(b-1), 2^(b-1)-1] or [0, 2^b-1]."""
    if not TENSOR_BITS[0] <= bits <= TENSOR_BITS[1]:
        raise ConfigError(f"integer width {bits} is not supported; allowed: {TENSOR_BITS[0]} to {TENSOR_BITS[1]} bits")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def quantize_multiplier(real: float, bits: int = 32) -> tuple[int, int]:
    """Write a real multiplier M ≥ 0 as m · 2^-s with an unsigned `bits-1`-bit integer m.

    m is normalised to [2^(bits-2), 2^(bits-1)) so it keeps bits-1 significant bits; s is in
    [0, MAX_SHIFT]. A multiplier so small that s would exceed MAX_SHIFT is represented with
    s = MAX_SHIFT and a smaller (possibly zero) m. M ≥ 2^(bits-1) cannot be represented.
    """
    if not MULTIPLIER_BITS[0] <= bits <= MULTIPLIER_BITS[1]:
        raise ConfigError(f"multiplier width {bits} is not supported; allowed: {MULTIPLIER_BITS[0]} to "
                          f"{MULTIPLIER_BITS[1]} bits")
    if not math.isfinite(real) or real < 0:
        raise ConfigError(f"requantization multiplier must be finite and >= 0, got {real}")
    if real == 0.0:
        return 0, 0
    frac, exp = math.frexp(real)  # real = frac · 2^exp, frac in [0.5, 1)
    m = round(frac * (1 << (bits - 1)))  # exact scaling by a power of two, then round half to even
    s = bits - 1 - exp
    if m == 1 << (bits - 1):  # rounding carried into a new bit
        m >>= 1
        s -= 1
    if s < 0:
        raise ConfigError(
            f"requantization multiplier {real:g} is too large for a {bits}-bit multiplier "
            f"(must be below 2^{bits - 1}); the output scale is too small for its input scale"
        )
    if s > MAX_SHIFT:
        m = round(real * 2.0**MAX_SHIFT)
        s = MAX_SHIFT
    return int(m), int(s)


def rounding_right_shift(value: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """floor((value + 2^(shift-1)) / 2^shift): round half toward +inf; shift 0 returns value."""
    rounding = torch.bitwise_left_shift(torch.ones_like(shift), shift) >> 1  # 2^(s-1), or 0 when s = 0
    return torch.bitwise_right_shift(value + rounding, shift)


def requantize(
    acc: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    zero_point: int,
    clamp_min: int,
    clamp_max: int,
) -> torch.Tensor:
    """out = clamp(zero_point + ((acc·m + 2^(s-1)) >> s), clamp_min, clamp_max), in int64.

    `multiplier` and `shift` hold one value, or one per channel (dimension 1 of `acc`).
    """
    if multiplier.numel() > 1:
        view = (1, -1) + (1,) * (acc.dim() - 2)
        multiplier = multiplier.reshape(view)
        shift = shift.reshape(view)
    else:
        multiplier = multiplier.reshape(())
        shift = shift.reshape(())
    scaled = rounding_right_shift(acc * multiplier, shift)
    return (scaled + zero_point).clamp_(clamp_min, clamp_max)


def quantize_input(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax), the division in float32."""
    x = x.to(torch.float32)
    q = torch.round(x / torch.tensor(scale, dtype=torch.float32))
    if max(abs(qmin - zero_point), abs(qmax - zero_point)) >= FLOAT32_CLAMP_EXACT:
        # Bounds beyond 2^24 (codes of more than 24 bits) are not all float32 values (2^25 − 1 would
        # round to 2^25): clamp in float64, where they and every float32 integer are exact.
        q = q.to(torch.float64)
    # Clamping before the cast keeps huge inputs from overflowing int64; it equals clamping after
    # adding the (integer) zero point.
    q = q.clamp_(qmin - zero_point, qmax - zero_point)
    return q.to(torch.int64) + zero_point


def partial_sum_bound(weight: torch.Tensor, x_spec) -> int:
    """Largest |partial sum| a Conv/Linear output can reach: max over outputs of Σ|w|·max|x − zp|.

    The bias is added afterwards in int64, so it does not enter the bound.
    """
    x_max = max(x_spec.qmax - x_spec.zero_point, x_spec.zero_point - x_spec.qmin)
    per_output = weight.to(torch.int64).abs().reshape(weight.shape[0], -1).sum(dim=1)
    return int(per_output.max()) * x_max if per_output.numel() else 0
