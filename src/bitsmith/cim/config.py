"""The crossbar's description: cell width, ADC, mapping, sub-array height, which layers stay
digital, and the device non-idealities. Validated on construction (ConfigError naming the field);
what depends on a layer (cell bits dividing its weight bits) is checked when the graph is mapped."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bitsmith.errors import ConfigError

CELL_BITS = (1, 2, 4)
ADC_BITS = (1, 16)
ADC_RANGES = ("per-call", "full-scale", "calibrated")
ADC_ROUNDINGS = ("round", "floor")
DUMMY_MODES = ("subtract", "separate")
MAPPINGS = ("offset", "differential")
#: digital="seed": the first Conv2d and every Linear stay digital, as the seed tool does.
DIGITAL_PRESETS = ("seed", "none")


@dataclass(frozen=True)
class CIMConfig:
    """One crossbar setting (docs/cim.md).

    cell_bits: bits per cell (1, 2, 4). adc_bits: 1..16, or None = an ideal ADC that resolves every
    level. adc_range: "per-call" (min/max of each converted tensor, the seed's oracle) or
    "full-scale" (the column's physical range) or "calibrated" (static ranges measured on training
    images by `calibrate`). adc_rounding:
    "round" or "floor". dummy: "subtract" converts (column − reference) once (the seed),
    "separate" converts both and subtracts the codes (NeuroSim). mapping: "offset" (unsigned
    W + 2^(n−1) and a reference column holding the offset) or "differential" (positive and negative
    arrays). subarray_rows: sub-array height (and width). digital: "seed", "none" (every Conv2d /
    Linear on crossbars) or a tuple of node names kept digital.
    Devices: on_off_ratio (None = infinite), variation σ (multiplicative Gaussian, device to
    device), stuck_at_0 / stuck_at_1 rates, drift_nu with drift_time = t/t0, read_noise σ
    (multiplicative, every read), seed for all of them."""

    cell_bits: int = 1
    adc_bits: int | None = None
    adc_range: str = "per-call"
    adc_rounding: str = "round"
    dummy: str = "subtract"
    mapping: str = "offset"
    subarray_rows: int = 128
    digital: str | tuple[str, ...] = "seed"
    on_off_ratio: float | None = None
    variation: float = 0.0
    stuck_at_0: float = 0.0
    stuck_at_1: float = 0.0
    drift_nu: float = 0.0
    drift_time: float = 1.0
    read_noise: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.digital, list):
            object.__setattr__(self, "digital", tuple(self.digital))
        for problem in _problems(self):
            raise ConfigError(f"CIMConfig: {problem}")

    @property
    def ideal_devices(self) -> bool:
        """No device non-ideality: every cell holds exactly its level."""
        return (self.on_off_ratio is None and self.variation == 0 and self.stuck_at_0 == 0
                and self.stuck_at_1 == 0 and (self.drift_nu == 0 or self.drift_time == 1)
                and self.read_noise == 0)

    @property
    def exact(self) -> bool:
        """Ideal devices and an ideal ADC: the crossbar equals the integer engine (docs/cim.md)."""
        return self.ideal_devices and self.adc_bits is None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _problems(c: CIMConfig):
    if c.cell_bits not in CELL_BITS or not _is_int(c.cell_bits):
        yield f"cell_bits must be one of {CELL_BITS}, got {c.cell_bits!r}"
    if c.adc_bits is not None and (not _is_int(c.adc_bits) or not ADC_BITS[0] <= c.adc_bits <= ADC_BITS[1]):
        yield f"adc_bits must be an integer in {ADC_BITS[0]}..{ADC_BITS[1]} or None (ideal), got {c.adc_bits!r}"
    if c.adc_range not in ADC_RANGES:
        yield f"adc_range must be one of {ADC_RANGES}, got {c.adc_range!r}"
    if c.adc_rounding not in ADC_ROUNDINGS:
        yield f"adc_rounding must be one of {ADC_ROUNDINGS}, got {c.adc_rounding!r}"
    if c.dummy not in DUMMY_MODES:
        yield f"dummy must be one of {DUMMY_MODES}, got {c.dummy!r}"
    if c.mapping not in MAPPINGS:
        yield f"mapping must be one of {MAPPINGS}, got {c.mapping!r}"
    if not _is_int(c.subarray_rows) or not 1 <= c.subarray_rows <= 4096:
        yield f"subarray_rows must be an integer in 1..4096, got {c.subarray_rows!r}"
    if isinstance(c.digital, str):
        if c.digital not in DIGITAL_PRESETS:
            yield f"digital must be one of {DIGITAL_PRESETS} or a tuple of node names, got {c.digital!r}"
    elif not isinstance(c.digital, tuple) or not all(isinstance(n, str) for n in c.digital):
        yield f"digital must be one of {DIGITAL_PRESETS} or a tuple of node names, got {c.digital!r}"
    if c.on_off_ratio is not None and (not _is_real(c.on_off_ratio) or c.on_off_ratio <= 1):
        yield f"on_off_ratio must be a number > 1 or None (infinite), got {c.on_off_ratio!r}"
    for name in ("variation", "drift_nu", "read_noise"):
        v = getattr(c, name)
        if not _is_real(v) or v < 0:
            yield f"{name} must be a finite number >= 0, got {v!r}"
    for name in ("stuck_at_0", "stuck_at_1"):
        v = getattr(c, name)
        if not _is_real(v) or not 0 <= v < 1:
            yield f"{name} must be a rate in [0, 1), got {v!r}"
    if _is_real(c.stuck_at_0) and _is_real(c.stuck_at_1) and c.stuck_at_0 + c.stuck_at_1 >= 1:
        yield f"stuck_at_0 + stuck_at_1 must be below 1, got {c.stuck_at_0 + c.stuck_at_1!r}"
    if not _is_real(c.drift_time) or c.drift_time <= 0:
        yield f"drift_time (t/t0) must be a finite number > 0, got {c.drift_time!r}"
    if not _is_int(c.seed):
        yield f"seed must be an integer, got {c.seed!r}"
