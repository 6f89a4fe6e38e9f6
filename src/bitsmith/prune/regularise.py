"""L1 and L2 weight penalties, added to the loss while pruning fine-tunes (`magnitude.finetune`).

    weight_penalty(model, l1, l2) = l1 · Σ |w| + l2 · Σ w²

over the weights (never the biases) of every Conv2d / Linear (and QuantLayer) of `model`. Why beside
the optimizer's `weight_decay`: SGD's weight decay is coupled L2 (it adds λ·w to the gradient,
which equals l2 = λ/2 here); L1 has no optimizer form, and it is the one that pushes small weights
to (near) zero, so that magnitude pruning afterwards removes less that matters. The weight read is
the effective one (a pruned weight, masked by `apply_masks`, is 0 and gets no gradient).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.quant.modules import QuantLayer


def check_penalty(l1: float, l2: float) -> None:
    """Both strengths finite numbers ≥ 0 (ConfigError otherwise)."""
    for name, value in (("l1", l1), ("l2", l2)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def penalised_weights(model: nn.Module) -> list[torch.Tensor]:
    """The (effective) weights the penalty reads, in model order."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, QuantLayer))]


def weight_penalty(model: nn.Module, l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """l1 · Σ|w| + l2 · Σw² over the conv / linear weights of `model` (a 0-d tensor, differentiable)."""
    check_penalty(l1, l2)
    weights = penalised_weights(model)
    if not weights:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear weight to regularise")
    total = weights[0].new_zeros(())
    for w in weights:
        if l1:
            total = total + l1 * w.abs().sum()
        if l2:
            total = total + l2 * w.pow(2).sum()
    return total
