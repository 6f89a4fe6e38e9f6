"""Generated Verilog for the accelerator of docs/hardware.md (docs/rtl.md): templates, testbench,
Icarus / Verilator runners and the parser of the testbench's log. The harness that compiles a
graph, writes the memory files with the engine's expected outputs and judges the result is
bitsmith.verify (backend "rtl")."""

from .generate import FAULTS, generate_rtl
from .simulators import SIMULATORS, run_testbench

__all__ = ["FAULTS", "SIMULATORS", "generate_rtl", "run_testbench"]
