"""QuantConfig: every choice that decides what integers a quantized model computes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bitsmith.errors import ConfigError

OBSERVERS = ("minmax",)
WEIGHT_BITS = range(2, 17)
ACT_BITS = range(2, 17)
MULTIPLIER_BITS = range(2, 33)


@dataclass(frozen=True)
class QuantConfig:
    """Post-training quantization settings.

    weight_bits / act_bits: integer widths (2–16). Weights are symmetric (zero point 0);
    `per_channel` gives each output channel its own weight scale. Activations are unsigned
    after a ReLU (or whenever calibration saw no negative value), symmetric signed otherwise.
    observer: how activation ranges are calibrated. multiplier_bits: width of the requantization
    multiplier m in M ≈ m·2^-s. acc_bits: declared accumulator width, checked at run time.
    requantize_output: requantize the last layer's accumulator to act_bits codes; by default the
    graph returns the int32 accumulator of the last layer (no rounding of the logits).
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = False
    observer: str = "minmax"
    multiplier_bits: int = 32
    acc_bits: int = 32
    requantize_output: bool = False

    def __post_init__(self) -> None:
        _check_in("weight_bits", self.weight_bits, WEIGHT_BITS)
        _check_in("act_bits", self.act_bits, ACT_BITS)
        _check_in("multiplier_bits", self.multiplier_bits, MULTIPLIER_BITS)
        _check_in("acc_bits", self.acc_bits, range(8, 33))
        if self.observer not in OBSERVERS:
            raise ConfigError(f"unknown observer {self.observer!r}; allowed: {', '.join(OBSERVERS)}")

    def to_json(self) -> dict:
        return asdict(self)


def _check_in(name: str, value: int, allowed: range) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed.start} to {allowed.stop - 1}")
