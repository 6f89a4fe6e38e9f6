"""UltraNet and UltraNet-Bypass (DeepBurning-MixQ detection backbones, 160 x 320 input).

Both end in a 1x1 head conv whose channels are `num_classes` (36 for the DAC-SDC detector:
the detector's box/anchor encoding is outside this module). With `classify=True` a whole-map
average pool and a flatten turn the head output into [N, num_classes] logits, so the same
backbone can be trained on a classification dataset (e.g. 3 x 32 x 32 inputs).
"""

from collections import OrderedDict

import torch
from torch import Tensor, nn

from bitsmith.models.layers import Reorg, conv_bn_relu


def _stem(in_channels: int) -> list[tuple[str, nn.Module]]:
    """conv1-conv4 with max-pools after conv1-conv3: 64 channels at H/8 x W/8."""
    return [
        *conv_bn_relu("conv1", in_channels, 16, 3),
        ("pool1", nn.MaxPool2d(2)),
        *conv_bn_relu("conv2", 16, 32, 3),
        ("pool2", nn.MaxPool2d(2)),
        *conv_bn_relu("conv3", 32, 64, 3),
        ("pool3", nn.MaxPool2d(2)),
        *conv_bn_relu("conv4", 64, 64, 3),
    ]


def _body() -> list[tuple[str, nn.Module]]:
    """pool4 then conv5-conv7: 64 channels at H/16 x W/16."""
    return [
        ("pool4", nn.MaxPool2d(2)),
        *conv_bn_relu("conv5", 64, 64, 3),
        *conv_bn_relu("conv6", 64, 64, 3),
        *conv_bn_relu("conv7", 64, 64, 3),
    ]


def _tail(
    in_channels: int, num_classes: int, map_hw: tuple[int, int], classify: bool
) -> list[tuple[str, nn.Module]]:
    """The 1x1 head conv (with bias) and, when classifying, a whole-map avg-pool + flatten."""
    layers: list[tuple[str, nn.Module]] = [
        ("head", nn.Conv2d(in_channels, num_classes, 1, bias=True))
    ]
    if classify:
        layers += [("avgpool", nn.AvgPool2d(map_hw)), ("flatten", nn.Flatten())]
    return layers


class UltraNet(nn.Sequential):
    """3->16-M-32-M-64-M-64-M-64-64-64-64 (3x3 conv + BN + ReLU), 1x1 head 64->num_classes: nine
    weight layers, as the BJTU design (and its bit strings, e.g. 444444444) has them.

    Output: [N, num_classes, H/16, W/16], or [N, num_classes] with `classify=True`.
    """

    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], classify: bool
    ) -> None:
        in_channels, height, width = input_shape
        map_hw = (height // 16, width // 16)
        super().__init__(
            OrderedDict([*_stem(in_channels), *_body(), *conv_bn_relu("conv8", 64, 64, 3),
                         *_tail(64, num_classes, map_hw, classify)])
        )
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.classify = classify


class UltraNetBypass(nn.Module):
    """UltraNet with a bypass: conv4's output (64 ch, H/8) is reorganised and concatenated.

    stem (conv1-conv4) -> bypass [64, H/8, W/8]
    body (pool4, conv5-conv7) -> main [64, H/16, W/16]
    cat([Reorg(2)(bypass) = 256 ch, main = 64 ch], dim=1) = 320 ch at H/16
    -> fuse: conv 3x3 320->64 + BN + ReLU -> 1x1 head 64->num_classes (+ classify tail).
    """

    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], classify: bool
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        map_hw = (height // 16, width // 16)
        self.stem = nn.Sequential(OrderedDict(_stem(in_channels)))
        self.body = nn.Sequential(OrderedDict(_body()))
        self.reorg = Reorg(2)
        self.fuse = nn.Sequential(OrderedDict(conv_bn_relu("conv8", 64 * 4 + 64, 64, 3)))
        self.tail = nn.Sequential(OrderedDict(_tail(64, num_classes, map_hw, classify)))
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.classify = classify

    def forward(self, x: Tensor) -> Tensor:
        bypass = self.stem(x)
        main = self.body(bypass)
        x = torch.cat([self.reorg(bypass), main], dim=1)
        return self.tail(self.fuse(x))
