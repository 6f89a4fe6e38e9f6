"""The generated Verilog is `verilator --lint-only -Wall` clean (issue 16 item 5): the top as simulated,
the top as synthesised (SYNTHESIS defined, as Yosys reads it) and the testbench, for the configurations
the RTL tests run: LeNet-5 dense, codebook and mixed-precision, every layer kind, grouped convs,
residual adds, concat / reorg / lone requants, two random DAGs, several R×C and bus widths, and the
injected faults.
A warning that must stay carries a `verilator lint_off` waiver with its reason in the template."""

import pytest

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.memory import write_memory
from bitsmith.accel.timing import program_cycles
from bitsmith.integer import engine
from bitsmith.rtl.generate import DESIGN_FILES, FAULTS, TESTBENCH_FILE, TESTBENCH_TOP, generate_rtl
from bitsmith.rtl.simulators import SimulationError, lint_verilator, run_testbench
from bitsmith.verify import verification_inputs
from tests.helpers import golden, needs_verilator
from tests.random_graphs import random_graph
from tests.rtl.test_rtl_dag import CASES as DAG_CASES, SMALL

# name -> (graph maker, accelerator configuration, fault)
CONFIGS = {
    "lenet5_w8a8_8x8": (lambda: golden("lenet5_w8a8"), AccelConfig(pe=8, simd=8), None),
    "lenet5_w8a8_16x8": (lambda: golden("lenet5_w8a8"), AccelConfig(pe=16, simd=8), None),
    "lenet5_clipq_codebook": (lambda: golden("lenet5_clipq"), AccelConfig(), None),
    "lenet5_mixed_bits": (lambda: golden("lenet5_mixed"), AccelConfig(), None),
    "mixed_small_4x4": (lambda: golden("mixed_small"), AccelConfig(pe=4, simd=4), None),
    "single_layer_raw_4x4": (lambda: golden("single_layer"), AccelConfig(pe=4, simd=4), None),
    "residual_3x4": (DAG_CASES["residual"], SMALL, None),
    "depthwise_1x3_bus32": (DAG_CASES["depthwise"], AccelConfig(pe=1, simd=3, bus_bits=32, max_kernel=12), None),
    "concat_reorg_requant_3x4": (DAG_CASES["concat_reorg_requant"], SMALL, None),
    "asymmetric_padding_8x8": (DAG_CASES["asymmetric_padding"], AccelConfig(pe=8, simd=8, max_kernel=12), None),
    "random_graph_6_3x4": (lambda: random_graph(6), SMALL, None),     # random DAGs of test_rtl_dag
    "random_graph_7_8x8": (lambda: random_graph(7), AccelConfig(pe=8, simd=8, max_kernel=12), None),
    **{f"fault_{fault}": (lambda: golden("mixed_small"), AccelConfig(pe=4, simd=4), fault) for fault in FAULTS},
}


def _generate(tmp_path, name):
    make, config, fault = CONFIGS[name]
    graph = make()
    program = compile_graph(graph, config)
    outputs = engine.run(graph, verification_inputs(graph, 1, "random").x, return_all=True)
    write_memory(program, outputs[program.input_name], tmp_path / "memory", expected=outputs)
    generate_rtl(program, tmp_path / "rtl", images=1, fault=fault, memory_dir=tmp_path / "memory")
    return program, tmp_path / "rtl"


@needs_verilator
@pytest.mark.parametrize("name", list(CONFIGS))
def test_generated_rtl_is_verilator_wall_clean(tmp_path, name):
    program, rtl = _generate(tmp_path, name)
    design = list(DESIGN_FILES)
    assert lint_verilator(rtl, design, "bitsmith_top") == []
    assert lint_verilator(rtl, design, "bitsmith_top", defines=("SYNTHESIS",)) == []
    assert lint_verilator(rtl, design + [TESTBENCH_FILE], TESTBENCH_TOP) == []
    if name == "lenet5_clipq_codebook":
        assert any(layer.is_codebook for layer in program.layers)


@needs_verilator
def test_lint_reports_what_it_finds(tmp_path):
    """The check can fail: a width mismatch and a blocking assignment in a clocked process are
    reported as warnings, and a file Verilator cannot parse is an error, not a clean result."""
    (tmp_path / "bad.v").write_text(
        "module bad(input wire clk, input wire [7:0] a, output reg [3:0] q);\n"
        "    always @(posedge clk) q = a;\n"
        "endmodule\n")
    warnings = lint_verilator(tmp_path, ["bad.v"], "bad")
    assert any("WIDTH" in w for w in warnings) and any("BLKSEQ" in w for w in warnings)
    (tmp_path / "broken.v").write_text("module broken(; endmodule\n")
    with pytest.raises(SimulationError, match="lint-only failed"):
        lint_verilator(tmp_path, ["broken.v"], "broken")


@pytest.mark.parametrize("sim, name", [("icarus", "mixed_small_4x4"), ("icarus", "depthwise_1x3_bus32"),
                                       ("icarus", "lenet5_mixed_bits"),
                                       pytest.param("verilator", "mixed_small_4x4",
                                                    marks=[pytest.mark.slow, needs_verilator])])
def test_the_synthesis_form_simulates_bit_and_cycle_exact(tmp_path, sim, name):
    """The top as Yosys reads it (SYNTHESIS: the operand fetch an always @* process instead of the
    falling-edge one, the activation memory one RAM per bank with its own write and falling-edge
    read) gives the same values and cycles as the form the tests simulate, on every layer kind, a
    grouped conv (a port per row) and two pixel lanes (mode 4): the two forms are one circuit."""
    program, rtl = _generate(tmp_path, name)
    result = run_testbench(program, tmp_path / "memory", rtl, images=1, sim=sim, defines=("SYNTHESIS",))
    assert result["timeout"] is None and result["summary"] == {"mismatches": 0, "images": 1}
    assert set(result["mismatches_per_layer"]) == set(range(len(program.layers)))
    assert result["cycles_per_image"] == [program_cycles(program)["total"]]
