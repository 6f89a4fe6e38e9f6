"""SkyNet backbone (DeepBurning-MixQ variant, 160 x 320 input)."""

from collections import OrderedDict

from torch import nn

from bitsmith.models.layers import conv_bn_relu

_WIDTHS = (48, 96, 192, 384, 512, 96)
_POOL_AFTER = (1, 2, 3)  # blocks followed by a 2x2 max-pool


class SkyNet(nn.Sequential):
    """Six depthwise-separable blocks, channels 3-48-96-192-384-512-96, 1x1 head 96->classes.

    Block k: depthwise 3x3 conv (groups = in channels) + BN + ReLU (`dwk`), then pointwise 1x1
    conv + BN + ReLU (`pwk`); a 2x2 max-pool follows blocks 1, 2 and 3. The head conv has a bias
    and no BN/ReLU. Output: [N, num_classes, H/8, W/8], or [N, num_classes] with `classify=True`
    (whole-map avg-pool + flatten).

    This is the plain chain: the original SkyNet's reorg bypass (block 3 output concatenated
    before the last blocks) is not included.
    """

    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], classify: bool
    ) -> None:
        in_channels, height, width = input_shape
        layers: list[tuple[str, nn.Module]] = []
        for block, width_out in enumerate(_WIDTHS, start=1):
            layers += conv_bn_relu(f"dw{block}", in_channels, in_channels, 3, groups=in_channels)
            layers += conv_bn_relu(f"pw{block}", in_channels, width_out, 1)
            if block in _POOL_AFTER:
                layers.append((f"pool{block}", nn.MaxPool2d(2)))
            in_channels = width_out
        layers.append(("head", nn.Conv2d(in_channels, num_classes, 1, bias=True)))
        if classify:
            layers += [
                ("avgpool", nn.AvgPool2d((height // 8, width // 8))),
                ("flatten", nn.Flatten()),
            ]
        super().__init__(OrderedDict(layers))
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.classify = classify
