"""Building blocks shared by the model zoo: the `Reorg` layer and the conv + BN + ReLU triple.

Every zoo model is assembled from a small set of modules the quantizer knows how to lower:
Conv2d, BatchNorm1d/2d, ReLU / ReLU6, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Linear,
Dropout, `Reorg`, `torch.cat` and the residual `+`. `Reorg` is the only one defined here.
"""

from torch import Tensor, nn

from bitsmith.errors import ConfigError


class Reorg(nn.Module):
    """Space-to-depth with stride `s`: [N, C, H, W] -> [N, C*s*s, H/s, W/s].

    Channel order (identical to `torch.nn.functional.pixel_unshuffle`):

        out[n, c*s*s + i*s + j, y, x] = in[n, c, y*s + i, x*s + j]      for 0 <= i, j < s

    i.e. each input channel expands into s*s consecutive output channels, row offset `i`
    major, column offset `j` minor. H and W must be multiples of `s`; the zoo's builders check
    that before a model is made.

    The layer only moves values, so it is exact on integers. It is written with reshape/permute
    (no functional call) and is an `nn.Module`: `torch.fx.symbolic_trace` traces *through*
    modules that are not in `torch.nn`, so a lowering pass that wants one `Reorg` node must use
    a tracer whose `is_leaf_module` also returns True for `isinstance(module, Reorg)`.
    Traced through, it still works (the sizes become traced values), just as several nodes.
    """

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"Reorg stride must be a positive integer, got {stride!r}")
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        # x.size(i), not tuple unpacking of x.shape: fx cannot iterate a traced value.
        n, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3)
        x = x.reshape(n, c, h // s, s, w // s, s)  # [n, c, y, i, x, j]
        x = x.permute(0, 1, 3, 5, 2, 4)  # [n, c, i, j, y, x]
        return x.reshape(n, c * s * s, h // s, w // s)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def conv_bn_relu(
    name: str, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1
) -> list[tuple[str, nn.Module]]:
    """Named layers `name`, `name_bn`, `name_relu`: a bias-free conv ('same' padding), BN, ReLU.

    The conv has no bias because the BN that follows absorbs it when folded.
    """
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        groups=groups,
        bias=False,
    )
    return [
        (name, conv),
        (f"{name}_bn", nn.BatchNorm2d(out_channels)),
        (f"{name}_relu", nn.ReLU(inplace=False)),
    ]
