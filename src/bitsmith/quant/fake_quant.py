"""Fake quantization: float tensors rounded onto an integer grid and mapped back.

Rounding uses straight-through gradients so the same modules serve quantization-aware
training. Each point rounds as the integer graph op it becomes (docs/arithmetic.md): the input
quantizer as QuantizeInput (division by the scale in float32, round half to even, clamp), every
other activation point as a Requant (round half up), so where the two see the same real value —
always under power-of-two and Q-format scales, whose ties are common — they give the same code.
Weights and biases round half to even, in the fake-quant model and in the graph alike.

Scales come in three modes (QuantConfig.scale_mode): "float" (as observed), "pot" (rounded up
to a power of two, so the grid never clips more than the observer chose) and "qformat" (fixed
to 2^-n by a Q-format Qm.n; scales without a Q-format are pot).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.integer.arithmetic import int_range
from bitsmith.quant.config import QFormat
from bitsmith.quant.observers import make_observer, weight_clip


#: How a quantization point rounds: as QuantizeInput ("half_even") or as a Requant ("half_up").
ROUNDINGS = ("half_even", "half_up")


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2), exactly: x − floor(x) is exact in floating point, x + 0.5 is not always
    (0.49999997 + 0.5 rounds to 1.0 in float32)."""
    f = torch.floor(x)
    return f + (x - f >= 0.5).to(x.dtype)


def round_ste(x: torch.Tensor, rounding: str = "half_even") -> torch.Tensor:
    """Round (half to even, or half up) forward; identity gradient backward."""
    r = torch.round(x) if rounding == "half_even" else round_half_up(x)
    return x + (r - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: int, qmin: int, qmax: int,
                  rounding: str = "half_even") -> torch.Tensor:
    q = torch.clamp(round_ste(x / scale, rounding) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def pot_ceil(scale: float) -> float:
    """The smallest power of two ≥ scale (exact: frexp, no logarithm)."""
    frac, exp = math.frexp(scale)
    return math.ldexp(1.0, exp - 1) if frac == 0.5 else math.ldexp(1.0, exp)


def is_power_of_two(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5


# -- weights --------------------------------------------------------------------------------


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Symmetric scale max|W| / (2^(b-1) − 1), per tensor or per output channel (dim 0).

    Recomputed from the current weights (used while weights change, e.g. in QAT). An all-zero
    tensor or channel gets scale 1: any scale represents it exactly.
    """
    qmax = (1 << (bits - 1)) - 1
    amax = w.detach().abs().flatten(1).amax(dim=1) if per_channel else w.detach().abs().max()
    scale = amax.to(torch.float32) / qmax
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def weight_qparams(w: torch.Tensor, bits: int, per_channel: bool, observer: str = "minmax",
                   scale_mode: str = "float", qformat: QFormat | None = None) -> torch.Tensor:
    """The frozen weight scale (float32; one value, or one per output channel).

    float: clip / (2^(b-1) − 1) with the weight observer's clip; pot: that rounded up to a power
    of two; qformat: 2^-n of the Q-format, for every channel.
    """
    if qformat is not None:
        scale = torch.full((w.shape[0],) if per_channel else (), qformat.scale, dtype=torch.float32)
        return scale
    qmax = (1 << (bits - 1)) - 1
    scale = weight_clip(w, bits, observer, per_channel) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if scale_mode != "float":
        scale = torch.tensor([pot_ceil(float(s)) for s in scale.reshape(-1)], dtype=torch.float32).reshape(scale.shape)
    return scale


def weight_code_range(bits: int, full_range: bool = False) -> tuple[int, int]:
    """Weight codes: narrow symmetric [−(2^(b-1)−1), 2^(b-1)−1], or the full signed range for Q-formats."""
    qmax = (1 << (bits - 1)) - 1
    return (-qmax - 1 if full_range else -qmax), qmax


def _per_channel_view(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return scale.reshape((-1,) + (1,) * (w.dim() - 1)) if scale.dim() else scale


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool, scale: torch.Tensor | None = None,
                    full_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer weight codes and their scale (a tensor of 1 or O values).

    `scale` is the frozen scale (QuantLayer.weight_scale); None recomputes the min-max one.
    """
    scale = weight_scale(w, bits, per_channel) if scale is None else scale
    qmin, qmax = weight_code_range(bits, full_range)
    codes = torch.clamp(torch.round(w.detach() / _per_channel_view(scale, w)), qmin, qmax).to(torch.int64)
    return codes, scale


def fake_quantize_weight(w: torch.Tensor, bits: int, per_channel: bool, scale: torch.Tensor | None = None,
                         full_range: bool = False) -> torch.Tensor:
    """The float weights the integer codes of `quantize_weight` stand for (straight-through)."""
    scale = weight_scale(w, bits, per_channel) if scale is None else scale
    qmin, qmax = weight_code_range(bits, full_range)
    return fake_quantize(w, _per_channel_view(scale, w), 0, qmin, qmax)


# -- activations ----------------------------------------------------------------------------


def activation_qparams(lo: float, hi: float, bits: int, symmetric: bool = True,
                       pot: bool = False) -> tuple[float, int, bool]:
    """(scale, zero_point, signed) for a clipping range.

    symmetric: unsigned [0, 2^b−1] when nothing below 0 is in the range (e.g. after a ReLU),
    otherwise signed with zero point 0 and scale max(|lo|, |hi|) / (2^(b-1) − 1).
    asymmetric: unsigned codes over [min(lo, 0), max(hi, 0)], scale (hi − lo) / (2^b − 1),
    zero point round(−lo / scale) clamped to the code range.
    pot rounds the scale up to a power of two (the zero point follows from the rounded scale).
    """
    if symmetric:
        signed = lo < 0
        qmax = int_range(bits, signed)[1]
        amax = max(abs(lo), abs(hi))
        scale = amax / qmax if amax > 0 else 1.0
    else:
        signed = False
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / ((1 << bits) - 1) if hi > lo else 1.0
    if pot:
        scale = pot_ceil(scale)
    # Stored as float32, the precision every back end sees.
    scale = float(torch.tensor(scale, dtype=torch.float32))
    zero_point = 0 if symmetric else min(max(round(-lo / scale), 0), (1 << bits) - 1)
    return scale, zero_point, signed


class FakeQuantize(nn.Module):
    """An activation quantization point: observes during calibration, quantizes afterwards.

    `qformat` fixes the grid (signed, zero point 0, scale 2^-n) instead of observing; `pot`
    rounds the observed scale up to a power of two. `enabled = False` makes the forward pass the
    identity (activations left in float, e.g. for a weight-only experiment); such a model
    cannot be lowered.
    """

    def __init__(self, bits: int, observer: str = "minmax", symmetric: bool = True, pot: bool = False,
                 qformat: QFormat | None = None, rounding: str = "half_up") -> None:
        super().__init__()
        if rounding not in ROUNDINGS:
            raise ConfigError(f"rounding {rounding!r}; allowed: {', '.join(ROUNDINGS)}")
        self.rounding = rounding  # half_up: lowers to a Requant; half_even: the graph input (QuantizeInput)
        self.bits = bits
        self.observer_name = observer
        self.observer = make_observer(observer)
        self.symmetric = symmetric
        self.pot = pot
        self.qformat = qformat
        self.observing = True
        self.enabled = True
        self.signed = True
        self.zero_point = 0
        self.clip_range: tuple[float, float] | None = None  # what the observer chose
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    def freeze(self, name: str = "") -> None:
        """Fix scale and zero point from what the observer saw (or from the Q-format)."""
        if self.qformat is not None:
            scale, self.zero_point, self.signed = self.qformat.scale, 0, True
        else:
            if not self.observer.seen:
                raise ConfigError(f"quantization point {name!r} saw no calibration data; pass at least one batch")
            self.clip_range = self.observer.range(self.bits, self.symmetric)
            scale, self.zero_point, self.signed = activation_qparams(*self.clip_range, self.bits, self.symmetric,
                                                                     self.pot)
        self.scale = torch.tensor(scale, dtype=torch.float32)
        self.observing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer(x)
            return x
        if not self.enabled:
            return x
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax, self.rounding)

    def extra_repr(self) -> str:
        how = str(self.qformat) if self.qformat is not None else self.observer_name
        if self.observing:
            return f"bits={self.bits}, {how}, observing"
        state = f"scale={float(self.scale):.6g}, zp={self.zero_point}, signed={self.signed}"
        return f"bits={self.bits}, {how}, {state}" + ("" if self.enabled else ", disabled")
