"""Activation quantizers for quantization-aware training: PACT, LSQ and HWGQ.

They are FakeQuantize subclasses, so lowering reads them like any calibrated quantization point
(`bits`, `signed`, `zero_point`, `enabled`, `observing`, and `scale`, a float32 tensor). The
forward value is always the base class's `clamp(round(x/scale) + zp, qmin, qmax) − zp) · scale`
with that same float32 scale — the numbers the integer graph's requantizer produces — and only
the gradient is the method's own.

PACT and LSQ learn a parameter; `scale` is a property derived from it, so it can never go stale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bitsmith.quant.fake_quant import FakeQuantize


#: HWGQ activation steps for a unit-variance pre-activation (DeepBurning-MixQ's HWGQ table; docs/qat.md).
HWGQ_STEP = {2: 0.538, 3: 0.3217, 4: 0.185, 5: 0.104, 6: 0.058, 7: 0.033, 8: 0.019}


def _float_mask(op, x: torch.Tensor, bound: float) -> torch.Tensor:
    """op(x, bound) as float32 0/1: on CPU, comparisons into a float tensor and g·mask with it run
    several times faster than the same with torch.bool (about 3× per pass at LeNet sizes)."""
    return op(x, bound, out=torch.empty_like(x))


def _inside(xs: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """[lo ≤ x̂ ≤ hi] as float32 0/1 (NaN is outside)."""
    return torch.clamp(xs, lo, hi).eq_(xs)


class _FakeQuantFn(torch.autograd.Function):
    """Fused activation fake-quant: value ((clamp(round(x/s) + zp, qmin, qmax) − zp)·s, the same float32
    operations as `bitsmith.quant.fake_quantize`), gradient chosen by `mode`.

    One autograd node instead of about ten keeps QAT epochs close to float ones (activations are
    the big tensors). Gradients, with x̂ = x/s and "inside" = qmin ≤ x̂ + zp ≤ qmax:
      "ste":  dx = g·inside (clipped straight-through), no scale gradient;
      "lsq":  dx = g·inside, ds = Σ g·(q − zp − x̂·inside) · grad_factor  (LSQ);
      "pact": dx = g·[x < α] (and x ≥ −α when signed), dα = Σ g·[x ≥ α] − Σ g·[x < −α]  (PACT),
              where s is α/qmax and the learned tensor passed in is α.
    "ste" and "pact" keep only the 0/1 mask for the backward pass and round in place; when
    nothing needs a gradient (the input quantizer) nothing is kept.
    """

    @staticmethod
    def forward(ctx, x, learned, scale, zero_point, qmin, qmax, mode, grad_factor):
        ctx.mode, ctx.zero_point, ctx.qmin, ctx.qmax, ctx.grad_factor = mode, zero_point, qmin, qmax, grad_factor
        xs = x / scale
        if mode == "lsq":
            q = torch.round(xs)
            if zero_point:
                q.add_(zero_point)
            q.clamp_(qmin, qmax)
            ctx.save_for_backward(xs, q)
            return (q - zero_point).mul_(scale) if zero_point else q * scale
        signed_pact = mode == "pact" and qmin < 0
        if any(ctx.needs_input_grad[:2]):
            if mode == "pact":  # below α (and not below −α when signed): there x̂ is in [−qmax, qmax)
                inside = _float_mask(torch.lt, xs, qmax)
                if signed_pact:
                    inside.mul_(_float_mask(torch.ge, xs, -qmax))
            else:
                inside = _inside(xs, qmin - zero_point, qmax - zero_point)
            ctx.save_for_backward(inside, xs if signed_pact else None)  # dα needs sign(x̂): keep x̂ apart
        q = torch.round(xs) if signed_pact else xs.round_()
        if zero_point:
            q.add_(zero_point)
        q.clamp_(qmin, qmax)
        return (q.sub_(zero_point) if zero_point else q).mul_(scale)

    @staticmethod
    def backward(ctx, g):
        zp, qmin, qmax, mode = ctx.zero_point, ctx.qmin, ctx.qmax, ctx.mode
        if mode == "pact":
            inside, xs = ctx.saved_tensors
            grad_x = g * inside
            # Σ g·[x ≥ α] − Σ g·[x < −α] = Σ g·sign(x)·[outside]
            outside_g = g - grad_x
            grad_alpha = outside_g.sum() if qmin >= 0 else torch.dot(outside_g.flatten(), torch.sign(xs).flatten())
            return grad_x, grad_alpha.reshape(()), None, None, None, None, None, None
        if mode == "ste":
            inside, _ = ctx.saved_tensors
            return g * inside, None, None, None, None, None, None, None
        xs, q = ctx.saved_tensors
        grad_x = g * _inside(xs, qmin - zp, qmax - zp)
        # LSQ: Σ g·(q − zp) − Σ g·x̂·inside, as two dot products (no temporaries)
        gq = torch.dot(g.flatten(), q.flatten()) - zp * g.sum() if zp else torch.dot(g.flatten(), q.flatten())
        grad_learned = ((gq - torch.dot(grad_x.flatten(), xs.flatten())) * ctx.grad_factor).reshape(())
        return grad_x, grad_learned, None, None, None, None, None, None


def fake_quant_act(x: torch.Tensor, learned: torch.Tensor | None, scale: torch.Tensor, zero_point: int, qmin: int,
                   qmax: int, mode: str = "ste", grad_factor: float = 1.0) -> torch.Tensor:
    """Apply `_FakeQuantFn`; `learned` is the parameter that receives the scale gradient (or None)."""
    dummy = learned if learned is not None else scale
    return _FakeQuantFn.apply(x, dummy, scale, zero_point, qmin, qmax, mode, grad_factor)


class QATActivation(FakeQuantize):
    """A FakeQuantize that starts frozen, with its grid taken from a calibrated PTQ quantizer."""

    def __init__(self, ptq: FakeQuantize, bits: int) -> None:
        nn.Module.__init__(self)  # not FakeQuantize.__init__: `scale` may be a property here
        self.bits = bits
        self.signed = ptq.signed
        self.zero_point = 0
        self.symmetric = True
        self.pot = False
        self.qformat = None
        self.observer_name = type(self).__name__
        self.observing = False
        self.enabled = True
        self.clip_range = None
        self.deferred = False  # training only: the quantization runs after the next max-pool instead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deferred or not self.enabled:
            return x
        return self.quantize(x)

    def quantize(self, x: torch.Tensor, features: int | None = None) -> torch.Tensor:
        """The fake-quantized x; `features` = activations per image at the quantizer's own place."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, scale={float(self.scale):.6g}"


class PACTQuantize(QATActivation):
    """PACT (Choi et al. 2018): y = clamp(x, 0, α) quantized to b bits, scale α/(2^b − 1).

    α is learned; its gradient is PACT's: 1 where x ≥ α (0 below), the rounding straight through.
    Signed points clamp to [−α, α] (scale α/(2^(b−1) − 1)). `regularization()` is the L2 term
    λ·α² that PACT adds to the loss so α does not grow without bound; the training loop applies its
    gradient 2λ·α as the α's weight decay in Adam (`train.quantizer_param_groups`), the same gradient.
    α starts at the calibrated PTQ clip (qmax · scale).
    """

    def __init__(self, ptq: FakeQuantize, bits: int, weight_decay: float = 1e-4) -> None:
        super().__init__(ptq, bits)
        alpha = float(ptq.scale) * ptq.qmax  # the range the observer chose
        self.alpha = nn.Parameter(torch.tensor(alpha, dtype=torch.float32))
        self.weight_decay = weight_decay

    @property
    def scale(self) -> torch.Tensor:
        return (self.alpha.detach().abs() / self.qmax).to(torch.float32)

    def regularization(self) -> torch.Tensor:
        return self.weight_decay * self.alpha.pow(2)

    def quantize(self, x: torch.Tensor, features: int | None = None) -> torch.Tensor:
        return fake_quant_act(x, self.alpha, self.scale, 0, self.qmin, self.qmax, "pact")


class LSQQuantize(QATActivation):
    """LSQ activations: x_q = clamp(round(x/s), qmin, qmax)·s with a learned step s.

    The step's gradient is LSQ's (rounding error inside the range, ±qmin/qmax outside), scaled by
    1/sqrt(N·Qp) with N the number of activations per image. s starts at the calibrated PTQ scale.
    """

    MIN_STEP = 1e-8

    def __init__(self, ptq: FakeQuantize, bits: int) -> None:
        super().__init__(ptq, bits)
        ratio = ((1 << ptq.bits) - 1) / ((1 << bits) - 1)  # the same range on a coarser grid
        self.step = nn.Parameter(torch.tensor(float(ptq.scale) * ratio, dtype=torch.float32))

    @property
    def scale(self) -> torch.Tensor:
        return self.step.detach().abs().clamp_min(self.MIN_STEP).to(torch.float32)

    def quantize(self, x: torch.Tensor, features: int | None = None) -> torch.Tensor:
        # N of LSQ's 1/sqrt(N·Qp): activations per image where the quantizer sits (`features`
        # when the quantization was moved after a max-pool, see qat.train.training_view).
        per_image = features or (x[0].numel() if x.dim() > 1 else x.numel())
        # d|s|/ds = sign(s): the step is used through its absolute value.
        factor = float(torch.sign(self.step.detach())) / math.sqrt(per_image * self.qmax)
        return fake_quant_act(x, self.step, self.scale, 0, self.qmin, self.qmax, "lsq", factor)


class HWGQQuantize(QATActivation):
    """Half-wave Gaussian quantization: a fixed step h[b] for a unit-variance pre-activation.

    The source has a BatchNorm before every activation, so its pre-activations have σ ≈ 1. Here
    BN is folded (or absent), so the step is h[b]·σ with σ the pre-activation's standard deviation
    estimated at calibration as sqrt(2·E[relu(y)²]) (exact for a zero-mean symmetric
    pre-activation). Range [0, h[b]·σ·(2^b − 1)]; gradient straight through inside it, 0 outside.
    """

    def __init__(self, ptq: FakeQuantize, bits: int, sigma: float) -> None:
        super().__init__(ptq, bits)
        self.sigma = sigma
        self.register_buffer("scale", torch.tensor(HWGQ_STEP[bits] * sigma, dtype=torch.float32))

    def quantize(self, x: torch.Tensor, features: int | None = None) -> torch.Tensor:
        return fake_quant_act(x, None, self.scale, 0, self.qmin, self.qmax)


class FixedQuantize(QATActivation):
    """A calibrated grid kept fixed during training, re-cut to `bits` over the same range
    (DoReFa-style activations: clip at the calibrated range, round straight through)."""

    def __init__(self, ptq: FakeQuantize, bits: int) -> None:
        super().__init__(ptq, bits)
        self.zero_point = ptq.zero_point if bits == ptq.bits else 0
        ratio = int_qmax(ptq.bits, ptq.signed) / int_qmax(bits, ptq.signed)
        self.register_buffer("scale", torch.tensor(float(ptq.scale) * ratio, dtype=torch.float32))

    def quantize(self, x: torch.Tensor, features: int | None = None) -> torch.Tensor:
        return fake_quant_act(x, None, self.scale, self.zero_point, self.qmin, self.qmax)


def int_qmax(bits: int, signed: bool) -> int:
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
