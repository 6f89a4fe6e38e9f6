"""The one cost function of a per-layer bit assignment (docs/mixed-precision.md, "Cost").

The mixed-precision search, `bitsmith hw report` and `bitsmith hw hls` all price a graph's widths
here. Given the compiled `Program` (its layer shapes) and, per layer with weights (conv kind:
Conv2d and Linear, in program order), weight bits w and input-activation bits a:

- **dsp**: DSP48E2 slices of a layer-pipelined (dataflow) design, DeepBurning-MixQ's HLS
  architecture, where every layer has its own multipliers. The first layer runs on R·C
  multipliers, which sets the pipeline's interval II = ⌈MACs₀ / (R·C)⌉ cycles per image; every
  layer gets P_l = ⌈MACs_l / II⌉ multipliers so that it keeps pace, packed into
  ⌈P_l / ops_per_dsp(w, a, k)⌉ slices by MixQ's DSP packing tables (`cost.dsps_for`; kernels
  other than 1, 3, 5 use the nearest smaller table, `cost.table_kernel`). Widths above the
  tables' 8 bits pack one product per slice (a 27×18 port holds a 16×16 product, nothing more).
  Up to the rounding this is MixQ's complexity term Σ_l 64·MACs_l / (MACs₀·ops_l) with R·C = 64.
- **array_dsp**: the bitsmith accelerator's own shared R×C array, built for its most demanding
  layer (`cost.layer_cost`: max over layers) — what `bitsmith hw report` reports as "array".
- **bitops**: Σ_l MACs_l · w · a.
- **weight_bits** / **weight_kb**: Σ_l weights_l · w (the codes only; KB = 1024 bytes), and
  **bram18**: the BRAM18 blocks of those weights in FINN-style per-layer weight memories
  (`cost.layer_cost`'s `finn_bram18` at PE = R, SIMD = C).
- **cycles**: the accelerator's timing model (`timing.program_cycles`) for the program with these
  widths: exactly what the cycle model and the RTL count when the graph runs. Each layer takes
  the packing mode the compiler would pick at those widths (docs/hardware.md §3: mode 4 needs
  ≤ 4-bit weights and a narrow d), and its weights load at their storage width (2, 4 or 8 bits).

Every figure but cycles is a sum of per-layer terms (array_dsp a maximum), so the search's
differentiable form is the expectation of each layer's table under its softmax weights
(`cost_tables`). Cycles are not quite a sum: the weight loader runs ahead across layers
(docs/hardware.md §5), so what a layer waits for depends on the layers before it. A layer's row
prices it run alone (`timing.layer_cycles`: the loader starts with the layer, on an empty ring),
which is never less than what it costs in the program: when the program reaches the layer every
earlier block is loaded and freed, so its loader is at least as far along. The tables' sum is
therefore an upper bound of the exact `cycles` total `assignment_cost` reports (equal when no layer
waits for weights), and a cycle budget the search meets is met.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import ConfigError
from .compiler import choose_packing, d_range, fit_weight_ring
from .config import AccelConfig
from .cost import TABLE_BITS, bram18, dsps_for, finn_weight_memory, layer_cost, table_kernel
from .program import Layer, Program
from .timing import FINISH_CYCLES, layer_cycles, program_cycles

#: Widths a cost can be asked for (what QuantConfig allows); the DSP tables cover 2..8.
COST_BITS = range(2, 17)
#: The figures of one assignment that are sums over layers (the search's cost metrics and budgets).
METRICS = ("dsp", "bitops", "weight_bits", "weight_kb", "bram18", "cycles")


def weighted_layers(program: Program) -> list[Layer]:
    """The layers with weights (Conv2d and Linear, the model's quantizable layers), in program order."""
    return [layer for layer in program.layers if layer.kind == "conv"]


def pipeline_interval(program: Program) -> int:
    """II, cycles per image of the dataflow design: the first layer with weights on R·C multipliers."""
    layers = weighted_layers(program)
    if not layers:
        raise ConfigError("the program has no Conv2d/Linear layer: nothing has a bit width to cost")
    return max(1, math.ceil(layers[0].macs / (program.config.pe * program.config.simd)))


def _check_bits(what: str, bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in COST_BITS:
        raise ConfigError(f"{what}={bits!r} is not allowed; allowed: {COST_BITS.start} to {COST_BITS.stop - 1} bits")


def dataflow_dsps(layer: Layer, w_bits: int, a_bits: int, multipliers: int) -> int:
    """DSP48E2 slices of `layer`'s own `multipliers` in the dataflow design (module docstring)."""
    if w_bits in TABLE_BITS and a_bits in TABLE_BITS:
        return dsps_for(multipliers, w_bits, a_bits, min(layer.kh, layer.kw))
    return multipliers  # wider than the tables: one product per slice


def layer_figures(layer: Layer, w_bits: int, a_bits: int, config: AccelConfig, interval: int, first: bool,
                  multipliers: int | None = None) -> dict:
    """Every figure of one layer with weights at w-bit weights and a-bit input activations
    (`multipliers`: the layer's own, when a design folds it otherwise than the balanced ⌈MACs/II⌉)."""
    _check_bits(f"layer {layer.name}: weight bits", w_bits)
    _check_bits(f"layer {layer.name}: activation bits", a_bits)
    if layer.is_codebook:
        raise ConfigError(f"layer {layer.name} is a codebook (CLIP-Q) layer: its weights are indices, not a bit "
                          "width; mixed precision prices dense layers only")
    sized = replace(layer, weight_bits=w_bits, in_bits=a_bits)
    choose_packing(sized, d_range(sized), config)  # the modes these widths allow, as the compiler picks
    weights = layer.out_ch * layer.terms
    row = {"name": layer.name, "w_bits": w_bits, "a_bits": a_bits, "macs": layer.macs, "weights": weights,
           "kernel": [layer.kh, layer.kw], "table_kernel": table_kernel(min(layer.kh, layer.kw)),
           "multipliers": math.ceil(layer.macs / interval) if multipliers is None else multipliers,
           "bitops": layer.macs * w_bits * a_bits,
           "weight_bits": weights * w_bits,
           "cycles": sum(layer_cycles(sized, config, first).values())}
    row["dsp"] = dataflow_dsps(layer, w_bits, a_bits, row["multipliers"])
    row["weight_kb"] = row["weight_bits"] / 8192
    row["bram18"] = bram18(*finn_weight_memory(layer, config.pe, config.simd, w_bits))
    # The shared array only runs widths the DSP table has (cost.layer_cost refuses the others).
    row["array_dsp"] = layer_cost(sized, config.pe, config.simd)["dsp"] if w_bits <= 8 and a_bits <= 8 else None
    return row


def _widths(program: Program, wbits, abits) -> tuple[list[int], list[int]]:
    layers = weighted_layers(program)
    own_w = [layer.weight_bits for layer in layers]
    own_a = [layer.in_bits for layer in layers]
    wbits = own_w if wbits is None else list(wbits)
    abits = own_a if abits is None else list(abits)
    for what, bits in (("weight", wbits), ("activation", abits)):
        if len(bits) != len(layers):
            raise ConfigError(f"{len(bits)} {what} widths for {len(layers)} layers with weights "
                              f"({', '.join(layer.name for layer in layers)}); allowed: one per layer")
    return wbits, abits


def assignment_cost(program: Program, wbits=None, abits=None, multipliers: dict[str, int] | None = None) -> dict:
    """The exact figures of one assignment: per-layer rows and totals (module docstring).

    `wbits` / `abits`: one width per layer with weights, in program order; None: the program's
    own widths (the graph's). `cycles` is the whole program's (pools, adds, finish included).
    `multipliers`: per layer name, the multipliers a design gives it instead of the balanced
    pipeline's (the HLS export's PE·SIMD).
    """
    wbits, abits = _widths(program, wbits, abits)
    config = program.config
    interval = pipeline_interval(program)
    layers = weighted_layers(program)
    multipliers = multipliers or {}
    rows = [layer_figures(layer, w, a, config, interval, first=layer is program.layers[0],
                          multipliers=multipliers.get(layer.name))
            for layer, w, a in zip(layers, wbits, abits)]
    totals = {m: sum(row[m] for row in rows) for m in METRICS}
    totals["cycles"] = program_cycles(sized_program(program, wbits, abits))["total"]
    array = [row["array_dsp"] for row in rows]
    return {"layers": rows, "interval": interval, "pe": config.pe, "simd": config.simd,
            "wbits": wbits, "abits": abits, **totals,
            "array_dsp": None if None in array else max(array, default=0)}


def cost_tables(program: Program, candidates_w: list[list[int]], candidates_a: list[list[int]],
                metric: str) -> tuple[list[np.ndarray], float]:
    """Per layer with weights, the exact `metric` at every (w_i, a_j) of its candidates
    (array [len(candidates_w[l]), len(candidates_a[l])]), and the constant the unsearched rest adds
    (cycles of pools, adds and the finish; 0 for the other metrics). Σ_l table_l[i_l, j_l] +
    constant equals `assignment_cost(...)[metric]` for the chosen widths."""
    if metric not in METRICS:
        raise ConfigError(f"unknown cost metric {metric!r}; allowed: {', '.join(METRICS)}")
    layers = weighted_layers(program)
    if len(candidates_w) != len(layers) or len(candidates_a) != len(layers):
        raise ConfigError(f"candidate lists for {len(candidates_w)}/{len(candidates_a)} layers, but the program has "
                          f"{len(layers)} layers with weights; allowed: one list per layer")
    config = program.config
    interval = pipeline_interval(program)
    tables = []
    for layer, ws, as_ in zip(layers, candidates_w, candidates_a):
        if not ws or not as_:
            raise ConfigError(f"layer {layer.name}: empty candidate list; allowed: at least one width")
        first = layer is program.layers[0]
        tables.append(np.array([[layer_figures(layer, w, a, config, interval, first)[metric] for a in as_]
                                for w in ws], dtype=np.float64))
    if metric != "cycles":
        return tables, 0.0
    weighted = {id(layer) for layer in layers}
    constant = FINISH_CYCLES + sum(sum(layer_cycles(layer, config, first=i == 0).values())
                                   for i, layer in enumerate(program.layers) if id(layer) not in weighted)
    return tables, float(constant)


def sized_program(program: Program, wbits: list[int], abits: list[int]) -> Program:
    """`program` with its layers with weights at these widths, each in the packing mode the compiler
    would pick for them (the other layers as they are)."""
    widths = {id(layer): (w, a) for layer, w, a in zip(weighted_layers(program), wbits, abits)}
    layers = []
    for layer in program.layers:
        if id(layer) in widths:
            w, a = widths[id(layer)]
            layer = replace(layer, weight_bits=w, in_bits=a)
            choose_packing(layer, d_range(layer), program.config)
        layers.append(layer)
    return fit_weight_ring(replace(program, layers=layers))
