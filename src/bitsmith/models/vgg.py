"""VGG-style CIFAR models: VGG7 (compute-in-memory study) and VGG-tiny (DeepBurning-MixQ)."""

from collections import OrderedDict

from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.models.layers import conv_bn_relu


def _vgg_features(in_channels: int, widths: tuple[int, ...]) -> list[tuple[str, nn.Module]]:
    """3x3 conv + BN + ReLU per width, a 2x2 max-pool after every second conv."""
    layers: list[tuple[str, nn.Module]] = []
    for index, width in enumerate(widths, start=1):
        layers += conv_bn_relu(f"conv{index}", in_channels, width, 3)
        if index % 2 == 0:
            layers.append((f"pool{index // 2}", nn.MaxPool2d(2)))
        in_channels = width
    return layers


def _check_width(model: str, width: object) -> None:
    if not (isinstance(width, (int, float)) and not isinstance(width, bool) and 0 < width <= 4):
        raise ConfigError(f"{model}: width must be a number in (0, 4], got {width!r}")


class VGG7(nn.Sequential):
    """128-128-M-256-256-M-512-512-M, flatten, FC 8192->1024 + BN1d + ReLU, FC 1024->classes.

    The FC input is 512 * H/8 * W/8 (8192 for 32 x 32 inputs). In the CIM study only the five
    inner convs run on crossbars; that choice belongs to the CIM simulator, not to the model.
    `width` scales every conv's channels and the hidden FC (rounded, at least 1): 0.25 gives
    32-32-M-64-64-M-128-128-M, FC 2048->256->classes, 1/16 of the MACs (small machines).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> None:
        _check_width("vgg7", width)
        in_channels, height, width_px = input_shape
        channels = tuple(max(1, round(c * width)) for c in (128, 128, 256, 256, 512, 512))
        hidden = max(1, round(1024 * width))
        features = _vgg_features(in_channels, channels)
        flat = channels[-1] * (height // 8) * (width_px // 8)
        super().__init__(
            OrderedDict(
                [
                    *features,
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(flat, hidden, bias=False)),  # BN1d follows: no bias
                    ("fc1_bn", nn.BatchNorm1d(hidden)),
                    ("fc1_relu", nn.ReLU(inplace=False)),
                    ("fc2", nn.Linear(hidden, num_classes, bias=True)),
                ]
            )
        )
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)


class VGGTiny(nn.Sequential):
    """64-64-M-128-128-M-256-256-M, flatten, FC 4096->classes (FC input 256 * H/8 * W/8).

    `width` scales every conv's channels (rounded, at least 1): 0.25 gives 16-16-M-32-32-M-64-64-M,
    1/16 of the MACs, for benchmarks on small machines.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: float = 1.0) -> None:
        _check_width("vgg_tiny", width)
        in_channels, height, width_px = input_shape
        channels = tuple(max(1, round(c * width)) for c in (64, 64, 128, 128, 256, 256))
        features = _vgg_features(in_channels, channels)
        flat = channels[-1] * (height // 8) * (width_px // 8)
        super().__init__(
            OrderedDict(
                [
                    *features,
                    ("flatten", nn.Flatten()),
                    ("fc", nn.Linear(flat, num_classes, bias=True)),
                ]
            )
        )
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
