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
- **Memories of the generated RTL** (`memories`), at the depths `bitsmith.rtl.generate` gives them:
  the six ROMs (param, W8, W2, codebook, input, load schedule; one synchronous read each) with the
  block RAMs Yosys infers for them (`rom_mapping`: memory_libmap's geometry choice for synth_xilinx
  -family xcup, RAMB18E2 / RAMB36E2 = 2 BRAM18, or LUTs below its threshold; DP16KD for synth_ecp5;
  tested against Yosys in tests/rtl/test_synth_bram.py), the weight ring (one write, one
  synchronous read: `ram_mapping`), and the multi-ported arrays (activation memory, raw output
  memory: flip-flops; the per-channel tables: LUT RAM or flip-flops) as what they are: bram18 = 0,
  their bits counted as `register_bits` / `lutram_bits`.
- **FINN's BRAM18 formula** (`bram18`), per layer, for the weight memory a FINN dataflow layer
  with the same folding would need (the FINN comparison, and the mixed-precision search's figure).
- **Weight memory, dense vs compressed**: per conv layer the bits of its codes stored densely at
  weight_bits and in its IR storage format (`Layer.weight_storage`: payload incl. every index,
  mask, pointer and filler, plus the 160-bit sparse header), each with the BRAM18 of a ROM of
  bus_bits-wide words holding it.
- **LUT/FF**: a rough per-unit estimate; the unit figures in `LOGIC_UNITS` are assumptions, not
  synthesis results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..errors import AcceleratorError, ConfigError
from ..integer import sparse
from .config import (ACC_BITS, CODEBOOK_INDEX_BITS, CODEBOOK_SIZE, CODEBOOK_VALUE_BITS, DESCRIPTOR_WORDS,
                     LANE_MULTIPLIER_BITS, MAX_ACT_BITS, MAX_WEIGHT_BITS, MULTIPLIER_BITS, PARAM_WORD_BITS,
                     SHIFT_FIELD_BITS, WEIGHT_BYTE_BITS)
from .banks import rtl_banking
from .compiler import (SCHEDULE_WORD_BITS, array_lanes, block_words, channel_groups, group_channels, ring_depth,
                       ring_word_entries, storage_bits, term_blocks)
from .program import Layer, Program
from .timing import input_cycles

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


# --- on-chip memories: what the generated RTL has -------------------------------------------

def param_words(program: Program) -> int:
    """Words of param.hex (docs/hardware.md §6): count, descriptors, per-channel tables."""
    tables = sum(l.table_words * l.out_ch for l in program.layers)
    return 1 + DESCRIPTOR_WORDS * len(program.layers) + tables


@dataclass(frozen=True)
class BlockRam:
    """One block-RAM geometry of a Yosys memory library (share/xilinx/brams_xc4v.txt with
    HAS_SIZE_36, share/lattice/brams_16kd.txt): the cell it becomes, its BRAM18 equivalents, its
    address bits at width 1, its data widths (each at half the depth of the one before) and the
    library's cost."""

    primitive: str
    bram18: int
    abits: int
    widths: tuple[int, ...]
    cost: int


#: The candidates memory_libmap weighs for a ROM (LUT RAMs refuse ROMs, `prune_rom`; UltraRAM has
#: no initial contents), in the library's order, which settles ties.
BLOCK_RAMS: dict[str, tuple[BlockRam, ...]] = {
    "xcup": (BlockRam("RAMB36E2", 2, 15, (1, 2, 4, 9, 18, 36), 257),        # true dual port, 36 Kb
             BlockRam("RAMB18E2", 1, 14, (1, 2, 4, 9, 18), 129),            # true dual port, 18 Kb
             BlockRam("RAMB36E2", 2, 15, (1, 2, 4, 9, 18, 36, 72), 257),    # simple dual port
             BlockRam("RAMB18E2", 1, 14, (1, 2, 4, 9, 18, 36), 129)),
    "ecp5": (BlockRam("DP16KD", 1, 14, (1, 2, 4, 9, 18), 128),              # true dual port
             BlockRam("DP16KD", 1, 14, (1, 2, 4, 9, 18, 36), 128)),         # PDPW16KD: 36-bit read
}
#: memory_libmap's cost of one ROM bit in soft logic: synth_xilinx passes -logic-cost-rom 1/64,
#: synth_ecp5 keeps the default 1/16.
LOGIC_COST_ROM = {"xcup": 1 / 64, "ecp5": 1 / 16}
ROM_PORT_COST = 2       # a read port of its own (not shared with a write port): score 1, factor 2
ROM_MUX_COST = 0.5      # per output bit per extra block of addresses (the read multiplexer)


def rom_mapping(depth: int, width: int, target: str = "xcup") -> dict:
    """What Yosys 0.70's memory_libmap makes of a ROM of `depth` words × `width` bits with one
    synchronous read port (the generated top's ROMs), for `target` "xcup" (synth_xilinx -family
    xcup) or "ecp5" (synth_ecp5).

    Its rule, found by experiment and by reading the pass: for every block geometry and every data
    width w it offers (the i-th of its widths holds 2^(abits − i) words), the ROM needs s =
    ⌈depth / words⌉ blocks of addresses and n = ⌈s·width / w⌉ blocks (the address slices share a
    block's columns); it costs n·cost + 0.5·(s − 1)·width (the read multiplexer) + 2 (the port).
    The cheapest width of each geometry (a later one only if cheaper than the earlier's cost
    truncated to an integer), then the cheapest geometry (the first on a tie), is used if it costs
    less than the soft-logic cost depth·width·LOGIC_COST_ROM truncated to an integer; otherwise the
    ROM becomes LUTs. Returns the primitive ("LUT" for logic), its count `blocks`, `bram18`
    (RAMB36E2 = 2, RAMB18E2 = 1; DP16KD = 1 block of 18 Kb) and both costs."""
    if target not in BLOCK_RAMS:
        raise ConfigError(f"rom_mapping: unknown target {target!r}; choose one of {', '.join(BLOCK_RAMS)}")
    if depth < 1 or width < 1:
        raise ConfigError(f"ROM depth and width must be ≥ 1, got depth={depth}, width={width}")
    logic = int(depth * width * LOGIC_COST_ROM[target])
    chosen: tuple[float, int, BlockRam] | None = None
    for ram in BLOCK_RAMS[target]:
        best: tuple[float, int] | None = None
        for i, w in enumerate(ram.widths):
            slices = -(-depth // (1 << (ram.abits - i)))
            blocks = -(-(slices * width) // w)
            cost = ram.cost * blocks + ROM_MUX_COST * (slices - 1) * width + ROM_PORT_COST
            if best is None or cost < int(best[0]):
                best = (cost, blocks)
        if chosen is None or best[0] < chosen[0]:
            chosen = (best[0], best[1], ram)
    cost, blocks, ram = chosen
    if cost < logic:
        return {"primitive": ram.primitive, "blocks": blocks, "bram18": blocks * ram.bram18,
                "cost": cost, "logic_cost": logic}
    return {"primitive": "LUT", "blocks": 0, "bram18": 0, "cost": cost, "logic_cost": logic}


#: The candidates memory_libmap weighs for a RAM with one write port and one synchronous read port of
#: its own (the weight ring), by kind, each in the library's order (which settles ties). Block RAMs:
#: (geometry, its narrowest usable data width). The write and the read take a port each (the write
#: and read addresses differ, so they cannot share one): on a true-dual-port block A writes and B
#: reads, at any widths; synth_xilinx -family xcup passes -D HAS_MIXWIDTH_SDP, so the simple-dual-port
#: RAMB36E2/RAMB18E2 (`$__XILINX_BLOCKRAM_SDP_`) take any of their widths too; ECP5's PDPW16KD writes
#: 36 bits at once, which memory_libmap narrows by write enables down to its 9-bit byte, not below.
RAM_BLOCK_RAMS: dict[str, tuple[tuple[BlockRam, int], ...]] = {
    "xcup": tuple((ram, 1) for ram in BLOCK_RAMS["xcup"]),
    "ecp5": ((BLOCK_RAMS["ecp5"][0], 1), (BLOCK_RAMS["ecp5"][1], 9)),
}
#: The LUT RAMs that can win for one write and one (synchronous, emulated by a register after the
#: asynchronous read) read port: xcup's `$__XILINX_LUTRAM_SDP_` at ABITS 6 (RAM64M8: 64 words × 7
#: bits) and ABITS 5 (RAM32M16: 32 × 14), share/xilinx/lutrams_xcu.txt, cost 16 and `widthscale`d;
#: ECP5's TRELLIS_DPR16X4 (16 × 4, cost 4, share/lattice/lutrams_trellis.txt). xcup's other LUT RAMs
#: for this port pair (the DP, QP and OP RAMs, which spend a read-write port on the write, and
#: RAM32X16DR8, which reads 7 of its 14 written bits) hold fewer bits per cell at the same or a
#: smaller depth and always cost more; the single-port ones cannot take two addresses.
LUT_RAMS: dict[str, tuple[BlockRam, ...]] = {
    "xcup": (BlockRam("RAM64M8", 0, 6, (7,), 16), BlockRam("RAM32M16", 0, 5, (14,), 16)),
    "ecp5": (BlockRam("TRELLIS_DPR16X4", 0, 4, (4,), 4),),
}
#: A `widthscale`d cell costs its cost per word bit it stores, cost·W/w per block of addresses
#: (mem.width / unit width, not rounded up); the others cost per cell.
LUT_RAM_WIDTHSCALE = {"xcup": True, "ecp5": False}
RAM_BYTE_BITS = 9       # both targets' block RAMs write in 9-bit bytes: a word is padded to whole bytes
LOGIC_COST_RAM = 1.0    # memory_libmap's cost of one RAM bit in flip-flops: its default, kept by both scripts
RAM_DEMUX_COST = 0.5    # per block of addresses, when there are several (the write-enable decoder)


def ram_mapping(depth: int, width: int, target: str = "xcup") -> dict:
    """What Yosys 0.70's memory_libmap makes of a RAM of `depth` words × `width` bits with one write
    port (rising edge, one write enable for the whole word) and one synchronous read port of its own
    (falling edge: the weight ring), for `target` "xcup" (synth_xilinx -family xcup) or "ecp5"
    (synth_ecp5). The mixed clock edges map: on xcup the block RAM's read clock gets an inverter
    (a `$not`), on ECP5 the port's clock polarity is a parameter; and with the two ports on opposite
    edges memory_libmap has no read-during-write behaviour to honour.

    Its rule, found by experiment and by reading the pass: for every geometry and every data width w
    it offers (the i-th of a block's widths holds 2^(abits − i) words; LUT RAMs have one), the RAM
    needs s = ⌈depth / words⌉ blocks of addresses; its word is padded to whole bytes of b =
    min(9, w) bits on a block RAM (b = w on a LUT RAM), and it needs n = ⌈s·⌈width/b⌉·b / w⌉ cells.
    It costs n·cost (xcup's LUT RAMs: 16·s·width / w, their `widthscale`), plus 0.5·(s − 1)·width
    (the read multiplexer), plus 0.5·s when s > 1 (the write-enable decoder), plus 2 (the read port
    of its own). The cheapest width of each geometry (a later one only if cheaper than the earlier's
    cost truncated to an integer), then the cheapest LUT RAM and the cheapest block RAM (the first on
    a tie) are weighed against flip-flops, at cost depth·width: the LUT RAM, then the block RAM,
    replaces the choice so far if it costs less than that choice's cost truncated to an integer.

    Returns the primitive (RAMB36E2, RAMB18E2, DP16KD; RAM64M8, RAM32M16, TRELLIS_DPR16X4 for LUT
    RAM; "FF" for flip-flops), its count `blocks` (0 for flip-flops), `bram18` (RAMB36E2 = 2,
    RAMB18E2 = 1, DP16KD = 1, LUT RAM 0), the chosen candidate's `cost` (the cheapest RAM's for
    flip-flops) and `logic_cost`."""
    if target not in RAM_BLOCK_RAMS:
        raise ConfigError(f"ram_mapping: unknown target {target!r}; choose one of {', '.join(RAM_BLOCK_RAMS)}")
    if depth < 1 or width < 1:
        raise ConfigError(f"RAM depth and width must be ≥ 1, got depth={depth}, width={width}")

    def geometry(ram: BlockRam, narrowest: int, byte: int, scaled: bool) -> tuple[float, int] | None:
        best: tuple[float, int] | None = None
        for i, w in enumerate(ram.widths):
            if w < narrowest:
                continue
            slices = -(-depth // (1 << (ram.abits - i)))
            b = min(byte, w) if byte else w
            padded = -(-width // b) * b
            cells = -(-(slices * padded) // w)
            cost = (ram.cost * slices * width / w if scaled else ram.cost * cells) \
                + ROM_MUX_COST * (slices - 1) * width + (RAM_DEMUX_COST * slices if slices > 1 else 0) + ROM_PORT_COST
            if best is None or cost < int(best[0]):
                best = (cost, cells)
        return best

    kinds = ([(ram, 1, 0, LUT_RAM_WIDTHSCALE[target]) for ram in LUT_RAMS[target]],
             [(ram, narrowest, RAM_BYTE_BITS, False) for ram, narrowest in RAM_BLOCK_RAMS[target]])
    logic = int(depth * width * LOGIC_COST_RAM)
    chosen: tuple[float, int, BlockRam] | None = None
    cheapest: float | None = None
    limit = logic
    for candidates in kinds:
        best: tuple[float, int, BlockRam] | None = None
        for ram, narrowest, byte, scaled in candidates:
            found = geometry(ram, narrowest, byte, scaled)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], found[1], ram)
        if best is None:
            continue
        cheapest = best[0] if cheapest is None else min(cheapest, best[0])
        if best[0] < limit:
            chosen, limit = best, int(best[0])
    if chosen is None:
        return {"primitive": "FF", "blocks": 0, "bram18": 0, "cost": cheapest, "logic_cost": logic}
    cost, blocks, ram = chosen
    return {"primitive": ram.primitive, "blocks": blocks, "bram18": blocks * ram.bram18, "cost": cost,
            "logic_cost": logic}


def weight_rom_words(program: Program, codebook: bool) -> int:
    """Words of W8.hex (dense conv layers) or W2.hex (codebook layers): every term block of every
    channel group at its storage width on whole bus words, one word per load cycle (docs/hardware.md §6)."""
    cfg = program.config
    return sum(channel_groups(l, cfg) * term_blocks(l, cfg) * block_words(l, cfg)
               for l in program.layers if l.kind == "conv" and l.is_codebook == codebook)


def weight_rom_width(program: Program, codebook: bool) -> int:
    """The bits of a W8.hex (W2.hex) word that some word uses: every term block starts on a word
    (§6), so when every layer's block fits one word (a small array) the words' top bits are always 0."""
    cfg = program.config
    used = [cfg.bus_bits if block_words(l, cfg) > 1 else group_channels(l, cfg) * cfg.simd * storage_bits(l)
            for l in program.layers if l.kind == "conv" and l.is_codebook == codebook]
    return max(used, default=cfg.bus_bits)


def activation_bytes(program: Program) -> int:
    """Bytes of the activation memory (the generator's ACT_DEPTH): what the program's allocation
    needs, or, for a hand-built program, the highest map end its descriptors address."""
    alloc = program.metadata.get("activation_memory")
    if alloc:
        return max(1, int(alloc["bytes"]))
    ends = [1]
    for layer in program.layers:
        ends.append(layer.in_base + layer.in_elems)
        if layer.kind == "add":
            ends.append(layer.in2_base + layer.in_elems)
        if not layer.raw_output:
            ends.append(layer.out_base + layer.out_elems)
        if layer.channel_map is not None and len(layer.channel_map):
            ends.append(int(layer.channel_map.max()) + layer.in_elems)
    return max(ends)


def rtl_memory_depths(program: Program, images: int = 1) -> dict[str, int]:
    """The depths bitsmith.rtl.generate gives the top's memories (its `memory_sizes`, which reads
    the ROMs' depths from the memory files): here from the program, with In8.hex holding `images`
    images. tests/rtl/test_synth_bram.py checks that the two agree."""
    cfg = program.config
    raw = [layer.out_elems for layer in program.layers if layer.raw_output]
    act = activation_bytes(program)
    return {
        "ACT_DEPTH": act,
        **rtl_banking(program, act),
        "RING_DEPTH": ring_depth(program),
        "MAXCH": max(layer.out_ch for layer in program.layers),
        "PARAM_DEPTH": param_words(program),
        "W8_DEPTH": max(1, weight_rom_words(program, codebook=False)),
        "W2_DEPTH": max(1, weight_rom_words(program, codebook=True)),
        "CB_DEPTH": max(1, CODEBOOK_SIZE * sum(l.is_codebook for l in program.layers)),
        "IN8_DEPTH": max(1, images * input_cycles(program.layers[0], cfg)),
        "LS_DEPTH": 1 + sum(layer.kind == "conv" for layer in program.layers),
        "OUT32_DEPTH": max(raw) if raw else 1,
    }


#: Bits per entry of the per-channel tables: bias, multiplier, shift, channel map (input address).
CHANNEL_TABLE_BITS = ACC_BITS + MULTIPLIER_BITS + SHIFT_FIELD_BITS + PARAM_WORD_BITS


#: Kinds of memory in the top: a ROM (block RAM or LUTs, `rom_mapping`); a multi-ported array with
#: several write ports (flip-flops: no RAM primitive has more than two write ports); one with a
#: single write port and many asynchronous reads (Yosys builds LUT RAM, one copy per few read ports,
#: or flip-flops where its cost model finds them cheaper). None of them is block RAM.
MEMORY_KINDS = ("rom", "ram", "registers", "lutram")


def rom(name: str, rtl: str, depth: int, width: int, note: str, used_width: int | None = None) -> dict:
    """A ROM of the top ($readmemh, one synchronous read): its Yosys mapping. `used_width`: the bits
    of a word that are not 0 in every word (Yosys drops the others before it maps the memory)."""
    used = width if used_width is None else used_width
    x, e = rom_mapping(depth, used, "xcup"), rom_mapping(depth, used, "ecp5")
    where = (f"{x['blocks']} {x['primitive']}" if x["blocks"] else
             f"LUTs (memory_libmap's cost: a block {x['cost']:g} ≥ logic {x['logic_cost']})")
    if used != width:
        where += f" (the words' top {width - used} bits are 0 in every word)"
    return {"name": name, "rtl": rtl, "kind": "rom", "depth": depth, "width": width, "used_width": used,
            "bits": depth * width, "bram18": x["bram18"], "primitive": x["primitive"], "blocks": x["blocks"],
            "ecp5_dp16kd": e["blocks"], "note": f"{note}; {where}"}


def ram(name: str, rtl: str, depth: int, width: int, note: str) -> dict:
    """A RAM of the top with one write and one synchronous read port: its Yosys mapping."""
    x, e = ram_mapping(depth, width, "xcup"), ram_mapping(depth, width, "ecp5")
    # Small RAMs become LUT RAM (or flip-flops): their bits count there, as the arrays' do.
    kind = "ram" if x["bram18"] else "registers" if x["primitive"] == "FF" else "lutram"
    return {"name": name, "rtl": rtl, "kind": kind, "depth": depth, "width": width, "bits": depth * width,
            "bram18": x["bram18"], "primitive": x["primitive"], "blocks": x["blocks"],
            "ecp5_dp16kd": e["blocks"] if e["primitive"] == "DP16KD" else 0,
            "note": f"{note}; {x['blocks']} {x['primitive']}" if x["blocks"] else f"{note}; flip-flops"}


def banked_ram(name: str, rtl: str, banks: int, depth: int, width: int, note: str) -> dict:
    """`banks` RAMs of `depth` × `width`, each as `ram` maps it (the activation memory: Yosys sees
    memories `rtl[0].mem` … `rtl[banks − 1].mem`); the counts are the whole memory's."""
    one = ram(name, f"{rtl}[*].mem", depth, width, note)
    return one | {"banks": banks, "bits": banks * one["bits"], "bram18": banks * one["bram18"],
                  "blocks": banks * one["blocks"], "ecp5_dp16kd": banks * one["ecp5_dp16kd"],
                  "note": f"{banks} × ({one['note']})"}


def multiported(name: str, rtl: str, kind: str, depth: int, width: int, note: str) -> dict:
    """A multi-ported array of the top (kind "registers" or "lutram"): no block RAM."""
    return {"name": name, "rtl": rtl, "kind": kind, "depth": depth, "width": width, "bits": depth * width,
            "bram18": 0, "primitive": "FF" if kind == "registers" else "LUTRAM", "blocks": 0, "ecp5_dp16kd": 0,
            "note": note}


def memories(program: Program, images: int = 1) -> list[dict]:
    """The generated top's memories (bitsmith.rtl.generate, templates/bitsmith_top.v) at its depths:
    the ROMs with the block RAMs Yosys infers, the multi-ported arrays as flip-flops or LUT RAM
    (MEMORY_KINDS). `images`: the images In8.hex holds (the input ROM's depth; a run reads one)."""
    cfg = program.config
    d = rtl_memory_depths(program, images)
    r, bus = cfg.pe, cfg.bus_bits
    lanes = r * math.prod(array_lanes(program))
    return [
        rom("param memory", "param_mem", d["PARAM_DEPTH"], PARAM_WORD_BITS,
            "param.hex: layer count, descriptors, per-channel bias / m / s / input address"),
        rom("W8 memory", "w8_mem", d["W8_DEPTH"], bus, "W8.hex: the dense layers' weights, one bus word per load cycle",
            weight_rom_width(program, codebook=False)),
        rom("W2 memory", "w2_mem", d["W2_DEPTH"], bus, "W2.hex: the codebook layers' 2-bit indices",
            weight_rom_width(program, codebook=True)),
        rom("codebook memory", "cb8_mem", d["CB_DEPTH"], CODEBOOK_VALUE_BITS, "CB8.hex: four values per codebook layer"),
        rom("input memory", "in8_mem", d["IN8_DEPTH"], bus,
            f"In8.hex: {images} image(s) of {input_cycles(program.layers[0], cfg)} bus words"),
        banked_ram("activation memory", "act_bank", d["ACT_BANKS"], d["ACT_BANK_DEPTH"], MAX_ACT_BITS,
                   f"every map, one byte per code ({d['ACT_DEPTH']} bytes), in {d['ACT_BANKS']} banks: byte a in "
                   f"bank a mod {d['ACT_BANKS']} at word a >> {d['ACT_SHIFT']} (bitsmith.accel.banks); each bank one "
                   "write and one synchronous read a cycle"),
        ram("weight ring", "wring", d["RING_DEPTH"], ring_word_entries(program) * WEIGHT_BYTE_BITS,
            f"{d['RING_DEPTH']} words of one term block ({ring_word_entries(program)} 8-bit entries): one write "
            "(the loader's assembled block) and one synchronous read a cycle"),
        rom("load schedule", "ls_mem", d["LS_DEPTH"], SCHEDULE_WORD_BITS,
            "LS.hex: one word per conv layer (blocks, bus words per block, storage width), then 0"),
        multiported("channel tables", "bias_t, mult_t, shift_t, map_t", "lutram", d["MAXCH"], CHANNEL_TABLE_BITS,
                    f"per output channel: bias, multiplier, shift, input address; one write port each (PARAM) and "
                    f"a read for each of the {lanes} accumulator lanes and R pool lanes in the same cycle, "
                    "asynchronous: no block RAM; Yosys makes LUT RAM (RAM64M8, one copy per few read ports) or flip-flops"),
        multiported("output memory", "out32", "registers", d["OUT32_DEPTH"], ACC_BITS,
                    f"raw 32-bit outputs of a last layer without requant, {lanes} writes in one cycle and the host "
                    "port: flip-flops" + ("" if any(l.raw_output for l in program.layers) else "; one unused word")),
    ]


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


def cost_report(program: Program, images: int = 1) -> dict:
    """Per-layer and total resources of the accelerator instance that runs `program` (`images`: the
    images its input ROM holds, `memories`)."""
    cfg = program.config
    if not program.layers:
        raise AcceleratorError("cost report: the program has no layers")
    layers = [layer_cost(l, cfg.pe, cfg.simd, cfg.bus_bits) for l in program.layers]
    stored = [row["weight_memory"] for row in layers if row["weight_memory"] is not None]
    dsp = rtl_dsps(program)
    mixq = max(row["dsp"] for row in layers)
    mems = memories(program, images)
    return {
        "config": cfg.to_json(),
        "layers": layers,
        "dsp": dsp | {"mixq_array": mixq,
                      "array_layer": next(row["name"] for row in layers if row["dsp"] == mixq) if mixq else None},
        "memories": mems,
        "bram18": {"total": sum(m["bram18"] for m in mems), **{m["name"]: m["bram18"] for m in mems}},
        "ecp5_dp16kd": sum(m["ecp5_dp16kd"] for m in mems),
        "register_bits": sum(m["bits"] for m in mems if m["kind"] == "registers"),
        "lutram_bits": sum(m["bits"] for m in mems if m["kind"] == "lutram"),
        "finn_bram18": sum(row["finn_bram18"] for row in layers),
        "weight_memory": {key: sum(m[key] for m in stored) for key in
                          ("dense_bits", "stored_bits", "index_bits", "nnz", "dense_bram18", "stored_bram18")},
        "logic": logic_estimate(program, dsp["array"]),
    }
