"""Cost estimates of a graph on crossbars: per mapped layer and in total, the crossbars, ADC
conversions, cycles, latency, energy and area per image, from a small per-component model whose
defaults are NeuroSim V1.4's 22 nm RRAM figures (docs/cim-cost.md has every formula and source).

These are ESTIMATES: sub-arrays, their ADCs and shift-add units only — no buffers, interconnect,
digital layers, pipelining or leakage. Every report says so in its `label`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from bitsmith.cim.config import ADC_BITS, CIMConfig
from bitsmith.cim.mapping import MappedLayer
from bitsmith.cim.simulate import input_feed
from bitsmith.errors import ConfigError, DataError, GraphError
from bitsmith.integer.graph import IntegerGraph

#: Where the defaults come from (docs/cim-cost.md says which figure is which).
SOURCE = ("NeuroSim V1.4 (github.com/neurosim/DNN_NeuroSim_V1.4, Inference_pytorch/NeuroSIM: Param.cpp, "
          "SarADC.cpp, formula.cpp, constant.h, Technology.cpp, Adder.cpp, DFF.cpp), 22 nm RRAM 1T1R, SAR ADC; "
          "shift-add energy: an assumption (docs/cim-cost.md)")
LABEL = ("estimate (NeuroSim 22 nm RRAM figures, SAR ADC; sub-arrays, ADCs and shift-add only: no buffers, "
         "interconnect, digital layers, pipelining or leakage)")
#: Fraction of input bits equal to 1 when no measured activity is given (uniform random codes).
DEFAULT_ACTIVITY = 0.5


@dataclass(frozen=True)
class CostModel:
    """Per-component figures (docs/cim-cost.md: formula and source of each). Validated on
    construction (ConfigError naming the field). Units are in the field names."""

    feature_size_nm: float = 22.0          # F; Param.cpp technode 22
    columns_per_adc: int = 8               # Param.cpp numColMuxed
    clock_ghz: float = 1.0                 # Param.cpp clkFreq
    read_pulse_ns: float = 10.0            # Param.cpp readPulseWidth
    read_voltage_v: float = 0.55           # Param.cpp readVoltage at 22 nm
    r_on_ohm: float = 100e3                # Param.cpp resistanceOn
    r_off_ohm: float = 1.7e6               # Param.cpp resistanceOff (on/off 17)
    cell_area_f2: float = 48.0             # 1T1R cell 4F × 12F (Param.cpp heightInFeatureSize1T1R / width…)
    # SAR ADC power P = (a·b + c) µW + k·exp(−e·log10 R_col'), R_col' = R_col·0.5 V / Vread (SarADC.cpp, 22 nm LP)
    adc_power_per_bit_uw: float = 0.538
    adc_power_base_uw: float = 4.3753
    adc_column_power_coefficient: float = 0.072341
    adc_column_power_exponent: float = 2.303
    adc_characterised_voltage_v: float = 0.5
    #: the column resistance the ADC sees: a fixed value (one ON cell, which gives REFERENCE.md's
    #: 27/36/47/58/85 fJ; the cells' read energy V²·G·t is then counted apart) or None = NeuroSim's
    #: parallel read, 1 / Σ G of the driven cells, whose term then stands for the cells' energy.
    adc_column_resistance_ohm: float | None = 100e3
    adc_latency_ns_per_bit: float = 1.0    # latency (b + 1) ns per conversion (SarADC.cpp)
    adc_latency_base_ns: float = 1.0
    temperature_k: float = 300.0           # power × (1 + 1.3e−3·(T − 300)) (SarADC.cpp; Param.cpp temp)
    #: area of one minimum NMOS or PMOS gate region, 7.6F × 28F (formula.cpp CalculateGateArea, bulk 22 nm);
    #: a SAR ADC is 269 + 109·(b−1) NMOS and 209 + 73·(b−1) PMOS of it (SarADC.cpp CalculateUnitArea)
    adc_gate_area_f2: float = 212.8
    #: one accumulator bit of a shift-add unit: a full adder of 9 NAND2 (11.4F × 28F each, Adder.cpp)
    #: plus one DFF of 12 minimum inverters (DFF.cpp): 9·319.2 + 12·212.8 F²
    shift_add_area_f2_per_bit: float = 5426.4
    #: energy of one shift-add (one ADC code accumulated): NOT from NeuroSim (its adder / DFF energies
    #: need its capacitance model) — an assumption, about half of a 32-bit add at 45 nm (0.1 pJ).
    shift_add_energy_fj: float = 50.0
    #: decoders, drivers, multiplexers, switch matrices: not modelled unless given (µm² per crossbar)
    other_area_um2_per_crossbar: float = 0.0

    def __post_init__(self):
        for problem in _model_problems(self):
            raise ConfigError(f"CostModel: {problem}")

    # -- component figures -------------------------------------------------------------------

    def adc_energy_fj(self, bits: int, column_resistance_ohm: float | None = None) -> float:
        """Energy of one b-bit SAR conversion: P(b, R_col)·(b + 1) ns (SarADC.cpp GetColumnPower).
        `column_resistance_ohm` overrides the model's fixed column resistance."""
        r = column_resistance_ohm if column_resistance_ohm is not None else self.adc_column_resistance_ohm
        if r is None or not r > 0:
            raise ConfigError(f"adc_energy_fj needs a column resistance > 0 ohm, got {r!r}")
        r = r * self.adc_characterised_voltage_v / self.read_voltage_v
        power_w = (self.adc_power_per_bit_uw * bits + self.adc_power_base_uw) * 1e-6
        power_w += self.adc_column_power_coefficient * math.exp(-self.adc_column_power_exponent * math.log10(r))
        power_w *= 1 + 1.3e-3 * (self.temperature_k - 300)
        return power_w * self.adc_latency_ns(bits) * 1e-9 * 1e15

    def adc_latency_ns(self, bits: int) -> float:
        return self.adc_latency_ns_per_bit * bits + self.adc_latency_base_ns

    def adc_area_um2(self, bits: int) -> float:
        transistors = (269 + 109 * (bits - 1)) + (209 + 73 * (bits - 1))
        return transistors * self.adc_gate_area_f2 * self.f2_um2

    def cell_conductance_us(self, level: float, cell_bits: int) -> float:
        """Conductance of a cell at `level` (of 2^c − 1), linear between 1/R_off and 1/R_on (µS)."""
        g_on, g_off = 1e6 / self.r_on_ohm, 1e6 / self.r_off_ohm
        return g_off + level / (2**cell_bits - 1) * (g_on - g_off)

    @property
    def f2_um2(self) -> float:
        return (self.feature_size_nm * 1e-3) ** 2

    def to_json(self) -> dict:
        return asdict(self)


def _model_problems(m: CostModel):
    for f in fields(m):
        v = getattr(m, f.name)
        if f.name == "columns_per_adc":
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                yield f"columns_per_adc must be an integer >= 1, got {v!r}"
            continue
        if f.name == "adc_column_resistance_ohm" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            yield f"{f.name} must be a finite number, got {v!r}"
        elif f.name in ("shift_add_energy_fj", "other_area_um2_per_crossbar", "adc_latency_base_ns"):
            if v < 0:
                yield f"{f.name} must be >= 0, got {v!r}"
        elif v <= 0:
            yield f"{f.name} must be > 0, got {v!r}"
    if _finite(m.r_on_ohm) and _finite(m.r_off_ohm) and m.r_off_ohm <= m.r_on_ohm:
        yield f"r_off_ohm ({m.r_off_ohm!r}) must be above r_on_ohm ({m.r_on_ohm!r})"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class LayerCost:
    """One mapped layer's estimate, per image. Units in the names."""

    layer: str
    op: str
    crossbars: int
    cells: int
    adcs: int
    output_pixels: int
    input_bits: int
    row_tiles: int
    converted_columns: int       # ADC conversions per sub-array row per pixel and input bit (all column tiles)
    serial_conversions: int      # conversions one ADC does in turn per input bit (the busiest sub-array)
    adc_conversions: int
    macs: int
    activity: float              # fraction of input bits equal to 1
    mean_cell_level: float       # mean programmed level of the cells (0 … 2^c − 1)
    adc_energy_per_conversion_fj: float
    cycles: int
    latency_us: float
    energy_adc_pj: float
    energy_cells_pj: float
    energy_shift_add_pj: float
    energy_pj: float
    area_arrays_mm2: float
    area_adc_mm2: float
    area_shift_add_mm2: float
    area_other_mm2: float
    area_mm2: float

    @property
    def tops_per_w(self) -> float:
        return 2 * self.macs / self.energy_pj if self.energy_pj else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "tops_per_w": self.tops_per_w}


#: LayerCost figures that add up over layers.
_SUMMED = ("crossbars", "cells", "adcs", "adc_conversions", "macs", "cycles", "latency_us", "energy_adc_pj",
           "energy_cells_pj", "energy_shift_add_pj", "energy_pj", "area_arrays_mm2", "area_adc_mm2",
           "area_shift_add_mm2", "area_other_mm2", "area_mm2")


@dataclass(frozen=True)
class CostReport:
    """Per-layer estimates and their totals (layers in graph order; latency is the sum: no pipeline)."""

    layers: list[LayerCost]
    total: dict
    adc_bits: int
    model: CostModel
    config: CIMConfig
    label: str = LABEL

    def to_json(self) -> dict:
        return {"label": self.label, "source": SOURCE, "adc_bits": self.adc_bits,
                "config": asdict(self.config), "model": self.model.to_json(),
                "layers": [c.to_json() for c in self.layers], "total": dict(self.total)}


def estimate(graph: IntegerGraph, layers: dict[str, MappedLayer], config: CIMConfig,
             model: CostModel = CostModel(), activity: float | dict[str, float] | None = None,
             adc_bits_for_cost: int | None = None) -> CostReport:
    """The cost per image of `graph`'s mapped `layers` (from `map_graph(graph, config)`).

    ADC bits: `config.adc_bits`, or `adc_bits_for_cost` when the config's ADC is ideal (None).
    `activity`: the fraction of input bits equal to 1 — None (0.5), one number for every layer, or
    a measured {layer: fraction} covering every mapped layer (`input_bit_activity`)."""
    bits = _adc_bits(config, adc_bits_for_cost)
    if not isinstance(model, CostModel):
        raise ConfigError(f"model must be a CostModel, got {type(model).__name__}")
    activities = _activities(activity, layers)
    nodes = {n.name: n for n in graph.nodes}
    costs = []
    for name, layer in layers.items():
        if nodes.get(name) != layer.node:
            raise ConfigError(f"mapped layer {name!r} is not a node of this graph (map_graph it for this graph)")
        _check_mapped_with(layer, config)
        costs.append(layer_cost(graph, layer, config, model, activities[name], bits))
    total = {key: sum(getattr(c, key) for c in costs) for key in _SUMMED}
    total["tops_per_w"] = 2 * total["macs"] / total["energy_pj"] if total["energy_pj"] else 0.0
    return CostReport(costs, total, bits, model, config)


def layer_cost(graph: IntegerGraph, layer: MappedLayer, config: CIMConfig, model: CostModel, activity: float,
               adc_bits: int) -> LayerCost:
    """One mapped layer's estimate per image (docs/cim-cost.md, "The model")."""
    node, plan = layer.node, layer.plan
    input_bits = input_feed(graph, node)[2]  # as the simulator feeds them
    pixels = output_pixels(graph, node)
    size = config.subarray_rows
    # conversions per sub-array row, per pixel and input bit: "subtract" converts column − reference
    # once per weight column (a differential pair is one conversion), "separate" converts every column
    pairs = plan.weight_columns // (2 if config.mapping == "differential" else 1)
    converted = pairs if config.dummy == "subtract" else plan.weight_columns + plan.reference_columns
    conversions = pixels * input_bits * plan.groups * plan.row_tiles * converted  # every group's sub-arrays
    # sub-arrays run in parallel; in one, ceil(size / N) ADCs share its columns, so the busiest
    # sub-array's ADCs convert ceil(its converted columns / ADCs) columns in turn after each read pulse
    adcs_per_crossbar = math.ceil(size / model.columns_per_adc)
    physical = plan.weight_columns + plan.reference_columns
    per_crossbar = min(converted, math.ceil(converted * size / physical))
    serial = math.ceil(per_crossbar / adcs_per_crossbar)
    step_ns = serial * model.adc_latency_ns(adc_bits) + model.read_pulse_ns
    cycles = pixels * input_bits * math.ceil(step_ns * model.clock_ghz - 1e-9)
    latency_us = cycles / model.clock_ghz * 1e-3
    # cell reads: per pixel and input bit, the driven rows (activity × rows) read every cell of their row
    level = mean_cell_level(layer, config)
    g_us = model.cell_conductance_us(level, config.cell_bits)
    column_r = model.adc_column_resistance_ohm
    if column_r is None:
        # NeuroSim's parallel read: the ADC sees the driven cells of its column in parallel, and its
        # column term is the cells' read energy (NeuroSim counts no separate cell energy then)
        driven_s = activity * (plan.rows / plan.row_tiles) * g_us * 1e-6
        column_r = 1 / driven_s if driven_s > 0 else math.inf  # nothing driven: no column term
        energy_cells_pj = 0.0
    else:
        cell_read_fj = model.read_voltage_v**2 * g_us * 1e-6 * model.read_pulse_ns * 1e-9 * 1e15
        energy_cells_pj = pixels * input_bits * activity * plan.cells * cell_read_fj * 1e-3
    adc_fj = model.adc_energy_fj(adc_bits, column_r)
    energy_adc_pj = conversions * adc_fj * 1e-3
    energy_shift_add_pj = conversions * model.shift_add_energy_fj * 1e-3
    adcs = plan.crossbars * adcs_per_crossbar
    accumulator_bits = adc_bits + config.cell_bits * (plan.slices - 1) + input_bits
    area_arrays = plan.crossbars * size * size * model.cell_area_f2 * model.f2_um2 * 1e-6
    area_adc = adcs * model.adc_area_um2(adc_bits) * 1e-6
    area_shift_add = adcs * accumulator_bits * model.shift_add_area_f2_per_bit * model.f2_um2 * 1e-6
    area_other = plan.crossbars * model.other_area_um2_per_crossbar * 1e-6
    return LayerCost(
        layer=node.name, op=node.op, crossbars=plan.crossbars, cells=plan.cells, adcs=adcs,
        output_pixels=pixels, input_bits=input_bits, row_tiles=plan.row_tiles, converted_columns=converted,
        serial_conversions=serial, adc_conversions=conversions, macs=pixels * plan.rows * layer.outputs * plan.groups,
        activity=activity, mean_cell_level=level, adc_energy_per_conversion_fj=adc_fj, cycles=cycles,
        latency_us=latency_us, energy_adc_pj=energy_adc_pj, energy_cells_pj=energy_cells_pj,
        energy_shift_add_pj=energy_shift_add_pj, energy_pj=energy_adc_pj + energy_cells_pj + energy_shift_add_pj,
        area_arrays_mm2=area_arrays, area_adc_mm2=area_adc, area_shift_add_mm2=area_shift_add,
        area_other_mm2=area_other, area_mm2=area_arrays + area_adc + area_shift_add + area_other)


def _check_mapped_with(layer: MappedLayer, config: CIMConfig) -> None:
    """Refuse a layer whose tile plan does not fit `config`'s cell bits, mapping or sub-array size
    (the figures would mix two crossbars)."""
    plan = layer.plan
    expected = (layer.weight_bits // config.cell_bits, math.ceil(plan.rows / config.subarray_rows),
                plan.slices if config.mapping == "offset" else 0)
    if (plan.slices, plan.row_tiles, plan.reference_columns) != expected:
        raise ConfigError(f"mapped layer {layer.node.name!r} was mapped with other cell_bits, mapping or "
                          "subarray_rows than this CIMConfig; map_graph(graph, config) again")


def output_pixels(graph: IntegerGraph, node) -> int:
    """Output positions per image: H·W of a Conv2d's output (graph.tensors), 1 for a Linear."""
    if node.op == "Linear":
        return 1
    shape = graph.tensors[node.output].shape
    if len(shape) != 3:
        raise GraphError(f"layer {node.name!r}: a Conv2d output of shape {shape} is not [C, H, W]")
    return shape[1] * shape[2]


def mean_cell_level(layer: MappedLayer, config: CIMConfig) -> float:
    """The mean programmed level over the layer's cells (reference cells included), from its
    conductances in `layer.unit`s (a level, or half a level for odd codes; absent rows hold none). A finite `config.on_off_ratio` is undone
    (its map is affine, so the mean passes through it): the physical off conductance is the cost
    model's R_off. Variation, stuck-at cells and drift stay in: they change what the cells conduct."""
    total = float(layer.conductance.to(torch.float64).sum()) / layer.unit
    level = total / layer.plan.cells
    top = 2**config.cell_bits - 1
    if config.on_off_ratio is not None:
        r = config.on_off_ratio
        level = (level - top / r) / (1 - 1 / r)
    if not -1e-6 <= level <= 2 * top:
        raise DataError(f"layer {layer.node.name!r}: mean cell level {level:.4g} is outside 0..{top}: its "
                        "conductances are not in level units (map_graph it with this CIMConfig)")
    return max(level, 0.0)


def input_bit_activity(graph: IntegerGraph, x: torch.Tensor, layers: dict[str, MappedLayer],
                       batch_size: int = 100) -> dict[str, float]:
    """The measured fraction of input bits equal to 1, per mapped layer, on images `x` (the IR's
    reference interpreter gives each layer's input codes u = x − q_min, fed over the simulator's
    bits; padding is not counted), `batch_size` images at a time."""
    from bitsmith.integer import engine

    if x.shape[0] == 0:
        raise DataError(f"input_bit_activity needs at least one image, got a batch of shape {tuple(x.shape)}")
    ones = dict.fromkeys(layers, 0)
    seen = dict.fromkeys(layers, 0)
    for start in range(0, x.shape[0], batch_size):
        values = engine.run(graph, x[start:start + batch_size], return_all=True)
        for name, layer in layers.items():
            qmin, _, bits = input_feed(graph, layer.node)
            u = values[layer.node.inputs[0]].to(torch.int64) - qmin
            ones[name] += sum(int(((u >> b) & 1).sum()) for b in range(bits))
            seen[name] += u.numel() * bits
    return {name: ones[name] / seen[name] for name in layers}


def _adc_bits(config: CIMConfig, adc_bits_for_cost: int | None) -> int:
    if not isinstance(config, CIMConfig):
        raise ConfigError(f"config must be a CIMConfig, got {type(config).__name__}")
    bits = config.adc_bits if config.adc_bits is not None else adc_bits_for_cost
    if bits is None:
        raise ConfigError("the cost of an ideal ADC (CIMConfig.adc_bits None) is undefined: give "
                          "adc_bits_for_cost (e.g. 5, NeuroSim's default) or a CIMConfig with adc_bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or not ADC_BITS[0] <= bits <= ADC_BITS[1]:
        raise ConfigError(f"adc_bits_for_cost must be an integer in {ADC_BITS[0]}..{ADC_BITS[1]}, got {bits!r}")
    return bits


def _activities(activity, layers: dict[str, MappedLayer]) -> dict[str, float]:
    if activity is None:
        activity = DEFAULT_ACTIVITY
    if isinstance(activity, dict):
        unknown = sorted(set(activity) - set(layers))
        missing = [n for n in layers if n not in activity]
        if unknown:
            raise ConfigError(f"activity names {unknown}, which are not mapped layers ({list(layers)})")
        if missing:
            raise ConfigError(f"activity gives no fraction for the mapped layers {missing}")
        values = dict(activity)
    else:
        values = {name: activity for name in layers}
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ConfigError(f"activity of layer {name!r} must be a fraction in [0, 1], got {v!r}")
    return {name: float(v) for name, v in values.items()}
