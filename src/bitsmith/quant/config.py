"""QuantConfig: every choice that decides what integers a quantized model computes."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bitsmith.errors import ConfigError
from bitsmith.integer.arithmetic import MULTIPLIER_BITS as IR_MULTIPLIER_BITS

#: Activation observers (how a calibration range is chosen); see bitsmith.quant.observers.
OBSERVERS = ("minmax", "sigma", "percentile", "mse", "kl")
#: Weight observers: symmetric clipping thresholds of |W|, per tensor or per output channel.
WEIGHT_OBSERVERS = ("minmax", "sigma", "percentile", "mse")
#: float: scales as observed; pot: every scale rounded up to a power of two (requantization is a
#: pure shift); qformat: scales fixed by Q-formats such as "Q3.5" (unset sides behave as pot).
SCALE_MODES = ("float", "pot", "qformat")
WEIGHT_BITS = range(2, 17)
ACT_BITS = range(2, 17)
MULTIPLIER_BITS = range(IR_MULTIPLIER_BITS[0], IR_MULTIPLIER_BITS[1] + 1)  # what the IR can declare
#: Settings a per-layer override may change (QuantConfig.layers).
LAYER_KEYS = ("weight_bits", "act_bits", "per_channel", "observer", "weight_observer", "act_symmetric")
#: Settings that concern a layer's weights (only Conv2d / Linear have any).
WEIGHT_KEYS = ("weight_bits", "per_channel", "weight_observer")

_QFORMAT = re.compile(r"^Q(\d+)\.(\d+)$")


@dataclass(frozen=True)
class QFormat:
    """Signed fixed point Qm.n: m sign-and-integer bits, n fraction bits (bits = m + n).

    Q3.5 is an 8-bit signed code with step 2^-5, i.e. values in [−4, 3.96875].
    """

    int_bits: int
    frac_bits: int

    @property
    def bits(self) -> int:
        return self.int_bits + self.frac_bits

    @property
    def scale(self) -> float:
        return 2.0 ** -self.frac_bits

    def __str__(self) -> str:
        return f"Q{self.int_bits}.{self.frac_bits}"


def parse_qformat(text: str, what: str = "Q-format") -> QFormat:
    """Parse "Qm.n" (m ≥ 1 counts the sign bit; 2 ≤ m + n ≤ 16)."""
    match = _QFORMAT.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{what}={text!r} is not a Q-format; allowed: 'Qm.n' with m sign+integer bits and "
                          "n fraction bits, e.g. 'Q3.5' (8 bits, step 2^-5)")
    q = QFormat(int(match.group(1)), int(match.group(2)))
    if q.int_bits < 1 or q.bits not in WEIGHT_BITS:
        raise ConfigError(f"{what}={text!r}: m ≥ 1 (the sign bit) and m + n bits; allowed: 2 to 16 bits in total")
    return q


@dataclass(frozen=True)
class QuantConfig:
    """Post-training quantization settings.

    weight_bits / act_bits: integer widths (2–16). Weights are symmetric (zero point 0);
    `per_channel` gives each output channel its own weight scale, `weight_observer` picks the
    clipping threshold of |W| (WEIGHT_OBSERVERS). Activations: `observer` picks each calibrated
    range (OBSERVERS). With `act_symmetric` they are unsigned after a ReLU (or whenever the range
    has no negative part) and symmetric signed otherwise; `act_symmetric=False` makes every
    activation unsigned with a zero point (range widened to include 0).
    scale_mode: "float", "pot" (scales rounded up to powers of two) or "qformat" (scales fixed by
    `weight_qformat` / `act_qformat`, e.g. "Q3.5"; a side left None uses power-of-two scales).
    layers: per-layer overrides keyed by the float model's module name (e.g. {"conv1":
    {"weight_bits": 8}}; "input" addresses the input quantizer), allowed keys LAYER_KEYS.
    multiplier_bits: width of the requantization multiplier m in M ≈ m·2^-s. acc_bits: declared
    accumulator width, checked at run time. requantize_output: requantize the last layer's
    accumulator to act_bits codes; by default the graph returns the int32 accumulator of the last
    layer (no rounding of the logits).
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = False
    observer: str = "minmax"
    multiplier_bits: int = 32
    acc_bits: int = 32
    requantize_output: bool = False
    act_symmetric: bool = True
    weight_observer: str = "minmax"
    scale_mode: str = "float"
    weight_qformat: str | None = None
    act_qformat: str | None = None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_in("weight_bits", self.weight_bits, WEIGHT_BITS)
        _check_in("act_bits", self.act_bits, ACT_BITS)
        _check_in("multiplier_bits", self.multiplier_bits, MULTIPLIER_BITS)
        _check_in("acc_bits", self.acc_bits, range(8, 33))
        _check_choice("observer", self.observer, OBSERVERS)
        _check_choice("weight_observer", self.weight_observer, WEIGHT_OBSERVERS)
        _check_choice("scale_mode", self.scale_mode, SCALE_MODES)
        for name in ("per_channel", "requantize_output", "act_symmetric"):
            _check_bool(name, getattr(self, name))
        self._check_qformats()
        if not isinstance(self.layers, dict):
            raise ConfigError(f"layers={self.layers!r} must be a dict of layer name → settings; "
                              f"allowed settings: {', '.join(LAYER_KEYS)}")
        # A private copy keeps the frozen config immune to later edits of the caller's dicts.
        object.__setattr__(self, "layers", {name: self._check_layer(name, o) for name, o in self.layers.items()})

    def _check_qformats(self) -> None:
        given = {k: getattr(self, k) for k in ("weight_qformat", "act_qformat") if getattr(self, k) is not None}
        if given and self.scale_mode != "qformat":
            raise ConfigError(f"{', '.join(given)} needs scale_mode='qformat' (got {self.scale_mode!r}); "
                              f"allowed scale modes: {', '.join(SCALE_MODES)}")
        if self.scale_mode == "qformat" and not given:
            raise ConfigError("scale_mode='qformat' needs weight_qformat and/or act_qformat, e.g. 'Q3.5'; "
                              "allowed: 'Qm.n' strings")
        for key, bits_key in (("weight_qformat", "weight_bits"), ("act_qformat", "act_bits")):
            if key in given:
                q, bits = parse_qformat(given[key], key), getattr(self, bits_key)
                if q.bits != bits:
                    raise ConfigError(f"{key}={given[key]!r} is {q.bits} bits but {bits_key}={bits}; "
                                      f"allowed: a Q-format of exactly {bits_key} bits")
        if self.act_qformat is not None and not self.act_symmetric:
            raise ConfigError("act_qformat fixes signed codes with zero point 0, so act_symmetric must be True; "
                              "allowed: act_symmetric=True with act_qformat")

    def _check_layer(self, name: str, override: Any) -> dict[str, Any]:
        where = f"layers[{name!r}]"
        if not isinstance(name, str) or not isinstance(override, dict):
            raise ConfigError(f"{where}: each override is a dict keyed by setting; allowed: {', '.join(LAYER_KEYS)}")
        for key, value in override.items():
            if key not in LAYER_KEYS:
                raise ConfigError(f"{where}: unknown setting {key!r}; allowed: {', '.join(LAYER_KEYS)}")
            if key in ("weight_bits", "act_bits"):
                _check_in(f"{where}.{key}", value, WEIGHT_BITS)
            elif key in ("per_channel", "act_symmetric"):
                _check_bool(f"{where}.{key}", value)
            elif key == "observer":
                _check_choice(f"{where}.observer", value, OBSERVERS)
            elif key == "weight_observer":
                _check_choice(f"{where}.weight_observer", value, WEIGHT_OBSERVERS)
        for key, bits_key in (("weight_qformat", "weight_bits"), ("act_qformat", "act_bits")):
            q = getattr(self, key)
            if q is not None and bits_key in override and override[bits_key] != parse_qformat(q).bits:
                raise ConfigError(f"{where}.{bits_key}={override[bits_key]} conflicts with {key}={q!r}; "
                                  f"allowed: {parse_qformat(q).bits} bits")
        if self.act_qformat is not None and override.get("act_symmetric") is False:
            raise ConfigError(f"{where}.act_symmetric=False conflicts with act_qformat; allowed: True")
        return dict(override)

    def for_layer(self, name: str | None) -> dict[str, Any]:
        """The effective LAYER_KEYS settings of one layer: the global ones, then its override
        (None: the global ones)."""
        override = self.layers.get(name, {}) if name is not None else {}
        return {**{k: getattr(self, k) for k in LAYER_KEYS}, **override}

    @property
    def weight_format(self) -> QFormat | None:
        return parse_qformat(self.weight_qformat) if self.weight_qformat is not None else None

    @property
    def act_format(self) -> QFormat | None:
        return parse_qformat(self.act_qformat) if self.act_qformat is not None else None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> "QuantConfig":
        """The inverse of to_json(); unknown keys are an error (they would be silently ignored)."""
        if not isinstance(doc, dict):
            raise ConfigError(f"a quantization config must be a JSON object, got {type(doc).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(doc) - set(names))
        if unknown:
            raise ConfigError(f"unknown quantization setting(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        return cls(**doc)


def _check_in(name: str, value: int, allowed: range) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed.start} to {allowed.stop - 1}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: True or False")
