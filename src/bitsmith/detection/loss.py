"""The detection loss: box regression (GIoU) at the responsible (cell, anchor), plus objectness.

The responsible cell is the one holding the box centre, the responsible anchor the one whose shape
best matches the box (IoU of centred boxes; ties: the first, so UltraNet's six equal anchors train
anchor 0). Objectness is trained as a softmax over all (anchor, cell) positions with the
responsible one as the class: there is exactly one object per image (the contest's premise) and
decoding takes the argmax, so this trains exactly what is decoded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitsmith.detection.boxes import giou
from bitsmith.detection.decode import boxes_at, split_head
from bitsmith.detection.heads import AnchorHead
from bitsmith.errors import DataError


def responsible(target: torch.Tensor, head: AnchorHead, grid: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """(anchor, gy, gx) [B] of each target box (normalised x1, y1, x2, y2)."""
    gh, gw = grid
    cx, cy = (target[:, 0] + target[:, 2]) / 2, (target[:, 1] + target[:, 3]) / 2
    gx = (cx * gw).floor().clamp(0, gw - 1).to(torch.int64)
    gy = (cy * gh).floor().clamp(0, gh - 1).to(torch.int64)
    anchors = torch.tensor(head.anchor_fractions(), dtype=torch.float32)  # [A, 2]
    w, h = (target[:, 2] - target[:, 0])[:, None], (target[:, 3] - target[:, 1])[:, None]
    inter = torch.minimum(w, anchors[None, :, 0]) * torch.minimum(h, anchors[None, :, 1])
    shape_iou = inter / (w * h + anchors[None, :, 0] * anchors[None, :, 1] - inter)
    return shape_iou.argmax(dim=1), gy, gx


def detection_loss(out: torch.Tensor, target: torch.Tensor, head: AnchorHead,
                   objectness_weight: float = 1.0) -> torch.Tensor:
    """Mean over the batch of (1 - GIoU) of the responsible prediction plus the objectness cross-entropy."""
    p = split_head(out, head)
    b, a, _, gh, gw = p.shape
    if target.shape != (b, 4):
        raise DataError(f"detection targets must be [{b}, 4] boxes, got {tuple(target.shape)}")
    anchor, gy, gx = responsible(target, head, (gh, gw))
    pred = boxes_at(p, anchor, gy, gx, head)
    box_loss = (1.0 - giou(pred, target)).mean()
    objectness = p[:, :, 4].reshape(b, -1)
    position = (anchor * gh + gy) * gw + gx
    return box_loss + objectness_weight * F.cross_entropy(objectness, position)
