"""Resource model of the accelerator of docs/hardware.md for one `Program`: DSP48E2, BRAM18 and a
rough LUT/FF figure, per layer and in total (docs/hardware.md "Cost model" states every assumption).

- **DSPs of the PE array**: what the generated RTL has and Yosys `synth_xilinx` infers: one
  DSP48E2 per PE, R·C, whatever the layers' precision. Each PE is one signed 27×18 multiplier that
  packs two or four low-bit products (docs/hardware.md §3 "Packed MACs"); a narrower layer runs in
  fewer cycles, not on fewer DSPs. (Tested against Yosys on small arrays: tests/rtl/test_synth_dsp.py.)
- **DeepBurning-MixQ's DSP packing tables** ("ops per DSP48E2", transcribed below as data) stay as
  the precision-dependent figure of a dataflow design: `layer_cost`'s per-layer `dsp` =
  ⌈R·C / ops_per_dsp(w, a, kernel)⌉ (0 for a 2-bit codebook layer: the CLIP-Q select trick), which
  `bitsmith.accel.precision` and the mixed-precision search read; `cost_report` gives their maximum
  as `dsp["mixq_array"]`, beside the RTL's `dsp["array"]`.
- **DSPs of the requant units**: one 32×32 signed multiplier per accumulator lane, tiled from
  27×18 signed multipliers: 2×2 = 4 DSPs each; R·(channel lanes)·(pixel lanes) units (R without
  packing, 2R with mode 2, 4R with mode 4, `compiler.array_lanes`).
- **DSPs of the pool-lane multipliers**: one 10×16-bit signed multiplier per lane ((x − z) times
  m, used by Add and average pools), one DSP48E2 each; the RTL builds them for every program.
- **BRAM18** with FINN's BRAM18 depth/width formula for the on-chip memories of this design,
  plus, per layer, the weight memory a FINN dataflow layer with the same folding would need.
- **Weight memory, dense vs compressed**: per conv layer the bits of its codes stored densely at
  weight_bits and in its IR storage format (`Layer.weight_storage`: payload incl. every index,
  mask, pointer and filler, plus the 160-bit sparse header), each with the BRAM18 of a ROM of
  bus_bits-wide words holding it.
- **LUT/FF**: a rough per-unit estimate; the unit figures in `LOGIC_UNITS` are assumptions, not
  synthesis results.
"""

from __future__ import annotations

import math
from fractions import Fraction

from ..errors import AcceleratorError, ConfigError
from ..integer import sparse
from .config import (ACC_BITS, CODEBOOK_INDEX_BITS, DESCRIPTOR_WORDS, LANE_MULTIPLIER_BITS, MAX_WEIGHT_BITS,
                     MULTIPLIER_BITS)
from .compiler import array_lanes
from .program import Layer, Program
from .timing import WEIGHT_BANKS

# ops per DSP48E2, DeepBurning-MixQ's DSP packing tables: OPS_PER_DSP[kernel][w_bits] = (a = 2, 3, 4, 5, 6, 7, 8).
OPS_PER_DSP: dict[int, dict[int, tuple[float, ...]]] = {
    3: {2: (18, 15, 12, 7.5, 7.5, 6, 6),
        3: (15, 12, 7.5, 6, 6, 6, 3),
        4: (12, 7.5, 6, 6, 6, 6, 3),
        5: (9, 6, 6, 6, 6, 3, 3),
        6: (7.5, 6, 6, 4.5, 3, 3, 3),
        7: (6, 6, 4.5, 3, 3, 3, 2.25),
        8: (6, 3, 3, 3, 3, 3, 2)},
    1: {2: (12, 8, 8, 6, 6, 4, 4),
        3: (10, 8, 6, 6, 4, 4, 4),
        4: (8, 6, 6, 4, 4, 4, 3),
        5: (6, 6, 4, 4, 4, 4, 2),
        6: (6, 4, 4, 4, 2, 2, 2),
        7: (4, 4, 4, 4, 2, 2, 2),
        8: (4, 4, 3, 2, 2, 2, 2)},
    5: {2: (20, 15, 10, 7.5, 7.5, 5, 5),
        3: (12.5, 10, 6.67, 5, 5, 5, 3.33),
        4: (10, 7.5, 5, 5, 5, 5, 3.33),
        5: (7.5, 6.67, 5, 5, 5, 3.33, 3.33),
        6: (6.67, 5, 5, 5, 3.33, 2.5, 2.5),
        7: (5, 5, 5, 3.33, 2.5, 2.5, 2.5),
        8: (5, 3.33, 3.33, 3.33, 2.5, 2.5, 2)},
}
TABLE_BITS = range(2, 9)
TABLE_KERNELS = tuple(sorted(OPS_PER_DSP))

# A DSP48E2 multiplies 27×18 signed: 26 and 17 magnitude bits per tile, the top tile signed.
DSP_PORT_BITS = (27, 18)
BRAM18_BITS = 18 * 1024
LANE_OPERAND_BITS = 10   # x − z of an 8-bit code (signed or unsigned) and a zero point in its range


def table_kernel(kernel: int) -> int:
    """The table to use for a kernel side: its own (1, 3, 5), else the nearest smaller one (2 → 1,
    4 → 3, 6 and 7 → 5). Smaller kernels pack fewer ops per DSP in most cells, so this errs towards
    more DSPs."""
    if not isinstance(kernel, int) or kernel < 1:
        raise ConfigError(f"kernel side must be a positive integer, got {kernel!r}")
    return max(k for k in TABLE_KERNELS if k <= kernel)


def ops_per_dsp(w_bits: int, a_bits: int, kernel: int) -> float:
    """Multiply-accumulates one DSP48E2 performs per cycle for w-bit weights and a-bit activations
    (DeepBurning-MixQ's DSP packing tables, rows w = 2..8, columns a = 2..8), exactly as printed there."""
    for name, bits in (("weight", w_bits), ("activation", a_bits)):
        if bits not in TABLE_BITS:
            raise ConfigError(f"ops_per_dsp: {name} bits must be 2..8 (the table's range), got {bits!r}")
    return OPS_PER_DSP[table_kernel(kernel)][w_bits][a_bits - 2]


def exact_ops(ops: float) -> Fraction:
    """The table prints thirds to two decimals (6.67, 3.33); read every entry as the fraction with
    denominator ≤ 4 it stands for (20/3, 10/3, 15/2, 9/4), so 10 MACs at 3.33 ops/DSP need 3 DSPs."""
    return Fraction(ops).limit_denominator(4)


def dsps_for(macs_per_cycle: int, w_bits: int, a_bits: int, kernel: int) -> int:
    """DSP48E2 slices for `macs_per_cycle` multipliers of the given precision."""
    return math.ceil(Fraction(macs_per_cycle) / exact_ops(ops_per_dsp(w_bits, a_bits, kernel)))


def multiplier_dsps(a_bits: int, b_bits: int) -> int:
    """DSP48E2 slices of one a×b signed multiplier built from 27×18 signed tiles: an n-bit signed
    operand splits into ⌈(n−1)/(p−1)⌉ pieces on a p-bit port; the better of the two orientations.
    32×32 → 2×2 = 4."""
    def pieces(n: int, port: int) -> int:
        return max(1, math.ceil((n - 1) / (port - 1)))
    p, q = DSP_PORT_BITS
    return min(pieces(a_bits, p) * pieces(b_bits, q), pieces(b_bits, p) * pieces(a_bits, q))


REQUANT_DSPS = multiplier_dsps(ACC_BITS, MULTIPLIER_BITS)  # one per row: acc (32) × m (32)
LANE_DSPS = multiplier_dsps(LANE_OPERAND_BITS, LANE_MULTIPLIER_BITS)   # one per pool lane with Add layers: d × m


def bram18(depth: int, width: int) -> int:
    """RAMB18 blocks for a memory of `depth` words of `width` bits (FINN's BRAM18 formula)."""
    if depth < 0 or width < 0:
        raise ConfigError(f"memory depth and width must be ≥ 0, got depth={depth}, width={width}")
    if depth == 0 or width == 0:
        return 0
    if width == 1:
        return math.ceil(depth / 16384)
    if width == 2:
        return math.ceil(depth / 8192)
    if width <= 4:
        return math.ceil(depth / 4096) * math.ceil(width / 4)
    if width <= 9:
        return math.ceil(depth / 2048) * math.ceil(width / 9)
    if width <= 18 or depth > 512:
        return math.ceil(depth / 1024) * math.ceil(width / 18)
    return math.ceil(depth / 512) * math.ceil(width / 36)


def memory(name: str, depth: int, width: int, note: str) -> dict:
    return {"name": name, "depth": depth, "width": width, "bits": depth * width,
            "bram18": bram18(depth, width), "note": note}


# --- per layer --------------------------------------------------------------------------------

def layer_precision(layer: Layer) -> tuple[int, int]:
    """(w_bits, a_bits) for the DSP table. Codes narrower than the table's 2 bits are costed as 2
    bits (never cheaper than the table allows); a zero point does not widen `a`: Σw·(x − z) =
    Σw·x − z·Σw, the second term is a per-channel constant a packed design folds into the bias."""
    if layer.weight_bits > MAX_WEIGHT_BITS or layer.in_bits > max(TABLE_BITS):
        raise AcceleratorError(f"layer {layer.name}: {layer.weight_bits}-bit weights × {layer.in_bits}-bit "
                               f"activations exceed the DSP table (at most 8 × 8 bits)")
    return max(2, layer.weight_bits), max(2, layer.in_bits)


def finn_weight_memory(layer: Layer, pe: int, simd: int, stored_bits: int) -> tuple[int, int]:
    """(depth, width) of a FINN dataflow layer's weight memory with PE = pe, SIMD = simd: depth
    MW·MH/(PE·SIMD) rounded up per axis, width PE·SIMD·(bits per stored weight)."""
    return math.ceil(layer.terms / simd) * math.ceil(layer.out_ch / pe), pe * simd * stored_bits


def weight_memory(layer: Layer, bus_bits: int) -> dict:
    """Bits of a conv layer's weight codes stored densely (weight_bits each) and in its IR storage
    format, each with the 160-bit sparse header; `index_bits` = what the stored payload holds besides
    the nnz non-zero codes (indices, masks, pointers, fillers; for dense, the zeros); BRAM18 of a
    ROM of `bus_bits`-wide words for each. A codebook layer stores 2-bit indices (no header, no
    choice of format)."""
    if layer.is_codebook:
        bits = layer.out_ch * layer.terms * CODEBOOK_INDEX_BITS
        row = {"storage": "codebook", "dense_bits": bits, "stored_bits": bits, "index_bits": 0,
               "nnz": int((layer.weight_codes != 0).sum())}
    else:
        stats = sparse.code_stats(layer.weights)
        dense = sparse.payload_bits("dense", stats, layer.weight_bits)
        stored = sparse.payload_bits(layer.weight_storage, stats, layer.weight_bits, **layer.storage_fields)
        row = {"storage": layer.weight_storage, "dense_bits": dense + sparse.HEADER_BITS,
               "stored_bits": stored + sparse.HEADER_BITS, "index_bits": stored - stats.nnz * layer.weight_bits,
               "nnz": stats.nnz}
    row["dense_bram18"] = bram18(math.ceil(row["dense_bits"] / bus_bits), bus_bits)
    row["stored_bram18"] = bram18(math.ceil(row["stored_bits"] / bus_bits), bus_bits)
    return row


def layer_cost(layer: Layer, pe: int, simd: int, bus_bits: int = 64) -> dict:
    """DSPs the R×C array needs in this layer's precision, and the FINN-style weight memory of a
    dataflow layer with PE = R, SIMD = C (depth MW·MH/(PE·SIMD) rounded up per axis, width
    PE·SIMD·W with W the stored weight width: weight_bits, or 2 for codebook indices)."""
    row = {"index": layer.index, "name": layer.name, "kind": layer.kind,
           "in_shape": [layer.in_ch, layer.in_h, layer.in_w], "out_shape": [layer.out_ch, layer.out_h, layer.out_w],
           "kernel": [layer.kh, layer.kw], "w_bits": layer.weight_bits, "a_bits": layer.in_bits,
           "codebook": layer.is_codebook, "macs": layer.macs, "table_kernel": None, "ops_per_dsp": None,
           "dsp": 0, "weight_buffer_entries": 0, "finn_weight_depth": 0, "finn_weight_width": 0, "finn_bram18": 0,
           "weight_memory": None}
    if layer.kind != "conv":
        return row  # pools run on the pool lanes: no multipliers, no weights
    if layer.weights is not None:
        row["weight_memory"] = weight_memory(layer, bus_bits)
    stored_bits = CODEBOOK_INDEX_BITS if layer.is_codebook else layer.weight_bits
    blocks = math.ceil(layer.terms / simd)
    depth, width = finn_weight_memory(layer, pe, simd, stored_bits)
    row.update(weight_buffer_entries=pe * layer.channel_lanes * blocks * simd,  # one channel group, R'·T·C (§4)
               finn_weight_depth=depth, finn_weight_width=width, finn_bram18=bram18(depth, width))
    if layer.is_codebook:
        return row  # the codebook select trick: 0 multiplier DSPs
    w_bits, a_bits = layer_precision(layer)
    kernel = min(layer.kh, layer.kw)  # a non-square kernel packs like its smaller side (conservative)
    row.update(table_kernel=table_kernel(kernel), ops_per_dsp=ops_per_dsp(w_bits, a_bits, kernel),
               dsp=dsps_for(pe * simd, w_bits, a_bits, kernel))
    return row


# --- on-chip memories -------------------------------------------------------------------------

def param_words(program: Program) -> int:
    """Words of param.hex (docs/hardware.md §6): count, descriptors, per-channel tables."""
    tables = sum(l.table_words * l.out_ch for l in program.layers)
    return 1 + DESCRIPTOR_WORDS * len(program.layers) + tables


def weight_storage_bits(program: Program) -> int:
    """Bits per weight-buffer entry: 8 when any layer is dense (the loader sign-extends 2-, 4- and
    8-bit W8.hex codes into 8-bit entries, §6), 2 when every conv layer is a codebook layer (only
    indices are stored)."""
    convs = [l for l in program.layers if l.kind == "conv"]
    return CODEBOOK_INDEX_BITS if convs and all(l.is_codebook for l in convs) else MAX_WEIGHT_BITS


def memories(program: Program) -> list[dict]:
    cfg = program.config
    rc = cfg.pe * cfg.simd
    b = weight_storage_bits(program)
    mems = [
        # Two banks (docs/hardware.md §5): the loader fills one while the array reads the other.
        memory("weight buffer", WEIGHT_BANKS * math.ceil(cfg.weight_buffer_entries / rc), rc * b,
               f"{WEIGHT_BANKS} banks of weight_buffer_entries={cfg.weight_buffer_entries} weights, R·C = {rc} "
               f"read per cycle, {b} bits each"),
        memory("activation memory", math.ceil(cfg.act_buffer_bytes / cfg.simd), 8 * cfg.simd,
               f"act_buffer_bytes={cfg.act_buffer_bytes} (every live map, allocated), C = {cfg.simd} codes read "
               "per cycle"),
        memory("param memory", param_words(program), 32, "param.hex: descriptors and per-channel bias, m, s"),
    ]
    last = program.layers[-1] if program.layers else None
    if last is not None and last.raw_output:
        mems.append(memory("output memory", last.out_elems, ACC_BITS, f"raw 32-bit outputs of {last.name}"))
    return mems


# --- rough logic ------------------------------------------------------------------------------

# (LUTs, FFs) per instance, and why. Rough figures for a 6-input-LUT fabric with carry chains:
# an n-bit adder ≈ n LUTs, a 4:1 mux of n bits ≈ n LUTs, a register of n bits = n FFs.
LOGIC_UNITS: dict[str, tuple[int, int, str]] = {
    "pe": (32, 40, "32-bit chain adder + its output register, 8-bit weight register"),
    "column": (40, 30, "per column: x − z_in (9 bits), padding zero mux, term → address step"),
    "codebook_decoder": (8, 0, "per PE: 4:1 mux of 8-bit codebook values (array has DSPs)"),
    "codebook_product": (80, 17, "per column, 4 each: d × codebook value, 9×8 bits in LUTs (array without DSPs)"),
    "codebook_select": (17, 0, "per PE: 4:1 mux of 17-bit products (array without DSPs)"),
    "requant": (350, 130, "per row: 64-bit round add, 64→32 barrel shift (6 bits), + z_out, clamp, pipeline registers"),
    "accumulator": (32, 32, "per row: 32-bit accumulator, bias-load mux"),
    "pool_lane": (45, 40, "per row: 8-bit max compare/register, 32-bit avg sum"),
    "lane_address": (64, 32, "per row, with channel maps (grouped conv, reorg, concat): its input address register and adder"),
    "controller": (600, 400, "FSM, loop counters g/oy/ox/j, descriptor registers, address bases"),
    "bus_interface": (1, 1, "per bus bit: weight/input word register and unpacking mux"),
}


def logic_estimate(program: Program, array_dsp: int) -> dict:
    cfg = program.config
    r, c = cfg.pe, cfg.simd
    units = rtl_dsps(program)["requant_units"]   # one accumulator and requant unit per (row, lane)
    counts = {"pe": r * c, "column": c, "requant": units, "accumulator": units, "controller": 1,
              "bus_interface": cfg.bus_bits}
    if any(l.is_codebook for l in program.layers):
        if array_dsp > 0:   # dense layers too: the decoder feeds codebook values to the DSP array
            counts["codebook_decoder"] = r * c
        else:               # codebook only: the select trick replaces the multipliers
            counts["codebook_product"] = 4 * c
            counts["codebook_select"] = r * c
    if any(l.kind != "conv" for l in program.layers):
        counts["pool_lane"] = r
    if any(l.has_map for l in program.layers):
        counts["lane_address"] = r
    units = [{"unit": name, "count": n, "lut": n * LOGIC_UNITS[name][0], "ff": n * LOGIC_UNITS[name][1],
              "assumption": LOGIC_UNITS[name][2]} for name, n in counts.items()]
    return {"rough": True, "units": units, "lut": sum(u["lut"] for u in units), "ff": sum(u["ff"] for u in units)}


# --- the report -------------------------------------------------------------------------------

def rtl_dsps(program: Program) -> dict:
    """DSP48E2 slices of the generated RTL for `program`, as Yosys synth_xilinx maps it: the PE array
    (one per PE), the requant units (one per accumulator lane: R·lanes), the pool lanes (one each)."""
    cfg = program.config
    channels, pixels = array_lanes(program)
    units = cfg.pe * channels * pixels
    dsp = {"array": cfg.pe * cfg.simd, "requant": units * REQUANT_DSPS, "lanes": cfg.pe * LANE_DSPS,
           "requant_units": units}
    dsp["total"] = dsp["array"] + dsp["requant"] + dsp["lanes"]
    return dsp


def cost_report(program: Program) -> dict:
    """Per-layer and total resources of the accelerator instance that runs `program`."""
    cfg = program.config
    if not program.layers:
        raise AcceleratorError("cost report: the program has no layers")
    layers = [layer_cost(l, cfg.pe, cfg.simd, cfg.bus_bits) for l in program.layers]
    stored = [row["weight_memory"] for row in layers if row["weight_memory"] is not None]
    dsp = rtl_dsps(program)
    mixq = max(row["dsp"] for row in layers)
    mems = memories(program)
    return {
        "config": cfg.to_json(),
        "layers": layers,
        "dsp": dsp | {"mixq_array": mixq,
                      "array_layer": next(row["name"] for row in layers if row["dsp"] == mixq) if mixq else None},
        "memories": mems,
        "bram18": {"total": sum(m["bram18"] for m in mems), **{m["name"]: m["bram18"] for m in mems}},
        "finn_bram18": sum(row["finn_bram18"] for row in layers),
        "weight_memory": {key: sum(m[key] for m in stored) for key in
                          ("dense_bits", "stored_bits", "index_bits", "nnz", "dense_bram18", "stored_bram18")},
        "logic": logic_estimate(program, dsp["array"]),
    }
