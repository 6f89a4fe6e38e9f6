"""Observers: watch the float values passing a point during calibration and propose a range."""

from __future__ import annotations

import torch
from torch import nn


class MinMaxObserver(nn.Module):
    """Running minimum and maximum over all calibration batches."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        self.min_val = torch.minimum(self.min_val, x.min())
        self.max_val = torch.maximum(self.max_val, x.max())
        return x

    @property
    def seen(self) -> bool:
        return bool(torch.isfinite(self.min_val))

    def range(self) -> tuple[float, float]:
        return float(self.min_val), float(self.max_val)


def make_observer(name: str) -> nn.Module:
    if name == "minmax":
        return MinMaxObserver()
    raise ValueError(name)  # QuantConfig has already validated the name
