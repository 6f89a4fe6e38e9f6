"""The model registry: names, defaults, allowed options and input-shape rules, and `build_model`.

Each entry states declaratively which input shapes its model accepts (a fixed H x W, or H and W
multiples of the total pooling factor), so a bad shape fails here with a ConfigError that says
what is allowed, instead of deep inside a forward pass.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.models.lenet import LeNet5
from bitsmith.models.mobilenet import MobileNetV2Tiny
from bitsmith.models.nin import NIN
from bitsmith.models.resnet import ResNet20
from bitsmith.models.skynet import SkyNet
from bitsmith.models.ultranet import UltraNet, UltraNetBypass
from bitsmith.models.vgg import VGG7, VGGTiny


@dataclass(frozen=True)
class ModelEntry:
    """How to build one zoo model and what it accepts.

    `constructor(num_classes, input_shape, **options)`; `options` maps each keyword option to
    its default (the default's type is the type the option must have). Input H x W must equal
    `fixed_hw` when set, else both be multiples of `hw_multiple`.
    """

    constructor: Callable[..., nn.Module]
    num_classes: int
    input_shape: tuple[int, int, int]
    options: dict[str, bool | float]
    hw_multiple: int = 1
    fixed_hw: tuple[int, int] | None = None


_DETECTOR_SHAPE = (3, 160, 320)
_DETECTOR_HEAD = 36  # DAC-SDC UltraNet/SkyNet head channels

_REGISTRY: dict[str, ModelEntry] = {
    "lenet5": ModelEntry(LeNet5, 10, (1, 32, 32), {"bias": False}, fixed_hw=(32, 32)),
    "nin": ModelEntry(NIN, 10, (3, 32, 32), {"dropout": 0.0}, hw_multiple=4),
    "vgg7": ModelEntry(VGG7, 10, (3, 32, 32), {"width": 1.0}, hw_multiple=8),
    "vgg_tiny": ModelEntry(VGGTiny, 10, (3, 32, 32), {"width": 1.0}, hw_multiple=8),
    "ultranet": ModelEntry(
        UltraNet, _DETECTOR_HEAD, _DETECTOR_SHAPE, {"classify": False}, hw_multiple=16
    ),
    "ultranet_bypass": ModelEntry(
        UltraNetBypass, _DETECTOR_HEAD, _DETECTOR_SHAPE, {"classify": False}, hw_multiple=16
    ),
    "skynet": ModelEntry(
        SkyNet, _DETECTOR_HEAD, _DETECTOR_SHAPE, {"classify": False}, hw_multiple=8
    ),
    # Residual models: two stride-2 stages, then a global average pool over H/4 x W/4.
    "resnet20": ModelEntry(ResNet20, 10, (3, 32, 32), {}, hw_multiple=4),
    "mobilenetv2_tiny": ModelEntry(MobileNetV2Tiny, 10, (3, 32, 32), {}, hw_multiple=4),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(
    name: str,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    **kwargs: bool | float,
) -> nn.Module:
    """Build a fresh (randomly initialised) zoo model.

    `num_classes` / `input_shape` (C, H, W) default to the model's own (see `MODEL_NAMES` and
    `bitsmith summary`); `kwargs` are the model's options (lenet5: `bias`; nin: `dropout`;
    ultranet, ultranet_bypass, skynet: `classify`). The model carries `input_shape`,
    `num_classes` and `spec`, a JSON-ready dict from which
    `build_model(spec["name"], spec["num_classes"], tuple(spec["input_shape"]), **spec["kwargs"])`
    rebuilds the same architecture (`kwargs` there lists every option, defaults included).
    Raises ConfigError for an unknown name, option, option type or an input shape it cannot take.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    classes = entry.num_classes if num_classes is None else _check_num_classes(name, num_classes)
    shape = entry.input_shape if input_shape is None else _check_input_shape(name, input_shape)
    _check_spatial(name, entry, shape)
    options = _resolve_options(name, entry, kwargs)

    model = entry.constructor(classes, shape, **options)
    model.num_classes = classes
    model.input_shape = shape
    model.spec = {
        "name": name,
        "num_classes": classes,
        "input_shape": list(shape),
        "kwargs": dict(options),
    }
    return model


def spatial_multiple(name: str) -> int:
    """What the input's H and W must be multiples of for model `name` (1: anything)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return entry.hw_multiple


def _check_num_classes(name: str, num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _check_input_shape(name: str, input_shape: object) -> tuple[int, int, int]:
    ok = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape)
    )
    if not ok:
        raise ConfigError(
            f"{name}: input_shape must be three positive integers (C, H, W), got {input_shape!r}"
        )
    return (input_shape[0], input_shape[1], input_shape[2])


def _check_spatial(name: str, entry: ModelEntry, shape: tuple[int, int, int]) -> None:
    _, height, width = shape
    if entry.fixed_hw is not None and (height, width) != entry.fixed_hw:
        fh, fw = entry.fixed_hw
        raise ConfigError(
            f"{name}: input H x W must be {fh} x {fw}, got {height} x {width} "
            f"(pad or resize the images to {fh} x {fw})"
        )
    m = entry.hw_multiple
    if height % m or width % m:
        raise ConfigError(
            f"{name}: input H and W must be multiples of {m} (its total pooling), "
            f"got {height} x {width}"
        )


def _resolve_options(
    name: str, entry: ModelEntry, kwargs: dict[str, object]
) -> dict[str, bool | float]:
    """Defaults overlaid with `kwargs`, each checked against its default's type."""
    unknown = sorted(set(kwargs) - set(entry.options))
    if unknown:
        allowed = (
            ", ".join(f"{k} (default {v!r})" for k, v in entry.options.items())
            if entry.options
            else "none"
        )
        raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
    options = dict(entry.options)
    for key, value in kwargs.items():
        default = entry.options[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: option {key} must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: option {key} must be a number, got {value!r}")
        else:
            value = float(value)
        options[key] = value
    return options
