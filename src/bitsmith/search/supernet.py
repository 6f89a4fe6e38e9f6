"""The mixed-precision supernet of a differentiable search (DeepBurning-MixQ / AnyPackingNet style).

Every searched Conv2d/Linear becomes a `MixedLayer` with one architecture parameter per candidate
width, α_w (weights) and α_a (its input activations), all initialised to 0.01 (uniform softmax).
The layer computes its float operation (conv or linear, same bias) on mixtures of fake-quantized
tensors:

    W_mix = Σ_i p_i · Q_i(W),   p = softmax(α_w),   Q_i: step g[b_i]·std(W), codes clamp(round(W/step),
                                                          −2^(b_i−1), 2^(b_i−1) − 1)   (GAUSS_STEP)
    x_mix = Σ_j q_j · Q_j(x),   q = softmax(α_a),   Q_j: step h[b_j]·σ, codes clamp(round(x/step), 0, 2^(b_j) − 1)
                                                          after a ReLU (HWGQ_STEP), or step g[b_j]·σ,
                                                          codes in ±(2^(b_j−1) − 1) for a signed input

The weight grid is `bitsmith.quant.qat.weights.GaussianWeight`'s (per tensor, std a constant), the
unsigned activation grid `HWGQQuantize`'s. σ is the standard deviation of the pre-activation the
HWGQ table assumes (unit-variance Gaussian): measured once on calibration batches as
sqrt(2·E[x²]) for a non-negative input (after a ReLU E[x²] is half the pre-activation's, as in
`qat.prepare`) and sqrt(E[x²]) for a signed one (e.g. the normalised image into the first
layer), whose grid is the signed Gaussian one of the weights' table, symmetric like bitsmith's
signed activations. σ and the grids then stay fixed during the search. σ is measured where the
layer reads its input: behind a max-pool the values are larger than a plain ReLU output's, so
σ (and the step) comes out larger than the pre-activation's; MixQ's σ = 1 is the BatchNorm's
before the pool. Past 8 bits the tables
stop; there the step halves per extra bit (the 8-bit clip range, a finer grid: at those widths
the quantization noise is far below anything the search can see).

Gradients: W and x straight through where the value is inside the grid (clipped STE, weighted by
the probabilities: dx = g·Σ_j q_j·[inside_j]), and the architecture parameters through
dL/dq_j = Σ g·Q_j(x) and the softmax. `_MixedQuantFn` computes the whole sum and both
gradients in one autograd node over [K, N] buffers, where the naive Σ of K fake-quants would be
about 10·K autograd nodes per tensor, each a full pass over it. (LeNet-5 on Fashion-MNIST,
7 + 7 candidates in the three middle layers: a search epoch takes about 1.3–1.7× a float one.)

A layer with a single candidate for its weights (or activations) is fixed there: no α, plain
quantization at that width, nothing to optimise.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.quant.qat.activations import HWGQ_STEP
from bitsmith.quant.qat.weights import GAUSS_STEP

MIN_BITS, MAX_BITS = 2, 16
ALPHA_INIT = 0.01
_TABLE_TOP = 8  # GAUSS_STEP / HWGQ_STEP stop here


def _table_step(table: dict[int, float], bits: int) -> float:
    """table[bits] up to 8 bits; beyond, the 8-bit step halved per extra bit (same clip range)."""
    if bits <= _TABLE_TOP:
        return table[bits]
    return table[_TABLE_TOP] * 2.0 ** (_TABLE_TOP - bits)


def weight_step(bits: int) -> float:
    """g[b]: the Gaussian weight step in units of std(W)."""
    return _table_step(GAUSS_STEP, bits)


def activation_step(bits: int, signed: bool) -> float:
    """The activation step in units of the pre-activation's σ: h[b] (HWGQ) after a ReLU, g[b] when signed."""
    return _table_step(GAUSS_STEP if signed else HWGQ_STEP, bits)


class _MixedQuantFn(torch.autograd.Function):
    """Σ_k p_k · Q_k(x) for K uniform grids in one pass, Q_k(x) = clamp(round(x/s_k), lo_k, hi_k)·s_k.

    Over [K, N] buffers: x/s_k and the clamp row by row (a clamp with per-row tensor bounds is
    about 5× slower than K clamps with scalar bounds), then vectorised: [clamped == x/s_k] (the
    clipped STE's mask, NaN outside), round and ·s_k in place; the sum over k is one
    matrix-vector product. Backward: dx = g·(pᵀ·inside) and dp_k = Σ g·Q_k(x), one product each.
    With K = 1 the value is Q_1(x) itself, bit for bit (no product): exactly the plain fake-quant.
    `steps`: float32 [K]; `lo`, `hi`: the integer bounds as Python numbers.
    """

    @staticmethod
    def forward(ctx, x, probs, steps, lo, hi):
        k = steps.shape[0]
        need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        flat = x.reshape(-1)
        xs = torch.empty((k, flat.numel()), dtype=x.dtype)
        q = torch.empty_like(xs)
        for i in range(k):
            torch.div(flat, steps[i], out=xs[i])  # a 0-dim float32 step: as the plain fake-quant divides
            torch.clamp(xs[i], lo[i], hi[i], out=q[i])
        mask = None
        if need_x:
            inside = xs.eq_(q)  # 0/1 float, in place: x/s is not needed any more
            mask = inside[0] if k == 1 else probs @ inside
        q.round_().mul_(steps.reshape(k, 1))  # integer bounds: round(clamp(v)) = clamp(round(v))
        value = q[0] if k == 1 and not need_p else probs @ q
        ctx.save_for_backward(mask, q if need_p else None)
        return value.view_as(x)

    @staticmethod
    def backward(ctx, g):
        mask, q = ctx.saved_tensors
        grad_x = g * mask.view_as(g) if mask is not None else None
        grad_p = q @ g.reshape(-1) if q is not None else None
        return grad_x, grad_p, None, None, None


def mixed_quantize(x: torch.Tensor, probs: torch.Tensor, steps: torch.Tensor, lo: Sequence[float],
                   hi: Sequence[float]) -> torch.Tensor:
    """Σ_k probs_k · Q_k(x) (see `_MixedQuantFn`): one float32 step and integer bounds per candidate."""
    return _MixedQuantFn.apply(x, probs, steps.reshape(-1), tuple(float(v) for v in lo), tuple(float(v) for v in hi))


def _check_candidates(name: str, kind: str, bits: Sequence[int]) -> list[int]:
    allowed = f"allowed: a non-empty list of distinct integers {MIN_BITS} to {MAX_BITS}"
    if isinstance(bits, (str, bytes)) or not isinstance(bits, Sequence) or len(bits) == 0:
        raise ConfigError(f"{name}: {kind} candidates {bits!r} are not allowed; {allowed}")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
            raise ConfigError(f"{name}: {kind} candidate width {b!r} is not allowed; {allowed}")
    if len(set(bits)) != len(bits):
        raise ConfigError(f"{name}: {kind} candidates {list(bits)} repeat a width; {allowed}")
    return list(bits)


class MixedLayer(nn.Module):
    """A Conv2d/Linear whose weights and input activations are softmax(α)-weighted mixtures of
    fake-quantized copies (module docstring). Keeps the float layer's weight (shared by every
    candidate) and bias; α_w / α_a are None where a single candidate fixes the width."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, candidates_w: Sequence[int], candidates_a: Sequence[int],
                 sigma: float, signed: bool, name: str = "") -> None:
        super().__init__()
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise ConfigError(f"{name}: padding_mode={layer.padding_mode!r} is not supported by the search; "
                              "allowed: 'zeros'")
        self.name = name
        self.candidates_w = _check_candidates(name, "weight", candidates_w)
        self.candidates_a = _check_candidates(name, "activation", candidates_a)
        self.weight = layer.weight
        self.bias = layer.bias
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups
        self.sigma = float(sigma)
        self.signed = bool(signed)

        def alpha(n: int) -> nn.Parameter | None:
            return nn.Parameter(torch.full((n,), ALPHA_INIT)) if n > 1 else None

        self.alpha_w = alpha(len(self.candidates_w))
        self.alpha_a = alpha(len(self.candidates_a))
        f32 = dict(dtype=torch.float32)
        bw, ba = self.candidates_w, self.candidates_a
        self.register_buffer("w_rel_steps", torch.tensor([weight_step(b) for b in bw], **f32), persistent=False)
        self.w_lo = tuple(float(-(1 << (b - 1))) for b in bw)
        self.w_hi = tuple(float((1 << (b - 1)) - 1) for b in bw)
        # The step in Python double, then one rounding to float32: as HWGQQuantize stores its scale.
        self.register_buffer("a_steps", torch.tensor([activation_step(b, signed) * self.sigma for b in ba], **f32),
                             persistent=False)
        top = [((1 << (b - 1)) - 1) if signed else (1 << b) - 1 for b in ba]
        self.a_lo = tuple(float(-t if signed else 0) for t in top)
        self.a_hi = tuple(float(t) for t in top)
        self.register_buffer("one", torch.ones(1), persistent=False)

    def probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(softmax(α_w), softmax(α_a)), differentiable; a fixed side is [1]."""
        pw = F.softmax(self.alpha_w, dim=0) if self.alpha_w is not None else self.one
        pa = F.softmax(self.alpha_a, dim=0) if self.alpha_a is not None else self.one
        return pw, pa

    def argmax_bits(self) -> tuple[int, int]:
        """The candidate widths with the largest α (the first one on a tie)."""
        def pick(alpha: nn.Parameter | None, bits: list[int]) -> int:
            if alpha is None:
                return bits[0]
            values = alpha.detach().tolist()
            return bits[max(range(len(values)), key=values.__getitem__)]

        return pick(self.alpha_w, self.candidates_w), pick(self.alpha_a, self.candidates_a)

    def mixed_weight(self, pw: torch.Tensor | None = None) -> torch.Tensor:
        pw = self.probabilities()[0] if pw is None else pw
        w = self.weight
        std = w.detach().std() if w.numel() > 1 else w.detach().abs().reshape(())
        steps = self.w_rel_steps * std
        steps = torch.where(steps > 0, steps, 1.0)  # all-zero weights: any step represents them
        return mixed_quantize(w, pw, steps, self.w_lo, self.w_hi)

    def mixed_input(self, x: torch.Tensor, pa: torch.Tensor | None = None) -> torch.Tensor:
        pa = self.probabilities()[1] if pa is None else pa
        return mixed_quantize(x, pa, self.a_steps, self.a_lo, self.a_hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pw, pa = self.probabilities()
        w = self.mixed_weight(pw)
        x = self.mixed_input(x, pa)
        if self.conv:
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        kind = "conv" if self.conv else "linear"
        return (f"{kind}, w={self.candidates_w}, a={self.candidates_a}, sigma={self.sigma:.4g}, "
                f"{'signed' if self.signed else 'unsigned'} input")


def _input_statistics(model: nn.Module, layers: list[str], batches: list[torch.Tensor]) -> dict[str, tuple[float, bool]]:
    """Per layer: (RMS of its input, whether that input was ≥ 0 on every calibration value)."""
    modules = dict(model.named_modules())
    sums: dict[str, list] = {name: [0.0, 0, True] for name in layers}

    def hook_for(name: str):
        def hook(module, args):
            x = args[0].detach().to(torch.float64)
            acc = sums[name]
            acc[0] += float((x * x).sum())
            acc[1] += x.numel()
            acc[2] = acc[2] and bool((x >= 0).all())
        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in layers]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: ((s / max(n, 1)) ** 0.5, nonneg) for name, (s, n, nonneg) in sums.items()}


def _check_layers(model: nn.Module, layers: Sequence[str], candidates_w, candidates_a) -> list[str]:
    modules = dict(model.named_modules())
    allowed = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    listing = f"allowed: {', '.join(allowed)}"
    if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ConfigError(f"layers must be a non-empty list of Conv2d/Linear names; {listing}")
    for name in layers:
        if not isinstance(name, str) or name not in modules or name == "":
            raise ConfigError(f"layer {name!r} is not a module of {type(model).__name__}; {listing}")
        if not isinstance(modules[name], (nn.Conv2d, nn.Linear)):
            raise ConfigError(f"layer {name!r} is a {type(modules[name]).__name__}, not a Conv2d/Linear; {listing}")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers {list(layers)} name a layer twice; each layer once")
    for what, cands in (("candidates_w", candidates_w), ("candidates_a", candidates_a)):
        if isinstance(cands, str) or not isinstance(cands, Sequence) or len(cands) != len(layers):
            got = len(cands) if isinstance(cands, Sequence) else cands
            raise ConfigError(f"{what} must hold one list of widths per layer ({len(layers)}), got {got!r}")
    return list(layers)


def calibration_inputs(batches: Iterable) -> list[torch.Tensor]:
    """The input tensors of calibration batches given as tensors or (x, y) pairs."""
    out = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not out:
        raise ConfigError("calibration needs at least one batch; allowed: a non-empty list of tensors or (x, y)")
    return out


def build_supernet(model: nn.Module, layers: Sequence[str], candidates_w: Sequence[Sequence[int]],
                   candidates_a: Sequence[Sequence[int]], calib_batches: Iterable) -> nn.Module:
    """A deep copy of `model` with each named Conv2d/Linear replaced by a MixedLayer.

    `layers` are names as in `model.named_modules()`; `candidates_w[l]` / `candidates_a[l]` the
    widths (2 to 16) layer l may take for its weights / input activations (one width: fixed).
    Each layer's input σ and sign are measured on `calib_batches` (tensors or (x, y) pairs) with
    the float model in eval mode. The float model is not modified; BatchNorm layers are copied as
    they are. The supernet is returned in the float model's train/eval mode.
    """
    names = _check_layers(model, layers, candidates_w, candidates_a)
    for name, cw, ca in zip(names, candidates_w, candidates_a):
        _check_candidates(name, "weight", cw)
        _check_candidates(name, "activation", ca)
    batches = calibration_inputs(calib_batches)
    net = copy.deepcopy(model)
    net.eval()
    stats = _input_statistics(net, names, batches)
    modules = dict(net.named_modules())
    for name, cw, ca in zip(names, candidates_w, candidates_a):
        rms, nonneg = stats[name]
        sigma = rms * (2 ** 0.5 if nonneg else 1.0)  # HWGQ's σ of the pre-activation (module docstring)
        mixed = MixedLayer(modules[name], cw, ca, sigma if sigma > 0 else 1.0, signed=not nonneg, name=name)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else net, child, mixed)
    net.searched_layers = names
    return net.train(model.training)


def mixed_layers(supernet: nn.Module) -> list[tuple[str, MixedLayer]]:
    """The supernet's MixedLayers as (name, layer), in the order `build_supernet` was given."""
    modules = dict(supernet.named_modules())
    names = getattr(supernet, "searched_layers", None)
    if names is None:
        return [(n, m) for n, m in modules.items() if isinstance(m, MixedLayer)]
    return [(n, modules[n]) for n in names]


def supernet_alphas(supernet: nn.Module) -> list[tuple[str, nn.Parameter | None, nn.Parameter | None]]:
    """(name, α_w, α_a) per searched layer; None where the layer's width is fixed."""
    return [(n, m.alpha_w, m.alpha_a) for n, m in mixed_layers(supernet)]


def alpha_parameters(supernet: nn.Module) -> list[nn.Parameter]:
    """Every architecture parameter (what the α optimiser steps); fixed layers have none."""
    return [a for _, aw, aa in supernet_alphas(supernet) for a in (aw, aa) if a is not None]


def weight_parameters(supernet: nn.Module) -> list[nn.Parameter]:
    """Every other trainable parameter: weights, biases, BatchNorm."""
    alphas = {id(a) for a in alpha_parameters(supernet)}
    return [p for p in supernet.parameters() if p.requires_grad and id(p) not in alphas]


def probabilities(supernet: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(softmax(α_w), softmax(α_a)) per searched layer, differentiable ([1] for a fixed side)."""
    return [m.probabilities() for _, m in mixed_layers(supernet)]


def argmax_bits(supernet: nn.Module) -> tuple[list[int], list[int]]:
    """(weight widths, input-activation widths) with the largest α per searched layer."""
    picks = [m.argmax_bits() for _, m in mixed_layers(supernet)]
    return [w for w, _ in picks], [a for _, a in picks]
