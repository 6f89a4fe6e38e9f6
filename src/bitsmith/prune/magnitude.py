"""Unstructured magnitude pruning, with keep-masks that hold through fine-tuning and QAT.

Definitions.

* Prunable layers: the Conv2d / Linear modules of a float model, named as in
  `bitsmith.quant.prepare.quantizable_layers`, and the QuantLayers of a quantized model, named by
  the float layer they came from (`QuantLayer.float_name`). Only weights are pruned, never biases.
* `magnitude_masks(model, s)`: with n chosen weights (all chosen layers together for
  scope="global", each layer on its own for scope="layer"), the k = ⌊s·n⌋ weights of smallest |w|
  are pruned (mask False), all others kept (mask True). Ties are broken by position: the weights
  are ordered by a stable sort of |w| over the flattened weights (layers in model order), so among
  equal magnitudes the earlier index is pruned first. |w| is the layer's *effective* weight, so a
  weight already masked (0) is pruned again first: re-pruning at a higher sparsity only adds to the
  pruned set.
* `apply_masks(model, masks)`: registers a `torch.nn.utils.parametrize` parametrization
  weight = where(mask, original, 0) on each masked layer. Why parametrize and not hooks: the
  weight seen by every forward pass, by `QuantLayer.quantize_weight` (what lowering writes) and by
  BN folding is recomputed from the mask, so no optimizer state (momentum, weight decay, Adam's
  moments) can bring a pruned weight back — the `original` tensor may drift at pruned positions,
  but it is never seen. It survives `copy.deepcopy` and torch.fx tracing (the parametrized class
  subclasses Conv2d / Linear and lives in torch.nn, so the tracers keep it a leaf module), which
  tests/prune checks through `bitsmith.quant.quantize`.
* `sparsity_of(model)`: per prunable layer the fraction of effective weights that are exactly 0,
  and "total" over all of them.
* `agp_sparsity`: Zhu & Gupta's automated gradual pruning,
  s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(t1 − t0))³ for t0 ≤ t < t1, s_i before t0, s_f from t1 on.

Quantization. A float model's masks are not carried into the quantized copy by `prepare` (the
QuantLayers get a plain copy of the folded weights, zero at pruned positions but free to move in
QAT), so `quantize_pruned` re-applies them to the QuantLayers between QAT preparation and
training. The weight quantizer then sees exact zeros, which are code 0 on grids containing 0
(PTQ's symmetric grid, LSQ, HWGQ/Gaussian, ternary). DoReFa's codes are odd integers and binary
weights are ±1: neither grid has a 0, so masking a layer with those quantizers is refused.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from bitsmith.data import ArrayDataset, iterate_batches
from bitsmith.errors import ConfigError
from bitsmith.prune.regularise import check_penalty, weight_penalty
from bitsmith.quant import QATConfig, QuantConfig
from bitsmith.quant import quantize as quantize_model
from bitsmith.quant.calibration import dataset_batches
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.qat.prepare import qat_prepare
from bitsmith.quant.qat.train import qat_train
from bitsmith.quant.qat.weights import BinaryWeight, DoReFaWeight
from bitsmith.train import SGD_MOMENTUM, cosine_lr

SCOPES = ("global", "layer")
SCHEDULES = ("oneshot", "iterative", "agp")
# Weight quantizers whose code grid has no 0: a pruned weight cannot stay pruned through them.
_NO_ZERO_CODE = {DoReFaWeight: "DoReFa's grid has no zero (its codes are odd integers)",
                 BinaryWeight: "binary weights have no zero (codes are ±1)"}


class WeightMask(nn.Module):
    """The parametrization weight = where(mask, original, 0): +0.0 at pruned positions (not the
    −0.0 a product with a negative weight would give) and no gradient reaching them."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, w, w.new_zeros(()))


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the prunable layers in model order (see the module docstring for names)."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLayer):
            out[m.float_name or name] = m
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = m
    return out


def _chosen(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    all_layers = prunable_layers(model)
    if not all_layers:
        raise ConfigError(f"{type(model).__name__} has no prunable layer (Conv2d or Linear)")
    if layers is None:
        return all_layers
    layers = list(layers)
    if not layers:
        raise ConfigError(f"layers must name at least one layer; allowed: {', '.join(all_layers)}")
    unknown = [n for n in layers if n not in all_layers]
    if unknown:
        raise ConfigError(f"{', '.join(map(repr, unknown))}: not a prunable layer of {type(model).__name__}; "
                          f"allowed: {', '.join(all_layers)}")
    return {n: all_layers[n] for n in all_layers if n in layers}  # model order, duplicates dropped


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ConfigError(f"{what} must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _keep_smallest_pruned(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Flat keep-mask pruning the ⌊s·n⌋ smallest entries (stable sort: ties pruned in index order)."""
    k = math.floor(sparsity * magnitudes.numel())
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
    order = torch.sort(magnitudes, stable=True).indices
    keep[order[:k]] = False
    return keep


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: str = "global",
                    layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks (bool, shaped like each weight) pruning the smallest |w|; see the module docstring."""
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    chosen = _chosen(model, layers)
    weights = {n: m.weight.detach() for n, m in chosen.items()}
    if scope == "layer":
        return {n: _keep_smallest_pruned(w.abs().flatten(), sparsity).reshape(w.shape) for n, w in weights.items()}
    flat = torch.cat([w.abs().flatten().to(torch.float32) for w in weights.values()])
    keep = _keep_smallest_pruned(flat, sparsity)
    masks, start = {}, 0
    for n, w in weights.items():
        masks[n] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


def _mask_of(m: nn.Module) -> WeightMask | None:
    if parametrize.is_parametrized(m, "weight"):
        for p in m.parametrizations.weight:
            if isinstance(p, WeightMask):
                return p
    return None


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the pruned weights of `model` in place and keep them zero (a mask parametrization;
    an existing mask is replaced). Returns `model`."""
    chosen = _chosen(model, list(masks))
    for name, m in chosen.items():
        mask = masks[name]
        if tuple(mask.shape) != tuple(m.weight.shape):
            raise ConfigError(f"mask for {name!r} has shape {tuple(mask.shape)}, its weight {tuple(m.weight.shape)}")
        quantizer = getattr(m, "weight_quantizer", None)
        reason = next((why for cls, why in _NO_ZERO_CODE.items() if isinstance(quantizer, cls)), None)
        if reason is not None and not bool(mask.all()):
            raise ConfigError(f"cannot keep {name!r} pruned: {reason}, so pruned weights would be quantized to "
                              "nonzero codes; prune with a method whose grid contains 0 (lsq, hwgq, PTQ)")
        existing = _mask_of(m)
        if existing is not None:
            existing.mask = mask.detach().to(torch.bool).clone().to(existing.mask.device)
        else:
            parametrize.register_parametrization(m, "weight", WeightMask(mask.to(m.weight.device)))
    return model


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The keep-masks registered by `apply_masks` ({} when there are none)."""
    return {n: p.mask.clone() for n, m in prunable_layers(model).items() if (p := _mask_of(m)) is not None}


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake the masks in: each masked weight becomes a plain parameter holding its masked value."""
    for m in prunable_layers(model).values():
        if _mask_of(m) is not None:
            # torch gives a parametrized module a class of its own, which a deepcopy shares; removal
            # deletes the `weight` property from that class, so first give this module a private one
            # (or baking a copy would break the model it was copied from).
            shared = type(m)
            m.__class__ = type(shared.__name__, shared.__bases__, dict(shared.__dict__))
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def sparsity_of(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero (effective) weights per prunable layer, and "total"."""
    out: dict[str, float] = {}
    zeros = total = 0
    for name, m in prunable_layers(model).items():
        w = m.weight.detach()
        z = int((w == 0).sum())
        out[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["total"] = zeros / total if total else 0.0
    return out


def agp_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0, begin: int = 0,
                 end: int | None = None) -> float:
    """Zhu & Gupta's AGP sparsity at `step`: s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³ between
    t0 = `begin` and t1 = `end` (default `total_steps`); s_i before t0 and s_f from t1 on."""
    final, initial = check_sparsity(final, "final sparsity"), check_sparsity(initial, "initial sparsity")
    if initial > final:
        raise ConfigError(f"initial sparsity {initial} must not exceed the final {final}")
    end = total_steps if end is None else end
    if not 0 <= begin < end:
        raise ConfigError(f"AGP needs 0 <= begin < end, got begin={begin}, end={end}")
    if step < begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - begin) / (end - begin)) ** 3


def _schedule(schedule: str, final: float, events: int) -> list[float]:
    """The sparsity reached at each of the `events` pruning steps (the last is always `final`)."""
    if schedule == "oneshot":
        return [final]
    if schedule == "iterative":  # equal increments
        return [final * (k + 1) / events for k in range(events)]
    return [agp_sparsity(k + 1, events, final) for k in range(events)]


def _positive_ints(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def finetune(model: nn.Module, train_ds: ArrayDataset, input_shape: Sequence[int] | None = None, *,
             epochs: int = 1, batch_size: int = 64, lr: float = 0.01, weight_decay: float = 5e-4,
             l1: float = 0.0, l2: float = 0.0, penalty: Callable[[nn.Module], torch.Tensor] | None = None,
             before_step: Callable[[nn.Module, int, int], dict[str, Any] | None] | None = None,
             seed: int = 0, quiet: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train a deep copy of `model`: the one training loop of pruning's fine-tuning, SSL and the
    regularisers (they differ only in what they add to the loss and do between steps).

    SGD (Nesterov momentum 0.9, coupled `weight_decay`) with a cosine learning rate to 0 over all
    steps, bitsmith.train's recipe; the loss is cross-entropy + `weight_penalty(model, l1, l2)` +
    `penalty(model)` (when given). `before_step(model, step, total)` runs before each step (pruning
    events); a dict it returns is added to the history. Deterministic for a seed (the caller's RNG
    state is restored). Returns the trained copy (eval mode) and the history: those records and one
    per epoch ({"epoch", "train_loss" (cross-entropy only), "train_acc", "sparsity", "seconds"}).
    """
    _positive_ints(epochs=epochs, batch_size=batch_size)
    if not lr > 0 or not weight_decay >= 0:
        raise ConfigError(f"lr must be positive and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}")
    check_penalty(l1, l2)
    shape = tuple(input_shape if input_shape is not None else model.input_shape)
    steps_per_epoch = len(train_ds) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {batch_size} is larger than the {len(train_ds)} training images")
    total = steps_per_epoch * epochs

    model = copy.deepcopy(model)
    history: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=SGD_MOMENTUM,
                              nesterov=True, weight_decay=weight_decay)
        for epoch in range(epochs):
            model.train()
            start = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            batches = iterate_batches(train_ds, batch_size, shape, shuffle=True, augment=train_ds.info.augment,
                                      generator=gen, drop_last=True)
            for i, (x, y) in enumerate(batches):
                step = epoch * steps_per_epoch + i
                if before_step is not None and (record := before_step(model, step, total)) is not None:
                    history.append(record)
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(lr, step, total)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                value = loss.item()
                if l1 or l2:
                    loss = loss + weight_penalty(model, l1=l1, l2=l2)
                if penalty is not None:
                    loss = loss + penalty(model)
                if not math.isfinite(loss.item()):
                    raise ConfigError(f"fine-tuning diverged: loss {loss.item()} at step {step}; lower the learning "
                                      "rate (or the penalty strength)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += value * len(y)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                      "sparsity": sparsity_of(model)["total"], "seconds": round(time.perf_counter() - start, 3)}
            history.append(record)
            if not quiet:
                print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, acc {record['train_acc']:.1f}%, "
                      f"sparsity {record['sparsity']:.3f}")
    model.eval()
    return model, history


def prune_finetune(model: nn.Module, train_ds: ArrayDataset, input_shape: Sequence[int] | None = None, *,
                   sparsity: float, schedule: str = "oneshot", scope: str = "global",
                   layers: Sequence[str] | None = None, epochs: int = 1, batch_size: int = 64,
                   prune_events: int = 4, lr: float = 0.01, weight_decay: float = 5e-4, l1: float = 0.0,
                   l2: float = 0.0, seed: int = 0, quiet: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Prune a deep copy of `model` to `sparsity` and fine-tune it with the masks in place.

    Training is `finetune`'s (bitsmith.train's SGD recipe; `l1`, `l2`: the regularisers of
    bitsmith.prune.regularise added to the loss). Pruning happens at steps k·Δ, k = 0 … N−1,
    Δ = ⌊total/(N + 1)⌋ (the last stretch trains under the final mask): N = 1 for "oneshot",
    N = `prune_events` for "iterative" (equal sparsity increments) and "agp" (Zhu & Gupta's cubic
    ramp over the events). Deterministic for a seed (the caller's RNG state is restored). Returns
    the masked copy (masks still registered: `remove_masks` bakes them) and a history: one record
    per pruning event ({"step", "sparsity"}) and per epoch ({"epoch", "train_loss", "train_acc",
    "sparsity", "seconds"}).
    """
    sparsity = check_sparsity(sparsity)
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    _positive_ints(epochs=epochs, batch_size=batch_size, prune_events=prune_events)
    targets = _schedule(schedule, sparsity, 1 if schedule == "oneshot" else prune_events)
    _chosen(model, layers)  # an unknown layer fails before any training

    def prune_at_events(model: nn.Module, step: int, total: int) -> dict[str, Any] | None:
        delta = max(1, total // (len(targets) + 1))
        # a step past the end never happens: the events are clamped to the last step
        events = {min(k * delta, total - 1): s for k, s in enumerate(targets)}
        if step not in events:
            return None
        # Registering the mask moves the weight Parameter itself to `original`, so the optimizer
        # (and its momentum) keeps training the same tensor.
        apply_masks(model, magnitude_masks(model, events[step], scope=scope, layers=layers))
        return {"step": step, "sparsity": sparsity_of(model)["total"]}

    return finetune(model, train_ds, input_shape, epochs=epochs, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, l1=l1, l2=l2, before_step=prune_at_events, seed=seed, quiet=quiet)


def quantize_pruned(model: nn.Module, data: ArrayDataset | Iterable, config: QATConfig | QuantConfig,
                    masks: dict[str, torch.Tensor] | None = None, *,
                    on_epoch: Callable[[dict[str, Any]], None] | None = None) -> nn.Module:
    """`bitsmith.quant.quantize` that keeps `masks` (default: those registered on `model`) pruned.

    QAT: the masks are put on the QuantLayers after preparation and before training, so the trained
    weights stay exactly 0 and quantize to code 0; PTQ: the folded weights are already 0 (the masks
    are still checked against the layers). The masks are baked in (`remove_masks`) before returning,
    so the result is an ordinary quantized model for `lower`.
    """
    masks = current_masks(model) if masks is None else masks
    if isinstance(config, QATConfig):
        if not isinstance(data, ArrayDataset):
            raise ConfigError("QAT trains on a labelled data set: pass an ArrayDataset "
                              f"(bitsmith.data.load_dataset(name, 'train')), not {type(data).__name__}")
        qmodel = qat_prepare(model, dataset_batches(data, tuple(model.input_shape)), config.spec)
        apply_masks(qmodel, masks)
        qat_train(qmodel, model, data, config.train, on_epoch=on_epoch)
    elif isinstance(config, QuantConfig):
        qmodel = quantize_model(model, data, config)
        apply_masks(qmodel, masks)
    else:
        raise ConfigError(f"quantize_pruned takes a QATConfig or QuantConfig, got {type(config).__name__}")
    return remove_masks(qmodel)
