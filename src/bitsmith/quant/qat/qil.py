"""QIL: quantization interval learning (Jung et al., CVPR 2019), with γ = 1.

Each quantizer learns a centre c and a distance d; the interval [p, u] = [max(c − |d|, 0), c + |d|]
is what it quantizes (for c ≥ |d|, QIL's [c − d, c + d]). Below p a value is pruned to 0, above u
it is clipped, and in between it is mapped linearly — γ = 1, QIL's transformer without its
learned exponent (γ ≠ 1 bends the grid and cannot be integer codes times one scale) — onto L
levels. QIL's transformer output lies in [0, 1] and its BatchNorm absorbs the scale; BN is folded
here, so the output is multiplied back by the interval's width u − p, which makes the step
s = (u − p)/L. p ≥ 0 keeps 0 a fixed point, which both the sign of a weight and a ReLU before an
activation need.

Weights (b bits, L = 2^(b−1) − 1, c and d per output channel or per tensor):

    code = sign(w) · clamp(round((|w| − p) / s), 0, L),   value = code · s

Activations (b bits, unsigned, L = 2^b − 1, one c and d):

    code = clamp(round((x − p) / s), 0, L),               value = code · s

The activation's offset p is not a code·scale: it is subtracted before rounding. In the integer
graph it is a constant on the producing layer's accumulator, folded into its bias as
round(p / S_acc) per channel (`bitsmith.quant.requant.layer_bias_codes`), which the integer-exact
evaluation (qat.exact) and lowering both use — so the fake-quant model in exact mode and the
engine compute the same codes. The float path (training) subtracts it at the same place: the
layer's bias less p snapped to the accumulator grid (`qat.exact.ExactEval.quantized_bias`, rounding
straight through), so `QILQuantize` itself only rounds onto [0, L]·s. It therefore sits only on the
output of a Conv2d/Linear whose fused clamp is none or a ReLU, which commutes with subtracting
p ≥ 0 first (qat.prepare gives every other activation point LSQ).

Gradients: rounding straight through; c and d receive the gradient of value = code·s through p
and s (the interval's edges and width; the max in p straight through), w or x the gradient 1
inside [p, u] and 0 outside — QIL's transformer is flat there.
"""

from __future__ import annotations

import torch
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.quant.fake_quant import FakeQuantize, round_ste
from bitsmith.quant.qat.activations import QATActivation, fake_quant_act
from bitsmith.quant.qat.weights import WeightQuantizer, _channel_view, _exact

MIN_WIDTH = 1e-8


def interval(centre: torch.Tensor, distance: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, s): the pruning edge max(c − |d|, 0) and the step (c + |d| − p)/L, differentiable.

    p's gradient passes the max straight through: with c < |d| the loss still tells c − |d|
    whether pruning would help, so the edge can come back above 0 (a plain max would leave c − |d|
    stuck below it, c and d then moving only together). The value is the max exactly
    (r + (0 − r) is 0 in floating point)."""
    d = distance.abs()
    raw = centre - d
    p = raw + (torch.clamp_min(raw, 0.0) - raw).detach()
    return p, torch.clamp_min((centre + d - p) / levels, MIN_WIDTH)


class QILWeight(WeightQuantizer):
    """QIL weights: learned centre and distance per output channel (or per tensor), b-bit codes in
    [−L, L]. Initialised at the PTQ clip u = scale·L with p = 0 (c = d = u/2): PTQ's own grid."""

    def __init__(self, bits: int, init_scale: torch.Tensor, per_channel: bool = True) -> None:
        super().__init__(bits, per_channel)
        self.code_bits = bits
        self.levels = (1 << (bits - 1)) - 1
        clip = init_scale.detach().to(torch.float32).reshape(-1) * self.levels
        if not per_channel:
            clip = clip.max()
        self.centre = nn.Parameter((clip / 2).clone())
        self.distance = nn.Parameter((clip / 2).clone())

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, s) as float32 constants: the pruning edge and the step."""
        with torch.no_grad():
            p, s = interval(self.centre, self.distance, self.levels)
        return p.to(torch.float32), s.to(torch.float32)

    def _codes_scale(self, w):
        w = w.detach()
        p, s = self.edges()
        ratio = (w.abs() - _channel_view(p, w)) / _channel_view(s, w)
        return torch.sign(w) * torch.clamp(torch.round(ratio), 0, self.levels), s

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, scale = self._codes_scale(w)
        p, s = interval(self.centre, self.distance, self.levels)
        p, s = _channel_view(p, w), _channel_view(s, w)
        surrogate = torch.sign(w.detach()) * round_ste(torch.clamp((w.abs() - p) / s, 0, self.levels)) * s
        return _exact(surrogate, codes, scale)


class QILQuantize(QATActivation):
    """QIL activations on an unsigned point: learned centre and distance, L = 2^b − 1 levels over
    [p, u]; `offset` is p, the real value subtracted before rounding — by the producing layer, in
    its bias (see the module docstring). Initialised at the calibrated clip α with p = 0: PACT's grid."""

    def __init__(self, ptq: FakeQuantize, bits: int) -> None:
        super().__init__(ptq, bits)
        if ptq.signed:
            raise ConfigError("QIL activations quantize unsigned points (after a ReLU); this point is signed")
        clip = float(ptq.scale) * ptq.qmax
        self.centre = nn.Parameter(torch.tensor(clip / 2, dtype=torch.float32))
        self.distance = nn.Parameter(torch.tensor(clip / 2, dtype=torch.float32))

    def _interval(self):
        return interval(self.centre, self.distance, self.qmax)

    @property
    def scale(self) -> torch.Tensor:
        with torch.no_grad():
            return self._interval()[1].to(torch.float32)

    @property
    def offset(self) -> float:
        """p: the real value subtracted from the input before it is rounded onto the grid."""
        with torch.no_grad():
            return float(self._interval()[0])

    def offset_tensor(self) -> torch.Tensor:
        """p, differentiable in c and d (the producing layer subtracts it from its bias)."""
        return self._interval()[0]

    def quantize(self, x: torch.Tensor, features: int | None = None) -> torch.Tensor:
        """x is already x − p (the layer subtracted p): value clamp(round(x/s), 0, L)·s."""
        s = self._interval()[1]
        # The fused LSQ-mode op; its step gradient (factor 1) is dValue/ds, which autograd carries on
        # to c and d through s.
        return fake_quant_act(x, s, s.detach(), 0, self.qmin, self.qmax, "lsq", 1.0)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, offset={self.offset:.6g}, scale={float(self.scale):.6g}"
