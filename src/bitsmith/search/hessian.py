"""Per-layer Hessian traces and quantization sensitivities: the Hessian half of HAWQ-V3.

**Block traces.** For layer l (a Conv2d or Linear) two blocks of the Hessian of the loss L (the
batch-mean cross-entropy unless told otherwise) are estimated, on the float model in eval mode:

* H^W_l = ∂²L/∂W_l², w.r.t. the layer's weight (n^W_l = W_l.numel() values);
* H^A_l = ∂²L/∂x_l², w.r.t. the layer's input activation x_l (captured by a forward pre-hook).

**Hutchinson's estimator.** For a Rademacher vector v (entries ±1, independent), E[vᵀHv] = Tr H,
with Var = 2·Σ_{i≠j} H_ij² (the off-diagonal mass). Per batch, one forward pass and one backward
pass with create_graph give g_b = ∂L/∂b for every block b; then, block by block, one second
backward ∂(g_b·v_b)/∂b = H_bb v_b and the sample v_bᵀ H_bb v_b.

One Hessian-vector product with v on every block at once would also be unbiased per block
(v_lᵀ(Hv)_l = v_lᵀH_ll v_l + Σ_{m≠l} v_lᵀH_lm v_m, the cross terms vanishing in expectation), and
costs one second backward in all, but it adds ‖H_l,rest‖²_F to the variance, and the couplings
(∂²L/∂W_l∂x_l holds the back-propagated gradient itself) dwarf the blocks. Measured on ResNet-20
(random weights, 16 images, one thread): block by block costs 2.45 s per iteration against 0.42 s
(each second backward runs back through the layers after its block, so the cost grows as L²), but
the per-sample standard deviation of the input traces was 100–1000 times smaller (1.7–30 times
for the weights): per second of computing, 600 times as efficient (median over the 44 blocks;
only the last layer's weight did better jointly, by 2×). The joint estimate's input traces were not
even of the right sign after 30 iterations. LeNet-5 on 256 images: 0.41 s against 0.30 s. (Hv)_b
is the derivative w.r.t. block b with the other blocks held fixed, so the blocks need not be
independent variables: for x_l it is the Hessian of the loss as a function of x_l alone (the
network after layer l), for W_l the full Hessian w.r.t. W_l.

**Layer inputs.** The pre-hook hands the layer `x.view_as(x)` (or, for the network input, a leaf
copy that requires grad): a node of its own, so a tensor feeding two layers (a residual block's
input feeding a branch and a shortcut conv) gets one block per consumer, each counting only the
loss's dependence through that layer, which is what quantizing that layer's input alone changes.

**Per image.** L is a mean over the batch, and in eval mode images do not interact, so the Hessian
w.r.t. the batch's activation tensor is block diagonal over images with blocks ∇²ℓ_i / B:

    Tr H^A_l (batch tensor, mean loss) = (1/B) Σ_i Tr ∇²_{x_i} ℓ_i,

already the mean per-image trace (not divided by B again); like Tr H^W_l it does not depend on
the batch size. Batches are averaged weighted by their size (the mean loss over all images), with
fresh v per batch, which lowers the variance by about the number of batches.

**Stopping.** Estimates are running means over iterations; iteration k stops the loop when k ≥
min_iter and max over blocks of |m_k − m_{k−1}| / |m_k| < tol, or at max_iter (converged False).
This is HAWQ's criterion, not a confidence interval: the change of a running mean shrinks like
(sample spread)/k, so a block whose trace is near zero may never converge in relative terms.

**Sensitivities.** HAWQ-V3's Ω = Tr(H)/n · ‖Q(W) − W‖², extended to the input activation with its
own block trace:

    Ω_l(w, a) = (Tr H^W_l / n^W_l)·‖Q_w(W_l) − W_l‖² + (Tr H^A_l / n^A_l)·E_x‖Q_a(x_l) − x_l‖²,

with n^A_l the elements of one image's x_l and E_x the mean over images. It is the second-order
loss increase ½ΔᵀHΔ (up to the ½) under the isotropic approximation H ≈ (Tr H / n)·I. A negative
trace (a non-convex loss, or noise on a near-zero trace) is clamped at 0: ½ΔᵀHΔ < 0 would say
quantizing that layer *lowers* the loss, more so at fewer bits, and the search would then pay for
nothing but the cheapest widths for reasons a quadratic model cannot support; with 0 the layer is
simply insensitive (to second order) and its widths are chosen on cost alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.errors import ConfigError

#: The bit widths a candidate may take.
MIN_BITS, MAX_BITS = 2, 16

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
IterationCallback = Callable[[int, dict, float], None]


@dataclass
class LayerTraces:
    """Hutchinson estimates of the per-layer block traces (module docstring).

    `weight[name]` = Tr H^W, `activation[name]` = Tr H^A (mean per image), `weight_size[name]` =
    n^W, `activation_size[name]` = n^A (elements of the layer's input per image). `history[k]` holds
    iteration k+1's running estimates and max relative change (inf on the first iteration).
    """

    weight: dict[str, float]
    activation: dict[str, float]
    weight_size: dict[str, int]
    activation_size: dict[str, int]
    iterations: int
    converged: bool
    history: list[dict] = field(default_factory=list)
    seed: int = 0

    @property
    def layers(self) -> list[str]:
        return list(self.weight)

    def to_json(self) -> dict:
        """A JSON-ready dict (the first iteration's infinite change is written as null)."""
        data = asdict(self)
        data["history"] = [{**h, "max_rel_change": _finite_or_none(h["max_rel_change"])} for h in self.history]
        return data

    @classmethod
    def from_json(cls, data: dict) -> LayerTraces:
        history = [{**h, "max_rel_change": math.inf if h["max_rel_change"] is None else h["max_rel_change"]}
                   for h in data.get("history", [])]
        return cls(weight=dict(data["weight"]), activation=dict(data["activation"]),
                   weight_size=dict(data["weight_size"]), activation_size=dict(data["activation_size"]),
                   iterations=int(data["iterations"]), converged=bool(data["converged"]), history=history,
                   seed=int(data["seed"]))


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


# -- checks -----------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _resolve_layers(model: nn.Module, layers: Sequence[str]) -> list[nn.Module]:
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ConfigError(f"layers must be a non-empty list of layer names, got {layers!r}")
    named = dict(model.named_modules())
    eligible = [n for n, m in named.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    modules = []
    for name in layers:
        module = named.get(name) if isinstance(name, str) else None
        if module is None or not isinstance(module, (nn.Conv2d, nn.Linear)):
            what = "is not a Conv2d or Linear layer" if module is not None else "is not a layer of the model"
            raise ConfigError(f"{name!r} {what}; the model's Conv2d/Linear layers are: {', '.join(eligible)}")
        modules.append(module)
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layer names repeat in {list(layers)!r}: give each layer once")
    return modules


def _check_batches(batches: Sequence[Batch]) -> list[Batch]:
    if isinstance(batches, (torch.Tensor, str)) or not isinstance(batches, Sequence) or not batches:
        raise ConfigError("batches must be a non-empty list of (images, labels) pairs")
    checked = []
    for k, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise ConfigError(f"batch {k} must be a pair (images tensor, labels tensor)")
        x, y = batch
        if not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
            raise ConfigError(f"batch {k}: images must be a float tensor [B, ...] with B ≥ 1, got "
                              f"{x.dtype} {tuple(x.shape)}")
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise ConfigError(f"batch {k}: {tuple(y.shape)} labels for {x.shape[0]} images")
        checked.append((x, y))
    return checked


def _check_loop(seed: object, tol: object, max_iter: object, min_iter: object) -> None:
    if not _is_int(seed) or not 0 <= seed < 2 ** 64:
        raise ConfigError(f"seed must be an integer in 0..2^64 − 1, got {seed!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ConfigError(f"tol must be a number in (0, 1), got {tol!r}")
    if not _is_int(max_iter) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer ≥ 1, got {max_iter!r}")
    if not _is_int(min_iter) or not 1 <= min_iter <= max_iter:
        raise ConfigError(f"min_iter must be an integer in 1..max_iter ({max_iter}), got {min_iter!r}")


# -- the model, borrowed ----------------------------------------------------------------------


@contextmanager
def _borrowed(model: nn.Module, grad_params: Sequence[nn.Parameter] = ()) -> Iterator[None]:
    """The model in eval mode with only `grad_params` requiring grad; training flags and
    requires_grad restored on exit (autograd.grad leaves .grad alone, so nothing else changes)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for p in grad_params:
            p.requires_grad_(True)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


class _Inputs:
    """Forward pre-hooks recording each layer's input of the last forward pass; with `grad`, the
    layer is handed a graph node of its own (module docstring, "Layer inputs")."""

    def __init__(self, names: Sequence[str], modules: Sequence[nn.Module], grad: bool) -> None:
        self.names = list(names)
        self.grad = grad
        self.seen: list[list[torch.Tensor]] = [[] for _ in modules]
        self.handles = [m.register_forward_pre_hook(self._hook(k)) for k, m in enumerate(modules)]

    def _hook(self, k: int):
        def hook(module, args):
            x = args[0]
            if self.grad:
                x = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            self.seen[k].append(x)
            return (x,) + tuple(args[1:])
        return hook

    def run(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for s in self.seen:
            s.clear()
        out = model(x)
        for name, s in zip(self.names, self.seen):
            if len(s) != 1:
                raise ConfigError(f"layer {name!r} ran {len(s)} times in one forward pass; only layers that "
                                  f"run exactly once have one input activation to take the Hessian of")
        inputs = [s[0] for s in self.seen]
        for s in self.seen:
            s.clear()
        return out, inputs

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _rademacher(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    v = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (v * 2 - 1).to(dtype=like.dtype, device=like.device)


# -- traces -----------------------------------------------------------------------------------


def layer_traces(model: nn.Module, layers: Sequence[str], batches: Sequence[Batch], *, seed: int,
                 tol: float = 1e-3, max_iter: int = 100, min_iter: int = 10,
                 on_iteration: IterationCallback | None = None, loss_fn: LossFn | None = None) -> LayerTraces:
    """Hutchinson estimates of Tr H^W_l and Tr H^A_l for every named layer (module docstring).

    `model`: a float nn.Module, borrowed (eval mode, requires_grad set on the layers' weights
    only, both restored on return); `layers`: names of its Conv2d/Linear modules as in
    `named_modules()`; `batches`: (images, labels) pairs; `loss_fn(output, labels)`: a batch-mean
    loss, cross-entropy by default. Rademacher vectors come from `torch.Generator().manual_seed(seed)`
    in a fixed order, so the same seed and inputs give bit-identical results (on one thread count).
    `on_iteration(k, {"weight": {...}, "activation": {...}}, max_rel_change)` is called after each
    iteration k = 1, 2, ... (max_rel_change is inf on the first). Each iteration costs, per batch,
    one forward pass, one backward pass with create_graph and one second backward per block (2L),
    each back through the layers after its block. Raises ConfigError for unknown or repeated layer
    names, empty or malformed batches, a seed not an integer in 0..2^64 − 1, tol outside (0, 1),
    max_iter < 1 or min_iter outside 1..max_iter.
    """
    _check_loop(seed, tol, max_iter, min_iter)
    modules = _resolve_layers(model, layers)
    batches = _check_batches(batches)
    names = list(layers)
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    generator = torch.Generator().manual_seed(int(seed))
    total = sum(x.shape[0] for x, _ in batches)
    weights = [m.weight for m in modules]
    if len({id(w) for w in weights}) != len(weights):
        raise ConfigError("two of the layers share one weight tensor: their weight Hessians are one block")

    n = len(names)
    mean = np.zeros(2 * n)            # running means: weights then activations
    act_size: list[int] = []
    history: list[dict] = []
    converged = False
    iteration = 0
    with _borrowed(model, weights):
        capture = _Inputs(names, modules, grad=True)
        try:
            for iteration in range(1, max_iter + 1):
                sample = np.zeros(2 * n)
                for x, y in batches:
                    sample += _batch_sample(model, capture, loss_fn, weights, x, y, generator, act_size) \
                        * (x.shape[0] / total)
                previous, mean = mean, mean + (sample - mean) / iteration
                change = _max_rel_change(previous, mean) if iteration > 1 else math.inf
                estimates = {"weight": dict(zip(names, mean[:n].tolist())),
                             "activation": dict(zip(names, mean[n:].tolist()))}
                history.append({"iteration": iteration, **estimates, "max_rel_change": change})
                if on_iteration is not None:
                    on_iteration(iteration, estimates, change)
                if iteration >= min_iter and change < tol:
                    converged = True
                    break
        finally:
            capture.remove()

    return LayerTraces(weight=dict(zip(names, mean[:n].tolist())), activation=dict(zip(names, mean[n:].tolist())),
                       weight_size={k: int(w.numel()) for k, w in zip(names, weights)},
                       activation_size=dict(zip(names, act_size)), iterations=iteration, converged=converged,
                       history=history, seed=int(seed))


def _batch_sample(model: nn.Module, capture: _Inputs, loss_fn: LossFn, weights: list[torch.Tensor],
                  x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, act_size: list[int]) -> np.ndarray:
    """One Hutchinson sample v_bᵀ H_bb v_b for every block b of one batch, weights then inputs:
    one forward and one create_graph backward shared, then one second backward per block."""
    with torch.enable_grad():
        out, inputs = capture.run(model, x)
        if not act_size:
            act_size.extend(int(t[0].numel()) for t in inputs)
        loss = loss_fn(out, y)
        if loss.dim() != 0:
            raise ConfigError(f"loss_fn must return a scalar (the batch mean), got shape {tuple(loss.shape)}")
        blocks = weights + inputs
        vs = [_rademacher(b.shape, generator, b) for b in blocks]  # all drawn first: a fixed order
        grads = torch.autograd.grad(loss, blocks, create_graph=True, allow_unused=True, materialize_grads=True)
        sample = np.zeros(len(blocks))
        for k, (block, g, v) in enumerate(zip(blocks, grads, vs)):
            dot = (g * v).sum()
            if dot.requires_grad:  # else the loss is linear in this block: a zero Hessian
                (hv,) = torch.autograd.grad(dot, block, retain_graph=k < len(blocks) - 1, allow_unused=True,
                                            materialize_grads=True)
                sample[k] = float((v * hv).sum())
        return sample


def _max_rel_change(previous: np.ndarray, current: np.ndarray) -> float:
    """max over blocks of |m_k − m_{k−1}| / |m_k| (0 for a block that stays exactly 0)."""
    diff = np.abs(current - previous)
    scale = np.abs(current)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / scale)
    return float(rel.max())


# -- sensitivities ----------------------------------------------------------------------------


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Q_w: symmetric per-output-channel grid, scale_c = max|W_c| / (2^(b−1) − 1), codes
    clamp(round(W/scale), ±(2^(b−1) − 1)), rounding half to even (torch.round, as the front end
    rounds weights); an all-zero channel gets scale 1. Returns codes·scale in W's dtype."""
    qmax = (1 << (bits - 1)) - 1
    amax = w.abs().flatten(1).amax(dim=1) if w.dim() > 1 else w.abs().max().reshape(1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    scale = scale.reshape((-1,) + (1,) * (w.dim() - 1)) if w.dim() > 1 else scale
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def quantize_activation(x: torch.Tensor, bits: int, amax: float, signed: bool) -> torch.Tensor:
    """Q_a: one scale per tensor. Unsigned (an input never negative, e.g. after ReLU): codes
    0..2^b − 1, scale = max x / (2^b − 1); signed: codes ±(2^(b−1) − 1), scale = max|x| / (2^(b−1) − 1).
    Rounding half to even (torch.round); an all-zero input gets scale 1."""
    qmin, qmax = (-((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    scale = amax / qmax if amax > 0 else 1.0
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def _check_candidates(what: str, candidates: object, names: list[str]) -> list[list[int]]:
    """One list of widths per layer; a single flat list of ints applies to every layer."""
    if isinstance(candidates, Sequence) and candidates and all(_is_int(b) for b in candidates):
        candidates = [list(candidates)] * len(names)
    if not isinstance(candidates, Sequence) or len(candidates) != len(names):
        raise ConfigError(f"{what} must be one list of bit widths per layer ({len(names)} lists), got {candidates!r}")
    checked = []
    for name, widths in zip(names, candidates):
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
            raise ConfigError(f"{what} for layer {name!r} must be a non-empty list of bit widths, got {widths!r}")
        for b in widths:
            if not _is_int(b) or not MIN_BITS <= b <= MAX_BITS:
                raise ConfigError(f"{what} for layer {name!r}: bit width {b!r} is not allowed; "
                                  f"widths must be integers {MIN_BITS}..{MAX_BITS}")
        if len(set(widths)) != len(widths):
            raise ConfigError(f"{what} for layer {name!r} repeat a width: {list(widths)!r}")
        checked.append([int(b) for b in widths])
    return checked


def sensitivities(model: nn.Module, layers: Sequence[str], traces: LayerTraces,
                  candidates_w: Sequence[Sequence[int]] | Sequence[int],
                  candidates_a: Sequence[Sequence[int]] | Sequence[int],
                  batches: Sequence[Batch]) -> list[np.ndarray]:
    """Ω_l of every layer: an array [len(candidates_w[l]), len(candidates_a[l])] (module docstring),
    in float64, with negative traces clamped at 0.

    ‖Q_w(W) − W‖² uses `quantize_weight`; E_x‖Q_a(x) − x‖² uses `quantize_activation` with the
    sign and the maximum taken over all `batches` (one scale per tensor), averaged per image.
    `candidates_w` / `candidates_a`: one list of widths (2..16) per layer, in any order (a fixed
    layer has one); a flat list of ints means the same widths for every layer. Raises ConfigError
    for a width out of range, a layer missing from `traces`, or traces of another input shape.
    """
    modules = _resolve_layers(model, layers)
    names = list(layers)
    missing = [n for n in names if n not in traces.weight or n not in traces.activation]
    if missing:
        raise ConfigError(f"no traces for layer(s) {', '.join(missing)}; the traces cover: {', '.join(traces.layers)}")
    cand_w = _check_candidates("weight candidates", candidates_w, names)
    cand_a = _check_candidates("activation candidates", candidates_a, names)
    batches = _check_batches(batches)

    act_err = _activation_errors(model, names, modules, cand_a, batches, traces)
    omega = []
    for k, (name, module) in enumerate(zip(names, modules)):
        w = module.weight.detach().to(torch.float64)
        w_err = np.array([float(((quantize_weight(w, b) - w) ** 2).sum()) for b in cand_w[k]])
        # Clamped at 0: a negative trace cannot mean quantizing lowers the loss (module docstring).
        h_w = max(traces.weight[name], 0.0) / traces.weight_size[name]
        h_a = max(traces.activation[name], 0.0) / traces.activation_size[name]
        omega.append(h_w * w_err[:, None] + h_a * act_err[k][None, :])
    return omega


def _activation_errors(model: nn.Module, names: list[str], modules: list[nn.Module], cand_a: list[list[int]],
                       batches: list[Batch], traces: LayerTraces) -> list[np.ndarray]:
    """E_x‖Q_a(x_l) − x_l‖² per layer and candidate: one pass for the range, one for the errors."""
    n = len(names)
    lo, amax = [math.inf] * n, [0.0] * n
    errors = [np.zeros(len(c)) for c in cand_a]
    images = sum(x.shape[0] for x, _ in batches)
    with _borrowed(model), torch.no_grad():
        capture = _Inputs(names, modules, grad=False)
        try:
            for x, _ in batches:
                _, inputs = capture.run(model, x)
                for k, t in enumerate(inputs):
                    per_image = t[0].numel()
                    if per_image != traces.activation_size[names[k]]:
                        raise ConfigError(f"layer {names[k]!r} takes {per_image} values per image here but "
                                          f"{traces.activation_size[names[k]]} in the traces: traces of another "
                                          f"model or input shape")
                    lo[k] = min(lo[k], float(t.min()))
                    amax[k] = max(amax[k], float(t.abs().max()))
            for x, _ in batches:
                _, inputs = capture.run(model, x)
                for k, t in enumerate(inputs):
                    t = t.to(torch.float64)
                    for j, bits in enumerate(cand_a[k]):
                        q = quantize_activation(t, bits, amax[k], signed=lo[k] < 0)
                        errors[k][j] += float(((q - t) ** 2).sum())
        finally:
            capture.remove()
    return [e / images for e in errors]
