"""N:M structured sparsity (NVIDIA's 2:4): in every group of M consecutive weights along a layer's
reduction dimension, only the N largest in magnitude are kept.

A Conv2d weight [O, C/g, kh, kw] (or a Linear's [O, K]) is read as [O, K] in PyTorch's own order
(K = (C/g)·kh·kw: input channel, then kernel row, then column); each row is cut into groups of M
consecutive entries from its start. Every full group keeps exactly N entries (the N largest |w|;
ties to the earlier position). A row whose K is not a multiple of M ends in a shorter group of r
entries, which keeps min(N, r) — the tail is never sparser than N:M. The masks are the same bool
keep-masks as magnitude pruning's (`bitsmith.prune.magnitude.apply_masks` keeps them through
fine-tuning and QAT), so an N:M layer stays N:M after quantization: its pruned codes are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.prune.magnitude import prunable_layers

MAX_M = 16


def check_nm(n: int, m: int) -> tuple[int, int]:
    for name, value in (("N", n), ("M", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"N:M sparsity: {name} must be an integer, got {value!r}")
    if not 2 <= m <= MAX_M:
        raise ConfigError(f"N:M sparsity: M={m} is not allowed; allowed: 2 to {MAX_M} (2:4 is NVIDIA's)")
    if not 1 <= n <= m:
        raise ConfigError(f"N:M sparsity keeps N of every M weights: N={n} with M={m} is not allowed; "
                          f"allowed: N from 1 to M")
    return n, m


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The keep-mask of one weight tensor (shape of `weight`), N:M along its flattened row."""
    n, m = check_nm(n, m)
    rows = weight.detach().reshape(weight.shape[0], -1).abs()
    k = rows.shape[1]
    full = k - k % m
    keep = torch.zeros_like(rows, dtype=torch.bool)
    if full:
        groups = rows[:, :full].reshape(rows.shape[0], -1, m)
        # stable descending sort: among equal magnitudes the earlier position wins
        order = torch.sort(groups, dim=2, descending=True, stable=True).indices[..., :n]
        kept = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order, True)
        keep[:, :full] = kept.reshape(rows.shape[0], full)
    if k % m:
        tail = rows[:, full:]
        order = torch.sort(tail, dim=1, descending=True, stable=True).indices[:, :min(n, k % m)]
        keep[:, full:] = torch.zeros_like(tail, dtype=torch.bool).scatter_(1, order, True)
    return keep.reshape(weight.shape)


def nm_masks(model: nn.Module, n: int = 2, m: int = 4, *, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """N:M keep-masks for the model's Conv2d / Linear weights (or the named ones)."""
    check_nm(n, m)
    found = prunable_layers(model)
    if not found:
        raise ConfigError(f"{type(model).__name__} has no prunable layer (Conv2d / Linear)")
    names = list(found) if layers is None else list(layers)
    unknown = [name for name in names if name not in found]
    if unknown or not names:
        raise ConfigError(f"N:M sparsity: unknown or no layers {unknown or names}; allowed: {', '.join(found)}")
    return {name: nm_mask(found[name].weight, n, m) for name in names}


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Every group (as `nm_mask` cuts them) has at most N non-zero weights."""
    rows = (weight.detach().reshape(weight.shape[0], -1) != 0)
    k = rows.shape[1]
    full = k - k % m
    ok = bool((rows[:, :full].reshape(rows.shape[0], -1, m).sum(dim=2) <= n).all()) if full else True
    return ok and bool((rows[:, full:].sum(dim=1) <= n).all())
