"""Network-in-Network for CIFAR-10/100, as quantized by the CLIP-Q accelerator project."""

from collections import OrderedDict

from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.models.layers import conv_bn_relu


class NIN(nn.Sequential):
    """Nine convs (3x3 and 1x1), BN + ReLU after all but the last, global average pooling.

    3->96 3x3, 96->160 1x1, 160->192 1x1, maxpool 2 | 192->96 3x3, 96->192 1x1, 192->192 1x1,
    avgpool 2 | 192->384 3x3, 384->192 1x1, 192->num_classes 1x1 (with bias, no BN/ReLU),
    avgpool over the whole H/4 x W/4 map (8 x 8 for 32 x 32 inputs), flatten.
    `dropout` > 0 adds Dropout after the two inner pools (the original NIN recipe); 0 adds none.
    """

    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], dropout: float
    ) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"nin: dropout must be in [0, 1), got {dropout}")
        in_channels, height, width = input_shape
        layers: list[tuple[str, nn.Module]] = [
            *conv_bn_relu("conv1", in_channels, 96, 3),
            *conv_bn_relu("conv2", 96, 160, 1),
            *conv_bn_relu("conv3", 160, 192, 1),
            ("pool1", nn.MaxPool2d(2)),
        ]
        if dropout > 0:
            layers.append(("drop1", nn.Dropout(dropout)))
        layers += [
            *conv_bn_relu("conv4", 192, 96, 3),
            *conv_bn_relu("conv5", 96, 192, 1),
            *conv_bn_relu("conv6", 192, 192, 1),
            ("pool2", nn.AvgPool2d(2)),
        ]
        if dropout > 0:
            layers.append(("drop2", nn.Dropout(dropout)))
        layers += [
            *conv_bn_relu("conv7", 192, 384, 3),
            *conv_bn_relu("conv8", 384, 192, 1),
            ("conv9", nn.Conv2d(192, num_classes, 1, bias=True)),
            # A fixed kernel over the whole map, not adaptive pooling: the hardware needs its size.
            ("pool3", nn.AvgPool2d((height // 4, width // 4))),
            ("flatten", nn.Flatten()),
        ]
        super().__init__(OrderedDict(layers))
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
