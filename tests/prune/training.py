"""Shared by the pruning tests: a few SGD steps that would revive pruned weights if masks leaked."""

from __future__ import annotations

import torch
from torch import nn


def sgd_steps(model: nn.Module, steps: int, *, lr: float = 0.1, weight_decay: float = 0.01, seed: int = 0) -> None:
    """`steps` of SGD (Nesterov momentum 0.9, weight decay) on random 1×32×32 images and labels. At a
    pruned position the gradient is 0, but weight decay and momentum still move the stored value."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_pruned_zero(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Every pruned weight is exactly +0.0 and every kept one is not 0 (random floats: no exact zero)."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        w = mods[name].weight.detach()
        assert torch.all(w[~mask] == 0), name
        assert not torch.signbit(w[~mask]).any(), name  # +0.0, not −0.0
        assert torch.all(w[mask] != 0), name
