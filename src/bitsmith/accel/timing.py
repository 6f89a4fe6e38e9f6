"""The analytic cycle counts of docs/hardware.md §5 (controller FSM, no overlapping phases).

    cycles = Σ_layers (param + codebook + input + Σ_groups (weights + compute + drain) + 1) + 1

The cycle-level model (`bitsmith.accel.simulate`) counts the same cycles by executing the
program; the generated Verilog must take exactly as many. The cost model and the design-space
sweep read `program_cycles`.
"""

from __future__ import annotations

import math

from .compiler import channel_groups, term_blocks
from .config import CODEBOOK_INDEX_BITS, CODEBOOK_SIZE, DESCRIPTOR_WORDS, MAX_ACT_BITS, WEIGHT_BYTE_BITS, AccelConfig
from .program import Layer, Program

PHASES = ("param", "codebook", "input", "weights", "compute", "drain", "next")
FINISH_CYCLES = 1
CODEBOOK_CYCLES = CODEBOOK_SIZE   # one codebook value per cycle
NEXT_LAYER_CYCLES = 1


def storage_bits(layer: Layer) -> int:
    """Bits per weight in external memory: 8 (W8.hex, any dense width) or 2 (W2.hex indices)."""
    return CODEBOOK_INDEX_BITS if layer.is_codebook else WEIGHT_BYTE_BITS


def param_cycles(layer: Layer) -> int:
    """Descriptor, then per channel (bias, multiplier, shift) for layers with a requant unit and the
    input address for layers with a channel map (grouped conv, reorg, concat)."""
    return DESCRIPTOR_WORDS + layer.table_words * layer.out_ch


def input_cycles(layer: Layer, config: AccelConfig) -> int:
    """The image from external memory into the activation memory (at the first layer's input
    address): one code per byte, bus_bits per cycle."""
    return math.ceil(layer.in_elems * MAX_ACT_BITS / config.bus_bits)


def group_weight_cycles(layer: Layer, config: AccelConfig) -> int:
    """Loading one channel group's R·T·C weights (conv only)."""
    if layer.kind != "conv":
        return 0
    entries = config.pe * term_blocks(layer, config) * config.simd
    return math.ceil(entries * storage_bits(layer) / config.bus_bits)


def group_compute_cycles(layer: Layer, config: AccelConfig) -> int:
    """P·T (conv) or P·(window elements) on the pool lanes (pools kh·kw, add 2, reorg / concat /
    requant 1) for one channel group."""
    return layer.pixels * term_blocks(layer, config)


def layer_cycles(layer: Layer, config: AccelConfig, first: bool) -> dict[str, int]:
    """Cycles of each §5 phase for one layer and one image (groups summed)."""
    groups = channel_groups(layer, config)
    return {
        "param": param_cycles(layer),
        "codebook": CODEBOOK_CYCLES if layer.is_codebook else 0,
        "input": input_cycles(layer, config) if first else 0,
        "weights": groups * group_weight_cycles(layer, config),
        "compute": groups * group_compute_cycles(layer, config),
        "drain": groups * layer.pixels,
        "next": NEXT_LAYER_CYCLES,
    }


def program_cycles(program: Program) -> dict:
    """Per-layer rows, phase totals, `total` (finish included), network `utilisation` and `fps`.

    Row utilisation = useful MACs / (R·C·compute cycles) (None for pools); `share` = the
    layer's fraction of the total cycles.
    """
    config = program.config
    lanes = config.pe * config.simd
    rows = []
    for i, layer in enumerate(program.layers):
        phases = layer_cycles(layer, config, first=i == 0)
        cycles = sum(phases.values())
        rows.append({
            "index": layer.index, "name": layer.name, "kind": layer.kind,
            "groups": channel_groups(layer, config), "term_blocks": term_blocks(layer, config),
            **phases, "cycles": cycles, "macs": layer.macs,
            "utilisation": layer.macs / (lanes * phases["compute"]) if layer.kind == "conv" and phases["compute"] else None,
        })
    total = sum(r["cycles"] for r in rows) + FINISH_CYCLES
    for r in rows:
        r["share"] = r["cycles"] / total
    macs = sum(r["macs"] for r in rows)
    return {
        "layers": rows,
        "phases": {p: sum(r[p] for r in rows) for p in PHASES} | {"finish": FINISH_CYCLES},
        "finish": FINISH_CYCLES,
        "total": total,
        "macs": macs,
        "utilisation": macs / (lanes * total),
        "fps": config.clock_mhz * 1e6 / total,
        "clock_mhz": config.clock_mhz,
    }
