"""ResNet-20 for CIFAR-sized images (He et al. 2016, §4.2), with projection shortcuts (option B)."""

from collections import OrderedDict

from torch import Tensor, nn

_STAGE_WIDTHS = (16, 32, 64)
_BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs without bias (BN follows).

    `shortcut` is None (the identity) when shape and channels are kept, else a strided 1x1 conv + BN
    (option B). The one ReLU module is called twice, as torchvision does: it holds no state.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)),
                ("bn", nn.BatchNorm2d(out_channels)),
            ]))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)


class ResNet20(nn.Module):
    """conv 3x3 → 16, three stages of three BasicBlocks (16, 32, 64 channels; the first block of
    stages 2 and 3 halves H and W), global average pool, Linear 64 → num_classes.

    0.27 M parameters; 41 M multiply-adds for a 3 x 32 x 32 image (31 M for 1 x 28 x 28). Any H, W
    that are multiples of 4 work: the global pool is AdaptiveAvgPool2d(1), which the quantizer turns
    into an AvgPool2d over the whole H/4 x W/4 map.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        in_channels = input_shape[0]
        self.conv1 = nn.Conv2d(in_channels, _STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGE_WIDTHS[0])
        self.relu = nn.ReLU()
        stages = []
        channels = _STAGE_WIDTHS[0]
        for index, width in enumerate(_STAGE_WIDTHS):
            blocks = []
            for block in range(_BLOCKS_PER_STAGE):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))
