"""MobileNetV2-tiny: a small MobileNetV2 (Sandler et al. 2018) for 28 x 28 and 32 x 32 images."""

from torch import Tensor, nn

#: (expansion t, output channels c, stride s) of each inverted residual block. A block adds its input
#: to its output when it keeps the stride (1) and the channels: blocks 1, 3 and 5.
_BLOCKS = ((1, 16, 1), (4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1), (4, 48, 1))
_STEM = 16
_HEAD = 128


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
             relu6: bool = True) -> nn.Sequential:
    """conv (no bias: BN follows) + BN (+ ReLU6), 'same' zero padding for odd kernels."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if relu6:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) → 3x3 depthwise (ReLU6) → 1x1 project (linear: no activation), and the
    input added when shape and channels are kept. With t = 1 there is no expand conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = _conv_bn(in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_channels, 1, relu6=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out


class MobileNetV2Tiny(nn.Module):
    """stem conv 3x3 → 16 (ReLU6), six inverted residual blocks (16, 24, 24, 32, 32, 48 channels;
    blocks 2 and 4 halve H and W), 1x1 conv → 128 (ReLU6), global average pool, Linear 128 →
    num_classes. 46 k parameters; 4.7 M multiply-adds for a 1 x 28 x 28 image (6.4 M for 3 x 32 x 32).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.stem = _conv_bn(input_shape[0], _STEM, 3)
        blocks, channels = [], _STEM
        for expansion, width, stride in _BLOCKS:
            blocks.append(InvertedResidual(channels, width, stride, expansion))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(channels, _HEAD, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(_HEAD, num_classes)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))
