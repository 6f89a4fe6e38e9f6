"""Boxes as normalised (x1, y1, x2, y2) and their intersection over union."""

from __future__ import annotations

import torch

from bitsmith.errors import DataError


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 4:
        raise DataError(f"IoU needs two [N, 4] box tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Area [N] of each box of `a` overlapping the box of `b` at the same index (0 apart)."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    return iw * ih


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each box of `a` with the box of `b` at the same index: [N]; empty boxes give 0."""
    _check(a, b)
    a, b = a.to(torch.float64), b.to(torch.float64)
    inter = _intersection(a, b)
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def mean_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean IoU over the images, the DAC-SDC accuracy score."""
    if len(pred) == 0:
        raise DataError("mean IoU of no boxes is undefined")
    return float(box_iou(torch.as_tensor(pred), torch.as_tensor(target)).mean())


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU [N] (IoU minus the empty share of the enclosing box): a loss that still has a
    gradient when the boxes do not overlap. Float32, differentiable in `a`."""
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter + 1e-9
    cw = torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])
    ch = torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
    enclosing = cw * ch + 1e-9
    return inter / union - (enclosing - union) / enclosing
