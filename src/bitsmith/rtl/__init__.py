"""Generated Verilog for the accelerator of docs/hardware.md (docs/rtl.md): templates, testbench,
simulator runners and the bit-exact checker against the integer engine."""

from .generate import FAULTS, generate_rtl

__all__ = ["FAULTS", "generate_rtl"]
