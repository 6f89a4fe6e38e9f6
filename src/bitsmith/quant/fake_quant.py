"""Fake quantization: float tensors rounded onto an integer grid and mapped back.

Rounding uses straight-through gradients so the same modules serve quantization-aware
training. The arithmetic (division by the scale in float32, round half to even, clamp) is the
same as the integer graph's QuantizeInput, so a quantized input is bit-exact between the two.
"""

from __future__ import annotations

import torch
from torch import nn

from bitsmith.integer.arithmetic import int_range
from bitsmith.quant.observers import make_observer


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward; identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Symmetric scale max|W| / (2^(b-1) − 1), per tensor or per output channel (dim 0).

    An all-zero tensor or channel gets scale 1: any scale represents it exactly.
    """
    qmax = (1 << (bits - 1)) - 1
    amax = w.detach().abs().flatten(1).amax(dim=1) if per_channel else w.detach().abs().max()
    scale = amax.to(torch.float32) / qmax
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_weight(w: torch.Tensor, bits: int, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer weight codes in [−(2^(b-1)−1), 2^(b-1)−1] and their scale (a tensor of 1 or O values)."""
    scale = weight_scale(w, bits, per_channel)
    s = scale.reshape((-1,) + (1,) * (w.dim() - 1)) if per_channel else scale
    qmax = (1 << (bits - 1)) - 1
    codes = torch.clamp(torch.round(w.detach() / s), -qmax, qmax).to(torch.int64)
    return codes, scale


def fake_quantize_weight(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    scale = weight_scale(w, bits, per_channel)
    s = scale.reshape((-1,) + (1,) * (w.dim() - 1)) if per_channel else scale
    qmax = (1 << (bits - 1)) - 1
    return fake_quantize(w, s, 0, -qmax, qmax)


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int, bool]:
    """(scale, zero_point, signed) for an observed range: unsigned [0, 2^b−1] when nothing below 0
    was seen (e.g. after a ReLU), otherwise symmetric signed with zero point 0."""
    signed = lo < 0
    qmax = int_range(bits, signed)[1]
    amax = max(abs(lo), abs(hi))
    scale = amax / qmax if amax > 0 else 1.0
    # Stored as float32, the precision every back end sees.
    return float(torch.tensor(scale, dtype=torch.float32)), 0, signed


class FakeQuantize(nn.Module):
    """An activation quantization point: observes during calibration, quantizes afterwards."""

    def __init__(self, bits: int, observer: str = "minmax") -> None:
        super().__init__()
        self.bits = bits
        self.observer = make_observer(observer)
        self.observing = True
        self.signed = True
        self.zero_point = 0
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    def freeze(self, name: str = "") -> None:
        """Fix scale and zero point from what the observer saw."""
        from bitsmith.errors import ConfigError

        if not self.observer.seen:
            raise ConfigError(f"quantization point {name!r} saw no calibration data; pass at least one batch")
        scale, self.zero_point, self.signed = activation_qparams(*self.observer.range(), self.bits)
        self.scale = torch.tensor(scale, dtype=torch.float32)
        self.observing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer(x)
            return x
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        state = "observing" if self.observing else f"scale={float(self.scale):.6g}, zp={self.zero_point}, signed={self.signed}"
        return f"bits={self.bits}, {state}"
