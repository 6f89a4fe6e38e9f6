"""The generated Verilog (bitsmith.rtl, run by bitsmith.verify) against the integer engine: every
output value of every layer equal, and the RTL's cycle count equal to docs/hardware.md §5, in Icarus
(and Verilator)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.precision import assignment_cost
from bitsmith.accel.memory import write_memory
from bitsmith.cli import app
from bitsmith.errors import ConfigError, DataError
from bitsmith.rtl.generate import generate_rtl
from bitsmith.rtl.simulators import SimulationError, parse_log
from bitsmith.verify import verification_inputs, verify
from tests.helpers import golden, needs_verilator


def run_rtl(graph, images=1, sim="icarus", config=None, data=None, work_dir=None, fault=None):
    """`images` test images and as many random-code images (only the random ones with data="random")."""
    inputs = verification_inputs(graph, images, data)
    return verify(graph, "rtl", inputs, sim=sim, config=config or AccelConfig(), work_dir=work_dir, fault=fault,
                  raise_errors=True)


def _assert_exact(report, images):
    assert report.images == images
    assert report.complete and report.details["timeout"] is None
    for row in report.layers:
        assert row.elements > 0 and row.elements % images == 0, row
        assert row.mismatches == 0, row
        assert row.cycles == row.formula_cycles, row
    assert report.mismatches == 0
    assert report.cycles_per_image == [report.formula_cycles] * images
    assert report.cycles_equal and report.passed


def test_lenet_w8a8_real_images_bit_exact_with_formula_cycles_in_icarus(tmp_path):
    g = golden("lenet5_w8a8")
    result = run_rtl(g, images=1, sim="icarus", config=AccelConfig(pe=8, simd=8), work_dir=tmp_path)
    assert result.inputs.startswith("fashion-mnist")     # one test image and one random-code image
    assert [row.kind for row in result.layers] == ["conv", "maxpool", "conv", "maxpool", "conv", "conv", "conv"]
    _assert_exact(result, 2)
    # Hand-checked §5 counts at R = C = 8, bus 64: conv1 = 22 + 18 (param) + 128 (input) + 0 (weights:
    # its 4 blocks of 8·8 bytes, 32 bus words, load during PARAM) + 784·4 (compute) + 1 (drain: only the
    # last pixel's write takes a cycle of its own) + 1 = 3306.
    assert result.layers[0].cycles == 3306
    # the loader streams conv3's blocks into the weight ring while conv1, the pools and conv2 compute
    # (docs/hardware.md §5): fc1 and fc2 wait, conv3 does not
    assert result.cycles_per_image == [8494, 8494]


def test_lenet_clipq_codebook_bit_exact_in_icarus(tmp_path):
    g = golden("lenet5_clipq")   # 2-bit codebook conv1..fc1 (CLIP-Q p = 0.4), dense int8 fc2, with bias
    program = compile_graph(g, AccelConfig())
    assert [layer.is_codebook for layer in program.layers if layer.kind == "conv"] == [True, True, True, True, False]
    result = run_rtl(g, images=1, sim="icarus", work_dir=tmp_path)
    _assert_exact(result, 2)


def test_lenet_mixed_precision_bit_exact_with_the_predicted_cycles_in_icarus(tmp_path):
    g = golden("lenet5_mixed")   # per-layer widths as a mixed-precision search gives them (docs/mixed-precision.md)
    program = compile_graph(g, AccelConfig())
    assert [l.weight_bits for l in program.layers if l.kind == "conv"] == [2, 5, 3, 7, 8]
    assert [l.in_bits for l in program.layers if l.kind == "conv"] == [8, 3, 6, 2, 4]
    result = run_rtl(g, images=1, sim="icarus", work_dir=tmp_path)
    _assert_exact(result, 2)
    assert result.cycles_per_image == [assignment_cost(program)["cycles"]] * 2  # the search's cost function


@pytest.mark.parametrize("case", ["mixed", "single_layer", "single_group_full", "one_pixel"])
def test_fsm_corner_cases_bit_exact(tmp_path, case):
    config = AccelConfig(pe=4, simd=4)
    if case == "mixed":        # every layer kind, partial last groups, 3 images back to back
        g, images = golden("mixed_small"), 3
    elif case == "single_layer":   # a 1-layer program whose only layer is first and last (raw output)
        g, images = golden("single_layer"), 2
    elif case == "single_group_full":   # exactly R channels: one full group; K = 9 < C·T (tail terms)
        g, images = golden("single_group_full"), 1
    else:                      # 1x1 maps only: one pixel per group, many groups
        g, images = golden("one_pixel"), 1
    result = run_rtl(g, images=images, sim="icarus", config=config, data="random", work_dir=tmp_path)
    _assert_exact(result, images)


# Packing modes the compiler would not pick here (it picks the fastest), forced onto layers that allow
# them, so the RTL meets the corners: mode 4 on a one-pixel layer (odd P: the pass's second pixel
# is absent) and on 84 = 10·8 + 4 channels (a partial last group of 2R), mode 2 on a grouped conv
# (channel pairs share the channel map's input). Each is allowed there: 4-bit weights × 4-bit codes fit
# mode 4's 9-bit fields, and grouped_conv has two output channels per convolution group.
FORCED_PACKING = {"lenet5_w4a4_pc": {"q_conv3": 4, "q_fc1": 4}, "grouped_conv": {"q_0": 2}}


@pytest.mark.parametrize("name", list(FORCED_PACKING))
def test_forced_packing_corners_bit_and_cycle_exact(tmp_path, name):
    from bitsmith.accel.simulate import mismatches, simulate
    from bitsmith.accel.timing import program_cycles
    from bitsmith.integer import engine
    from bitsmith.rtl.simulators import run_testbench

    g = golden(name)
    program = compile_graph(g, AccelConfig(pe=4, simd=4))
    for layer in program.layers:
        if layer.name in FORCED_PACKING[name]:
            layer.packing = FORCED_PACKING[name][layer.name]
    forced = [layer for layer in program.layers if layer.name in FORCED_PACKING[name]]
    assert len(forced) == len(FORCED_PACKING[name])
    outputs = engine.run(g, verification_inputs(g, 1, "random").x, return_all=True)
    codes = outputs[program.input_name]
    model = simulate(program, codes)
    assert sum(mismatches(model, outputs).values()) == 0
    assert model.total_cycles == program_cycles(program)["total"]
    write_memory(program, codes, tmp_path / "memory", expected=outputs)
    log = run_testbench(program, tmp_path / "memory", tmp_path / "rtl", images=1)
    assert log["summary"] == {"mismatches": 0, "images": 1} and log["timeout"] is None
    assert log["cycles_per_image"] == [program_cycles(program)["total"]]


@pytest.mark.parametrize("fault", ["shift_off_by_one", "drop_bias", "no_zero_point"])
def test_injected_hardware_fault_fails_the_check(tmp_path, fault):
    g = golden("mixed_small")
    result = run_rtl(g, images=1, sim="icarus", config=AccelConfig(pe=4, simd=4), data="random",
                     work_dir=tmp_path, fault=fault)
    assert not result.passed
    assert result.mismatches > 0
    printed = result.details["printed_mismatches"]
    first = printed[0]
    assert first["got"] != first["want"] and first["image"] == 0
    assert len(printed) == min(20, result.mismatches)  # printing is capped
    assert result.cycles_equal   # a datapath bug does not change the timing
    # the report names the first faulty layer, with the testbench's first mismatch there
    named = result.first_mismatch
    assert named["label"] == f"L{first['layer']:02d}" and named["layer"] == result.layers[first["layer"]].name
    assert {k: named[k] for k in ("image", "channel", "y", "x", "got", "want")} == \
        {k: first[k] for k in ("image", "channel", "y", "x", "got", "want")}
    # The faulty design really differs from the engine there: the expected file holds `want`.
    lines = (tmp_path / "memory" / f"expected/L{first['layer']:02d}.hex").read_text().split()
    layer = compile_graph(g, AccelConfig(pe=4, simd=4)).layers[first["layer"]]
    k = (first["channel"] * layer.out_h + first["y"]) * layer.out_w + first["x"]
    bits = 32 if layer.raw_output else 8
    value = int(lines[k], 16)
    if (layer.raw_output or layer.out_signed) and value >= 1 << (bits - 1):
        value -= 1 << bits
    assert value == first["want"]


@needs_verilator
def test_verilator_gives_the_same_results_as_icarus(tmp_path):
    g = golden("mixed_small")
    config = AccelConfig(pe=4, simd=4)
    icarus = run_rtl(g, images=2, sim="icarus", config=config, data="random", work_dir=tmp_path / "i")
    verilator = run_rtl(g, images=2, sim="verilator", config=config, data="random", work_dir=tmp_path / "v")
    _assert_exact(verilator, 2)
    assert [r.cycles for r in verilator.layers] == [r.cycles for r in icarus.layers]
    assert verilator.cycles_per_image == icarus.cycles_per_image


def test_generate_rejects_unknown_fault_and_missing_images(tmp_path):
    g = golden("mixed_small")
    program = compile_graph(g, AccelConfig(pe=4, simd=4))
    with pytest.raises(ConfigError, match="unknown RTL fault 'flip'"):
        generate_rtl(program, tmp_path / "rtl", fault="flip", memory_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown simulator 'modelsim'"):
        run_rtl(g, sim="modelsim", data="random", work_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(DataError, match="no param.hex"):
        generate_rtl(program, tmp_path / "rtl", memory_dir=tmp_path)
    codes = torch.zeros((1, 3, 16, 16), dtype=torch.int64)
    write_memory(program, codes, tmp_path / "img")
    with pytest.raises(DataError, match="holds 1 image"):
        generate_rtl(program, tmp_path / "rtl", images=2, memory_dir=tmp_path / "img")


def test_parse_log_counts_and_requires_a_summary():
    log = "\n".join([
        "MISMATCH image=0 layer=1 channel=2 y=3 x=4 got=-5 want=6",
        "LAYER image=0 layer=0 cycles=100 mismatches=0",
        "LAYER image=0 layer=1 cycles=50 mismatches=7",
        "CYCLES image=0 total=151",
        "LAYER image=1 layer=0 cycles=100 mismatches=1",
        "LAYER image=1 layer=1 cycles=50 mismatches=0",
        "CYCLES image=1 total=151",
        "SUMMARY mismatches=8 images=2",
    ])
    parsed = parse_log(log)
    assert parsed["mismatches_per_layer"] == {0: 1, 1: 7}
    assert parsed["cycles_per_image"] == [151, 151]
    assert parsed["layer_cycles"] == {0: [100, 100], 1: [50, 50]}
    assert parsed["printed_mismatches"] == [{"image": 0, "layer": 1, "channel": 2, "y": 3, "x": 4, "got": -5, "want": 6}]
    assert parsed["summary"] == {"mismatches": 8, "images": 2}
    with pytest.raises(SimulationError, match="no SUMMARY"):
        parse_log(log.rsplit("\n", 1)[0])


def test_cli_rtl_json_and_exit_codes(tmp_path):
    g = golden("mixed_small")
    g.save(tmp_path / "g")
    runner = CliRunner()
    args = ["rtl", str(tmp_path / "g"), "--images", "1", "--pe", "4", "--simd", "4", "--data", "random", "--json"]
    ok = runner.invoke(app, args + ["--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output)
    assert doc["passed"] and doc["mismatches"] == 0 and doc["cycles_per_image"] == [doc["formula_cycles"]]
    bad = runner.invoke(app, args + ["--out", str(tmp_path / "bad"), "--fault", "shift_off_by_one"])
    assert bad.exit_code == 1
    assert json.loads(bad.output)["mismatches"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("which", ["w8a8", "clipq"])
def test_twenty_real_images_in_icarus(tmp_path, which):
    g = golden("lenet5_w8a8" if which == "w8a8" else "lenet5_clipq")
    result = run_rtl(g, images=20, sim="icarus", work_dir=tmp_path)
    _assert_exact(result, 40)


@pytest.mark.slow
@needs_verilator
def test_twenty_real_images_in_verilator(tmp_path):
    result = run_rtl(golden("lenet5_w8a8"), images=20, sim="verilator", work_dir=tmp_path)
    _assert_exact(result, 40)
