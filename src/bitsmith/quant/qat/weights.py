"""Weight quantizers for quantization-aware training (QuantLayer.weight_quantizer).

Every quantizer here has the same contract (see bitsmith.quant.modules):

* `forward(w)` returns the fake-quantized weights, whose *value* is exactly `codes · scale` in
  float32 (the codes and scale `integer_weights` returns), and whose *gradient* is the method's
  straight-through estimator;
* `integer_weights(w) -> (codes int64 shaped like w, scale float32 of 1 or O values)`;
* `code_bits`: the signed width of the codes (what lowering declares and stores).

The value/gradient split is always written `exact + (surrogate − surrogate.detach())`: adding an
exact zero, so the forward value is the exact product whatever the surrogate computes. For
speed, the built-in quantizers compute it in one autograd Function each (`_CodesTimesScaleFn`,
`_DoReFaWeightFn`, `_GaussianWeightFn`, `_LSQWeightFn`): the forward value is the same float32
codes · scale, the backward is the surrogate's gradient written out by hand (tests/quant/test_qat.py
compares every one with the autograd formulation).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: DeepBurning-MixQ Gaussian weight steps: step = g[b] · std(W) (docs/qat.md).
GAUSS_STEP = {2: 0.996, 3: 0.586, 4: 0.336, 5: 0.190, 6: 0.106, 7: 0.059, 8: 0.032}


def _channel_view(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A scale of O values reshaped to broadcast over weights [O, ...]; a scalar stays a scalar."""
    return scale.reshape((-1,) + (1,) * (w.dim() - 1)) if scale.dim() else scale


def _abs_reduce(w: torch.Tensor, per_channel: bool, how: str) -> torch.Tensor:
    a = w.detach().abs()
    if per_channel:
        a = a.flatten(1)
        return a.amax(dim=1) if how == "max" else a.mean(dim=1)
    return a.max() if how == "max" else a.mean()


def _positive(scale: torch.Tensor) -> torch.Tensor:
    """An all-zero tensor or channel gets scale 1: any scale represents it exactly."""
    scale = scale.to(torch.float32)
    return torch.where(scale > 0, scale, 1.0)


def _exact(surrogate: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Forward value codes·scale (float32, exactly what lowering writes), gradient of `surrogate`.

    Written value + (s − s.detach()): adding an exact zero keeps the value bit-exact, which
    surrogate + (value − surrogate).detach() would not (two float roundings).
    """
    value = codes.to(torch.float32) * _channel_view(scale, codes)
    return value + (surrogate - surrogate.detach())


class _CodesTimesScaleFn(torch.autograd.Function):
    """Value codes·scale (as `_exact` computes it), gradient straight through to w (identity)."""

    @staticmethod
    def forward(ctx, w, codes, scale):
        return codes.to(torch.float32) * _channel_view(scale, codes)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class WeightQuantizer(nn.Module):
    """Shared part: subclasses implement `_codes_scale(w) -> (float codes, scale)` and `_surrogate`."""

    code_bits: int

    def __init__(self, bits: int, per_channel: bool) -> None:
        super().__init__()
        self.bits = bits
        self.per_channel = per_channel

    def _codes_scale(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _surrogate(self, w: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The differentiable stand-in whose gradient training follows (default: identity STE)."""
        return w

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, scale = self._codes_scale(w)
        if type(self)._surrogate is WeightQuantizer._surrogate:  # identity STE: one fused node
            return _CodesTimesScaleFn.apply(w, codes.detach(), scale.detach())
        return _exact(self._surrogate(w, codes, scale), codes.detach(), scale.detach())

    def integer_weights(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            codes, scale = self._codes_scale(w)
        return codes.to(torch.int64), scale.detach().to(torch.float32).clone()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, code_bits={self.code_bits}, per_channel={self.per_channel}"


class DoReFaWeight(WeightQuantizer):
    """DoReFa-Net k-bit weights: w_n = tanh(w)/(2·max|tanh w|) + ½, w_q = 2·round(w_n·n)/n − 1, n = 2^k − 1.

    The codes 2·round(w_n·n) − n are the odd integers in [−n, n], so they need k + 1 signed bits.
    DoReFa relies on a BatchNorm after each layer to absorb the weights' scale; here BN is already
    folded into the weights, so w_q is multiplied back by max|W| (per channel or tensor, treated as
    a constant): scale = max|W| / n. The gradient is DoReFa's (through tanh and the max, rounding
    straight through).
    """

    def __init__(self, bits: int, per_channel: bool = True) -> None:
        super().__init__(bits, per_channel)
        self.levels = (1 << bits) - 1
        self.code_bits = bits + 1

    def _codes_scale(self, w):
        return _dorefa_codes(w.detach(), self.levels, self.per_channel)[:2]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _DoReFaWeightFn.apply(w, self.levels, self.per_channel)


def _dorefa_codes(w: torch.Tensor, n: int, per_channel: bool):
    """DoReFa's codes 2·round(w_n·n) − n and scale max|W|/n, and for the backward pass:
    |tanh w|, its maximum T (per channel or tensor; 0 for all-zero weights), D = 2·T (2 where T = 0)
    and tanh(w)/D."""
    t = torch.tanh(w)
    a = t.abs()
    tmax = a.flatten(1).amax(dim=1) if per_channel else a.max()
    denom = 2 * _channel_view(torch.where(tmax > 0, tmax, 1.0), t)
    ratio = t / denom
    codes = (ratio + 0.5).mul_(n).round_().mul_(2).sub_(n)  # in place: the same roundings, fewer buffers
    return codes, _positive(_abs_reduce(w, per_channel, "max") / n), t, a, tmax, denom, ratio


class _DoReFaWeightFn(torch.autograd.Function):
    """Fused DoReFa weights: value codes·scale; gradient of DoReFa's w_q times the constant max|W|,

        surrogate = (2·round_ste(t/D + ½)·n/n − 1)·(scale·n),  t = tanh w,  D = 2·max|t|,

    by hand, in the order of autograd's own backward operations so the gradient is bit-identical
    to differentiating that expression: dt = G/D − [|t| = max|t|]·sign(t)·2·Σ(G·(t/D)/D)/#ties with
    G = g·(scale·n)/n·2·n (rounding straight through; the max's gradient is shared by tied maxima,
    as torch.amax does; a channel of zeros, whose max is replaced by 1, gets none), dw = dt·(1 − t²).
    """

    @staticmethod
    def forward(ctx, w, levels, per_channel):
        codes, scale, t, a, tmax, denom, ratio = _dorefa_codes(w, levels, per_channel)
        ctx.save_for_backward(t, a, tmax, denom, ratio, scale)
        ctx.levels, ctx.per_channel = levels, per_channel
        return codes.mul_(_channel_view(scale, codes))

    @staticmethod
    def backward(ctx, g):
        t, a, tmax, denom, ratio, scale = ctx.saved_tensors
        n = ctx.levels
        grad = (g * _channel_view(scale * n, t)).div_(n).mul_(2).mul_(n)
        grad_t = grad / denom
        # The max's gradient: −Σ G·(t/D)/D (autograd's division rule, negated after the sum: exact) · 2.
        if ctx.per_channel:
            grad_max = (grad.mul_(ratio / denom)).flatten(1).sum(1, keepdim=True).neg_().mul_(2)
            grad_max = torch.where(tmax.unsqueeze(1) > 0, grad_max, 0.0)
            at_max = torch.eq(a.flatten(1), tmax.unsqueeze(1), out=torch.empty_like(a).flatten(1))  # 0/1 floats
            grad_abs = (grad_max / at_max.sum(1, keepdim=True) * at_max).reshape(t.shape)
        else:
            grad_max = torch.where(tmax > 0, grad.mul_(ratio / denom).sum().neg_().mul_(2), 0.0)
            at_max = torch.eq(a, tmax, out=torch.empty_like(a))
            grad_abs = grad_max / at_max.sum() * at_max
        grad_t += grad_abs.mul_(torch.sign(t))
        return torch.ops.aten.tanh_backward(grad_t, t), None, None  # dt·(1 − t²)


class BinaryWeight(WeightQuantizer):
    """Binary weights sign(W)·mean|W| (XNOR-Net / BWN), per output channel or per tensor.

    Codes ±1 (sign 0 counts as +1), 2-bit signed. Straight-through gradient, cut for |w| > max|W|
    is not needed here (the codes never saturate), so it is the identity.
    """

    code_bits = 2

    def __init__(self, per_channel: bool = True) -> None:
        super().__init__(1, per_channel)

    def _codes_scale(self, w):
        w = w.detach()
        codes = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        return codes, _positive(_abs_reduce(w, self.per_channel, "mean"))


class TernaryWeight(WeightQuantizer):
    """Ternary weight networks (Li et al.): Δ = 0.7·mean|W|, codes sign(W)·[|W| > Δ] ∈ {−1, 0, 1},
    scale = mean of |W| over the weights above Δ (per output channel or per tensor). 2-bit signed."""

    code_bits = 2
    THRESHOLD = 0.7

    def __init__(self, per_channel: bool = True) -> None:
        super().__init__(2, per_channel)

    def _codes_scale(self, w):
        w = w.detach()
        delta = self.THRESHOLD * _abs_reduce(w, self.per_channel, "mean")
        mask = (w.abs() > _channel_view(delta, w)).to(w.dtype)
        codes = torch.sign(w) * mask
        kept = (w.abs() * mask)
        if self.per_channel:
            alpha = kept.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        else:
            alpha = kept.sum() / mask.sum().clamp_min(1)
        return codes, _positive(alpha)


class GaussianWeight(WeightQuantizer):
    """DeepBurning-MixQ weights: step = g[b]·std(W), codes clamp(round(W/step), −2^(b−1), 2^(b−1)−1).

    std over the whole tensor as in the source (or per output channel), treated as a constant;
    rounding straight through, zero gradient where the codes saturate.
    """

    def __init__(self, bits: int, per_channel: bool = False) -> None:
        super().__init__(bits, per_channel)
        self.code_bits = bits
        self.qmin, self.qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def _codes_scale(self, w):
        w = w.detach()
        std = w.flatten(1).std(dim=1) if self.per_channel else w.std()
        step = _positive(GAUSS_STEP[self.bits] * std)
        codes = torch.clamp(torch.round(w / _channel_view(step, w)), self.qmin, self.qmax)
        return codes, step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, step = self._codes_scale(w)
        return _GaussianWeightFn.apply(w, codes, step, self.qmin, self.qmax)


class _GaussianWeightFn(torch.autograd.Function):
    """Value codes·step; gradient of min(max(w, qmin·step), qmax·step): g inside the grid, 0 outside,
    g/2 on either end exactly (torch.maximum / minimum split a tie)."""

    @staticmethod
    def forward(ctx, w, codes, step, qmin, qmax):
        s = _channel_view(step, w)
        ctx.save_for_backward(w, qmin * s, qmax * s)
        return codes * s

    @staticmethod
    def backward(ctx, g):
        w, lo, hi = ctx.saved_tensors
        # ([w > lo] + [w ≥ lo])·([w < hi] + [w ≤ hi])/4: 1 inside, ½ on an end, 0 outside (0/1 floats: fast)
        low = torch.gt(w, lo, out=torch.empty_like(w)).add_(torch.ge(w, lo, out=torch.empty_like(w)))
        high = torch.lt(w, hi, out=torch.empty_like(w)).add_(torch.le(w, hi, out=torch.empty_like(w)))
        return g * low.mul_(high).mul_(0.25), None, None, None, None


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Value x exactly; gradient multiplied by `factor` (LSQ's step-size gradient scaling)."""
    scaled = x * factor
    return x.detach() + (scaled - scaled.detach())


class _LSQWeightFn(torch.autograd.Function):
    """Fused LSQ weight fake-quant: value clamp(round(w/s), qmin, qmax)·s (float32, per-channel s
    broadcast), gradients dw = g·inside, ds = Σ g·(q − (w/s)·inside) · factor per step."""

    @staticmethod
    def forward(ctx, w, step, scale, qmin, qmax, factor):
        s = _channel_view(scale, w)
        ws = w / s
        q = torch.round(ws).clamp_(qmin, qmax)
        ctx.save_for_backward(ws, q)
        ctx.factor, ctx.qmin, ctx.qmax, ctx.per_channel = factor, qmin, qmax, scale.dim() > 0
        return q * s

    @staticmethod
    def backward(ctx, g):
        ws, q = ctx.saved_tensors
        inside = torch.clamp(ws, ctx.qmin, ctx.qmax) == ws
        grad_w = g * inside
        contrib = g * (q - ws * inside)
        grad_step = contrib.flatten(1).sum(1) if ctx.per_channel else contrib.sum()
        return grad_w, grad_step * ctx.factor, None, None, None, None


class LSQWeight(WeightQuantizer):
    """Learned step size quantization (Esser et al., ICLR 2020), full signed range [−2^(b−1), 2^(b−1)−1].

    `step` is a parameter (one per output channel or one per tensor), initialised from the
    calibrated PTQ scale; its gradient is scaled by 1/sqrt(N·Qp) (N weights per step).
    """

    MIN_STEP = 1e-8

    def __init__(self, bits: int, init_step: torch.Tensor, per_channel: bool = True) -> None:
        super().__init__(bits, per_channel)
        self.code_bits = bits
        self.qmin, self.qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        self.step = nn.Parameter(init_step.detach().to(torch.float32).clone())

    def _codes_scale(self, w):
        step = self.step.detach().abs().clamp_min(self.MIN_STEP)
        return torch.clamp(torch.round(w.detach() / _channel_view(step, w)), self.qmin, self.qmax), step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        per_step = w[0].numel() if self.per_channel else w.numel()
        scale = self.step.detach().abs().clamp_min(self.MIN_STEP)
        # d|s|/ds = sign(s), folded into the gradient factor with LSQ's 1/sqrt(N·Qp).
        factor = torch.sign(self.step.detach()) / math.sqrt(per_step * self.qmax)
        # The value is round(clamp(w/s))·s with the same float32 s as integer_weights: exact codes·scale.
        return _LSQWeightFn.apply(w, self.step, scale, self.qmin, self.qmax, factor)
