"""What the training loops (float and QAT) need from a task: a loss and a per-batch score.

The classification objective lives with the loops (bitsmith.train); this is the detection one:
the loss of `loss.py` and, as the score, the sum of the decoded boxes' IoU with the targets.
"""

from __future__ import annotations

import torch

from bitsmith.detection.boxes import box_iou
from bitsmith.detection.decode import decode
from bitsmith.detection.heads import AnchorHead, detection_head
from bitsmith.detection.loss import detection_loss


class DetectionObjective:
    """Loss and score of a single-object detector with head `head` (or the head of zoo model `model`)."""

    metric = "iou"  # records carry train_iou / test_iou; the run's figure is mean_iou
    percent = False

    def __init__(self, head: AnchorHead | str) -> None:
        self.head = detection_head(head) if isinstance(head, str) else head

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return detection_loss(out, target, self.head)

    def hits(self, out: torch.Tensor, target: torch.Tensor) -> float:
        """Sum over the batch of the IoU of the decoded box with the target."""
        with torch.no_grad():
            boxes, _ = decode(out.detach(), self.head)
            return float(box_iou(boxes, target).sum())
