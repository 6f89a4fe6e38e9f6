"""Single-object detection on the DAC-SDC models: YOLO-style grid heads, their loss, decoding to one
box per image, and mean IoU (the contest's score). Floor 1: torch and bitsmith.errors only, so the
float, fake-quant and integer paths all decode with the same functions (docs/detection.md)."""

from bitsmith.detection.boxes import box_iou, mean_iou
from bitsmith.detection.decode import decode
from bitsmith.detection.heads import HEADS, AnchorHead, detection_head
from bitsmith.detection.loss import detection_loss
from bitsmith.detection.objective import DetectionObjective

__all__ = ["AnchorHead", "HEADS", "detection_head", "decode", "detection_loss", "box_iou", "mean_iou",
           "DetectionObjective"]
