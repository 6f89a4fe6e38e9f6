"""SSL: structured sparsity learning by group lasso (Wen et al. 2016), then removal of the dead groups.

Groups of a layer's weight W (Conv2d: out × in/g × kh × kw; Linear: out × in):

* "filter"  — each output filter W[n, :, :, :] (a Linear's row W[n, :]);
* "channel" — each input channel W[:, c, :, :] (a Linear's column W[:, c]);
* "shape"   — each kernel position W[:, c, i, j] across all filters (Conv2d only: for a Linear it
  would be the channel group again).

`group_lasso(model, groups)` = Σ_layers Σ_groups s_g · ‖W_g‖₂ with s_g = 1, or √|g| (the number of
weights in the group) when `scale_by_size` — Wen et al.'s and the group lasso's usual weighting, so
that large groups are not favoured. Its gradient at ‖W_g‖ = 0 is taken as 0 (torch's subgradient).
`ssl_train` fine-tunes with strength · group_lasso added to the loss (the training loop of
bitsmith.prune.magnitude.finetune), which drives whole groups towards zero.

`ssl_remove(model, threshold)` then removes what the lasso emptied, a group being dead when
‖W_g‖₂ ≤ threshold (so threshold 0 removes exactly the all-zero groups):

* channels, physically, through the Torch-Pruning dependency groups of bitsmith.prune.structured:
  channel i of a group goes when every layer producing it has a dead filter i ("filter") or every
  layer reading it has a dead input channel i ("channel"; a Linear after a Flatten reads channel i
  as h·w columns, one group). A group keeps at least one channel (the one with the largest
  filter norm). Groups reaching the model output are never shrunk.
* shape groups, as masks (bitsmith.prune.apply_masks): the kernel positions whose column is dead
  are zeroed and kept zero through fine-tuning and QAT.

Exactness: removing a channel nobody reads ("channel") or whose producing filters are all zero and
which carries no constant ("filter" on a layer without bias and without a following BatchNorm,
e.g. LeNet-5) leaves the outputs unchanged up to float rounding. A dead filter followed by a bias
or a BatchNorm still outputs a constant (the bias, BN's β − γ·μ/σ); removing the channel drops that
constant, which fine-tuning afterwards absorbs — as in Wen et al.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from bitsmith.data import ArrayDataset
from bitsmith.errors import ConfigError
from bitsmith.prune.magnitude import apply_masks, current_masks, finetune, prunable_layers
from bitsmith.prune.structured import (
    StructuredReport,
    dependency_graph,
    input_shape_of,
    prunable_groups,
    remove_channels,
)

GROUPS = ("filter", "channel", "shape")


def _check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    if isinstance(groups, str):
        groups = (groups,)
    groups = tuple(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise ConfigError(f"unknown SSL group(s) {unknown or groups!r}; allowed: {', '.join(GROUPS)}")
    return groups


def _layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    found = {n: m for n, m in prunable_layers(model).items() if m.weight.dim() in (2, 4)}
    if not found:
        raise ConfigError(f"{type(model).__name__} has no prunable layer (Conv2d or Linear)")
    if layers is None:
        return found
    unknown = [n for n in layers if n not in found]
    if unknown or not layers:
        raise ConfigError(f"layers: {', '.join(map(repr, unknown)) or 'none given'}; allowed: {', '.join(found)}")
    return {n: m for n, m in found.items() if n in layers}


def group_norms(weight: torch.Tensor, group: str) -> torch.Tensor:
    """‖W_g‖₂ of every group of one weight: per filter (out), per input channel (in), or per kernel
    position (in × kh × kw, flattened in that order; Conv2d weights only)."""
    if group == "filter":
        return torch.linalg.vector_norm(weight.flatten(1), dim=1)
    if group == "channel":
        return torch.linalg.vector_norm(weight.transpose(0, 1).flatten(1), dim=1)
    if group == "shape":
        if weight.dim() != 4:
            raise ConfigError("shape groups are kernel positions of a Conv2d weight")
        return torch.linalg.vector_norm(weight.flatten(1), dim=0)
    raise ConfigError(f"unknown SSL group {group!r}; allowed: {', '.join(GROUPS)}")


def group_lasso(model: nn.Module, groups: Sequence[str] = ("filter", "channel"), layers: Sequence[str] | None = None,
                *, scale_by_size: bool = False) -> torch.Tensor:
    """Σ_layers Σ_groups s_g · ‖W_g‖₂ over the chosen groups (a 0-d tensor to add to the loss)."""
    groups = _check_groups(groups)
    chosen = _layers(model, layers)
    total = next(iter(chosen.values())).weight.new_zeros(())
    for m in chosen.values():
        w = m.weight
        for group in groups:
            if group == "shape" and w.dim() != 4:
                continue  # a Linear's "shape" group is its channel group
            norms = group_norms(w, group)
            size = w.numel() // norms.numel()
            total = total + (math.sqrt(size) if scale_by_size else 1.0) * norms.sum()
    return total


def ssl_train(model: nn.Module, train_ds: ArrayDataset, input_shape: Sequence[int] | None = None, *,
              strength: float, groups: Sequence[str] = ("filter", "channel"), layers: Sequence[str] | None = None,
              scale_by_size: bool = False, epochs: int = 1, batch_size: int = 64, lr: float = 0.01,
              weight_decay: float = 0.0, seed: int = 0, quiet: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fine-tune a copy of `model` with strength · group_lasso(groups) added to the loss
    (bitsmith.prune.magnitude.finetune's loop); returns the copy and its history."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or strength < 0:
        raise ConfigError(f"strength must be a finite number >= 0, got {strength!r}")
    groups = _check_groups(groups)
    _layers(model, layers)

    def lasso(m: nn.Module) -> torch.Tensor:
        return strength * group_lasso(m, groups, layers, scale_by_size=scale_by_size)

    return finetune(model, train_ds, input_shape, epochs=epochs, batch_size=batch_size, lr=lr,
                    weight_decay=weight_decay, penalty=lasso, seed=seed, quiet=quiet)


@dataclass
class SSLReport:
    """What `ssl_remove` did: the physical removal (StructuredReport) and, per Conv2d, how many
    kernel positions (shape groups) were masked to zero."""

    structured: StructuredReport
    shape_groups_zeroed: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _per_root(group: Any, n: int, produced: bool) -> list[torch.Tensor] | None:
    """For each layer of a dependency group that produces (out-channel items) or reads (in-channel
    items) its channels: the norm of its filter / input-channel group per root channel. None when
    a reader cannot be measured per channel (a grouped conv)."""
    norms = []
    fns = (tp.prune_conv_out_channels, tp.prune_linear_out_channels) if produced else \
        (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    for item in group:
        layer, fn = item.dep.target.module, item.dep.handler
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or fn not in fns:
            continue
        w = layer.weight.detach().to(torch.float64)
        if not produced and isinstance(layer, nn.Conv2d) and layer.groups != 1:
            return None
        rows = w[list(item.idxs)] if produced else w.transpose(0, 1)[list(item.idxs)]
        squares = torch.zeros(n, dtype=torch.float64)
        squares.index_add_(0, torch.tensor(item.root_idxs), rows.flatten(1).pow(2).sum(1))
        norms.append(squares.sqrt())
    return norms


def ssl_remove(model: nn.Module, threshold: float, *, input_shape: Sequence[int] | None = None,
               groups: Sequence[str] = GROUPS, ignored_layers: Sequence[str] | None = None
               ) -> tuple[nn.Module, SSLReport]:
    """Remove from a copy of `model` the groups with ‖W_g‖₂ ≤ `threshold` (see the module docstring):
    dead filters / channels physically, dead shape groups as masks (the only masks of the result).
    A model that carries masks is refused: bake them first (`remove_masks`)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ConfigError(f"threshold must be a finite number >= 0, got {threshold!r}")
    groups = _check_groups(groups)
    shape = input_shape_of(model, input_shape)
    masked = list(current_masks(model))
    if masked:
        # Why not bake them on a copy: removing a parametrization from a deep copy deletes the weight
        # property from the class the original shares, which breaks the caller's model.
        raise ConfigError(f"{masked[0]!r} carries a pruning mask; bake it first (bitsmith.prune.remove_masks) so "
                          "that Torch-Pruning can resize the plain weight")
    model = copy.deepcopy(model).eval()
    removal: dict[str, list[int]] = {}
    if "filter" in groups or "channel" in groups:
        graph = dependency_graph(model, shape)
        for name, group in prunable_groups(model, graph, ignored_layers):
            n = len(group[0].idxs)
            producers = _per_root(group, n, produced=True)
            dead = torch.zeros(n, dtype=torch.bool)
            if "filter" in groups:
                dead |= torch.stack(producers).amax(0) <= threshold
            readers = _per_root(group, n, produced=False) if "channel" in groups else None
            if readers:
                dead |= torch.stack(readers).amax(0) <= threshold
            if bool(dead.all()):  # a layer keeps one channel: the one with the largest filter norm
                dead[int(torch.stack(producers).amax(0).argmax())] = False
            removal[name] = torch.nonzero(dead).flatten().tolist()
        report = remove_channels(model, graph, removal, shape)
    else:
        report = remove_channels(model, None, {}, shape)
    zeroed: dict[str, int] = {}
    if "shape" in groups:
        masks = {}
        for name, m in prunable_layers(model).items():
            if isinstance(m, nn.Conv2d):
                dead = group_norms(m.weight.detach(), "shape") <= threshold
                if bool(dead.any()):
                    masks[name] = (~dead).reshape(1, *m.weight.shape[1:]).expand_as(m.weight).clone()
                    zeroed[name] = int(dead.sum())
        if masks:
            apply_masks(model, masks)
    return model.eval(), SSLReport(report, zeroed)
