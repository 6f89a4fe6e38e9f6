"""The grid heads of the DAC-SDC detectors: anchors and the channel layout of the last conv.

The head conv's output [B, anchors * values, gh, gw] is read anchor-major, as the original designs
lay it out (`view(B, anchors, values, gh, gw)`): per anchor tx, ty, tw, th, objectness (and, for
UltraNet, one class score, unused with a single class).

Anchors are (width, height) in pixels at the contest input 160 x 320 and are kept as fractions of
the image, so they scale with `--input-size`:
- UltraNet (BJTU, DAC-SDC 2020): six anchors, all 20 x 20 px, 6 values each = 36 channels, stride 16
  (the YOLOLayer of the authors' training code).
- SkyNet (DAC-SDC 2019): two anchors of (1.494, 2.360) and (4.011, 5.761) grid cells at stride 8,
  i.e. 11.95 x 18.88 px and 32.09 x 46.09 px, 5 values each = 10 channels (its RegionLoss).
"""

from __future__ import annotations

from dataclasses import dataclass

from bitsmith.errors import ConfigError

CONTEST_HW = (160, 320)


@dataclass(frozen=True)
class AnchorHead:
    """A YOLO-style head: anchors (w, h) in pixels at 160 x 320, and values per anchor (>= 5)."""

    anchors: tuple[tuple[float, float], ...]
    values: int

    @property
    def channels(self) -> int:
        return len(self.anchors) * self.values

    def anchor_fractions(self) -> tuple[tuple[float, float], ...]:
        """Anchors as (width / image width, height / image height)."""
        h, w = CONTEST_HW
        return tuple((aw / w, ah / h) for aw, ah in self.anchors)


_SKYNET_STRIDE = 8
HEADS: dict[str, AnchorHead] = {
    "ultranet": AnchorHead(((20.0, 20.0),) * 6, 6),
    "ultranet_bypass": AnchorHead(((20.0, 20.0),) * 6, 6),
    "skynet": AnchorHead(((1.4940052559648322 * _SKYNET_STRIDE, 2.3598481287086823 * _SKYNET_STRIDE),
                          (4.0113013115312155 * _SKYNET_STRIDE, 5.760873975661669 * _SKYNET_STRIDE)), 5),
}


def detection_head(model: str) -> AnchorHead:
    """The head of zoo model `model`; ConfigError for a model without one."""
    head = HEADS.get(model)
    if head is None:
        raise ConfigError(f"{model} has no detection head; detection data sets train one of: {', '.join(HEADS)}")
    return head
