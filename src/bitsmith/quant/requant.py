"""The integers of every requantization point, computed once for the fake-quant model and the lowering.

A fake-quant module that evaluates exactly as the integer graph (a residual `QuantAdd`, a QAT layer in
exact-eval mode) and `bitsmith.lower`, which writes the graph, both take their multipliers, shifts,
clamp bounds and bias codes from here, so the two cannot drift:

* `requant_parameters`: a Requant's (m, s) per channel and its clamp, from M = S_in / S_out;
* `add_parameters`: the two input multipliers of an Add and the shift of the Requant after it;
* `Clamp`: a clamping activation (ReLU, ReLU6, Hardtanh) fused into a Requant, and its code bounds;
* `bias_codes`: a float bias on the accumulator grid S_w·S_in;
* `layer_bias_codes`: a layer's int bias — its own, minus the offset its output quantizer subtracts
  before rounding (QIL's pruning edge; `activation_offset`), both on that grid.

docs/arithmetic.md states the arithmetic these integers feed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bitsmith.errors import ConfigError
from bitsmith.integer.arithmetic import MAX_SHIFT, int_range, quantize_multiplier
from bitsmith.quant.config import QuantConfig
from bitsmith.quant.fake_quant import is_power_of_two, round_half_up

#: An Add's input multipliers are 16-bit signed values (a hardware-friendly multiplier width).
ADD_MULTIPLIER_LIMIT = (1 << 15) - 1


@dataclass(frozen=True)
class Clamp:
    """A clamping activation fused into the Requant that produces its input's codes.

    `lo` / `hi` are the real bounds: ReLU is (0, inf) (the one unbounded clamp), ReLU6 (0, 6),
    Hardtanh(a, b) is (a, b). `name` says which module it came from, for messages.
    """

    name: str
    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and self.lo < self.hi) or (math.isinf(self.hi) and self.lo != 0):
            raise ConfigError(f"{self.name}: a fused clamp is [0, inf) (ReLU) or a finite [lo, hi] with lo < hi, "
                              f"got [{self.lo}, {self.hi}]")

    @classmethod
    def relu(cls) -> Clamp:
        return cls("ReLU", 0.0, math.inf)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """The float activation, with the float module's own gradient (calibration sees the clamped
        range; QAT trains through it)."""
        return F.relu(y) if math.isinf(self.hi) else F.hardtanh(y, self.lo, self.hi)

    def code_bounds(self, scale: float, zero_point: int, qmin: int, qmax: int, where: str = "") -> tuple[int, int]:
        """[max(qmin, z + round_half_up(lo / S)), min(qmax, z + round_half_up(hi / S))].

        lo / S is divided in float32 and rounded half up, as the fake-quant model rounds the clamped
        value lo: quantization is monotone, so clamping the real value and clamping the code agree.
        """
        lo = max(qmin, zero_point + _code(self.lo, scale))
        hi = qmax if math.isinf(self.hi) else min(qmax, zero_point + _code(self.hi, scale))
        if lo > hi:
            raise ConfigError(f"{where or self.name}: its {self.name} range [{self.lo:g}, {self.hi:g}] lies outside "
                              f"the output grid (codes {qmin} to {qmax} at scale {scale:g}, zero point {zero_point})")
        return lo, hi

    def __str__(self) -> str:
        return self.name


def _code(value: float, scale: float) -> int:
    ratio = torch.tensor(value, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    return int(round_half_up(ratio))


def multiplier(real: float, config: QuantConfig) -> tuple[int, int]:
    """(m, s) with M ≈ m·2^-s; an exact 2^-k under power-of-two scales becomes (1, k)."""
    if config.scale_mode != "float" and is_power_of_two(real):
        k = math.frexp(real)[1] - 1  # real = 2^k
        if -MAX_SHIFT <= k <= 0:
            return 1, -k
    return quantize_multiplier(real, config.multiplier_bits)


def requant_parameters(in_scales: list[float], out_scale: float, out_bits: int, out_signed: bool,
                       out_zero_point: int, clamp: Clamp | None, config: QuantConfig, where: str = ""
                       ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(m, s, clamp_min, clamp_max) of the Requant from accumulator scales `in_scales` (one, or one per
    channel) to a `out_bits` grid: M = S_in / S_out as m·2^-s, and the clamp (the whole code range, or
    narrowed by a fused `clamp`). Lowering and the exact fake-quant paths both call this."""
    pairs = [multiplier(s / out_scale, config) for s in in_scales]
    m = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    s = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    qmin, qmax = int_range(out_bits, out_signed)
    lo, hi = (qmin, qmax) if clamp is None else clamp.code_bounds(out_scale, out_zero_point, qmin, qmax, where)
    return m, s, lo, hi


def add_parameters(in_scales: tuple[float, float], in_ranges: tuple[int, int], out_scale: float, acc_bits: int,
                   where: str = "add") -> tuple[int, int, int]:
    """(m_a, m_b, k) of a residual Add: acc = (a − z_a)·m_a + (b − z_b)·m_b at scale S_acc = S_out·2^-k.

    m_i = round_half_even(S_i·2^k / S_out) with the largest k in [0, 62] such that both multipliers fit
    ADD_MULTIPLIER_LIMIT (16-bit signed) and max|a − z_a|·m_a + max|b − z_b|·m_b fits a signed
    `acc_bits` accumulator. The Requant after the Add is then the exact power of two 2^-k: a rounding
    shift. The larger k, the closer m_a/m_b is to S_a/S_b; k is searched from the top (at most 63
    tries of integer arithmetic). `in_ranges` are max|q − z| of each input's code range.
    """
    acc_max = (1 << (acc_bits - 1)) - 1
    for k in range(MAX_SHIFT, -1, -1):
        # ldexp scales by 2^k exactly; the one division rounds once; round() is half to even.
        m_a, m_b = (round(math.ldexp(s, k) / out_scale) for s in in_scales)
        if max(m_a, m_b) <= ADD_MULTIPLIER_LIMIT and in_ranges[0] * m_a + in_ranges[1] * m_b <= acc_max:
            return m_a, m_b, k
    m_a, m_b = (round(s / out_scale) for s in in_scales)
    raise ConfigError(
        f"{where}: the input scales {in_scales[0]:g} and {in_scales[1]:g} are too coarse for its output scale "
        f"{out_scale:g}: even without a shift the input multipliers are {m_a} and {m_b} (at most "
        f"{ADD_MULTIPLIER_LIMIT}, and max|a − z_a|·m_a + max|b − z_b|·m_b must fit {acc_bits} bits); give the add a "
        "wider output range (another observer) or its inputs finer grids")


def bias_codes(bias: torch.Tensor, acc_scale: list[float]) -> torch.Tensor:
    """The float bias on the accumulator grid S_w·S_in, rounded half to even (float64)."""
    return torch.round(bias.detach().to(torch.float64) / torch.tensor(acc_scale, dtype=torch.float64))


def activation_offset(fq) -> float:
    """The real value an activation quantizer subtracts from its input before rounding (QIL's pruning
    edge p; 0 for every other quantizer): codes = clamp(round((x − p)/S)), value = codes·S."""
    return float(getattr(fq, "offset", 0.0)) if fq is not None else 0.0


def layer_bias_codes(bias: torch.Tensor | None, offset: float, acc_scale: list[float], channels: int
                     ) -> torch.Tensor | None:
    """A Conv2d / Linear's integer bias (float64 codes, one per output channel; None when there is
    neither bias nor offset): `bias_codes(bias)` − round_half_even(offset / S_acc).

    The offset is snapped to the accumulator grid on its own, so the Requant that follows sees
    acc − P exactly, with P the same integer in the exact fake-quant path and in the graph."""
    codes = bias_codes(bias, acc_scale) if bias is not None else None
    if offset == 0.0:
        return codes
    scale = torch.tensor(acc_scale, dtype=torch.float64)
    offset_codes = torch.round(torch.tensor(offset, dtype=torch.float64) / scale).expand(channels)
    return -offset_codes.clone() if codes is None else codes.expand(channels) - offset_codes
