"""From the head's real-valued output to one box per image.

The same function decodes a float model, a fake-quant model and the integer engine
(`graph.dequantize(engine.run(graph, x))`, on the host, as the contest boards do): the box is the
one of the (cell, anchor) with the highest objectness. Objectness is compared raw (the sigmoid is
monotonic), so equal head outputs give the same choice bit for bit.
"""

from __future__ import annotations

import torch

from bitsmith.detection.heads import AnchorHead
from bitsmith.errors import DataError

MAX_LOG_SCALE = 6.0  # exp(tw) is capped at e^6 anchors: an untrained head must not overflow


def split_head(out: torch.Tensor, head: AnchorHead) -> torch.Tensor:
    """[B, A*V, gh, gw] -> [B, A, V, gh, gw], checking the channel count."""
    if out.ndim != 4 or out.shape[1] != head.channels:
        raise DataError(f"detection head output must be [B, {head.channels}, gh, gw] "
                        f"({len(head.anchors)} anchors x {head.values} values), got {tuple(out.shape)}")
    b, _, gh, gw = out.shape
    return out.reshape(b, len(head.anchors), head.values, gh, gw)


def cell_boxes(t: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, anchor_wh: torch.Tensor,
               grid: tuple[int, int]) -> torch.Tensor:
    """Normalised boxes [N, 4] from raw (tx, ty, tw, th) [N, 4] at cells (gx, gy) with anchors [N, 2]."""
    gh, gw = grid
    cx = (torch.sigmoid(t[:, 0]) + gx) / gw
    cy = (torch.sigmoid(t[:, 1]) + gy) / gh
    w = torch.exp(t[:, 2].clamp(max=MAX_LOG_SCALE)) * anchor_wh[:, 0]
    h = torch.exp(t[:, 3].clamp(max=MAX_LOG_SCALE)) * anchor_wh[:, 1]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def boxes_at(p: torch.Tensor, anchor: torch.Tensor, gy: torch.Tensor, gx: torch.Tensor,
             head: AnchorHead) -> torch.Tensor:
    """Normalised boxes [B, 4] of split head outputs p [B, A, V, gh, gw] at (anchor, gy, gx) per image."""
    gh, gw = p.shape[-2:]
    t = p[torch.arange(p.shape[0]), anchor, :4, gy, gx]  # [B, 4]
    anchors = torch.tensor(head.anchor_fractions(), dtype=torch.float32)[anchor]
    return cell_boxes(t, gx.to(torch.float32), gy.to(torch.float32), anchors, (gh, gw))


def decode(out: torch.Tensor, head: AnchorHead) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes [B, 4] normalised and clipped to the image, objectness logits [B]) of the best
    (anchor, cell) per image; ties go to the first in (anchor, row, column) order."""
    p = split_head(torch.as_tensor(out, dtype=torch.float32), head)
    b, a, _, gh, gw = p.shape
    objectness = p[:, :, 4].reshape(b, -1)
    best = objectness.argmax(dim=1)
    anchor, cell = best // (gh * gw), best % (gh * gw)
    gy, gx = cell // gw, cell % gw
    boxes = boxes_at(p, anchor, gy, gx, head).clamp(0, 1)
    return boxes, objectness.gather(1, best[:, None])[:, 0]
