"""Deliberate bugs for testing the checkers: the same three the generated Verilog can be built with
(bitsmith.rtl.generate.FAULTS), applied here to a compiled Program's parameters so the cycle model
computes what the faulty hardware would.

- `shift_off_by_one`: every requant shifts by s + 1;
- `drop_bias`: accumulators start at 0 instead of the bias;
- `no_zero_point`: x − z computed as x (conv inputs, and the sum-mode pool lanes: average pool,
  requant, both inputs of an add).
"""

from __future__ import annotations

import copy

from bitsmith.errors import ConfigError

from .program import Program

FAULTS = ("shift_off_by_one", "drop_bias", "no_zero_point")


def with_fault(program: Program, fault: str | None) -> Program:
    """A copy of `program` with `fault` applied (the program itself when `fault` is None)."""
    if fault is None:
        return program
    if fault not in FAULTS:
        raise ConfigError(f"unknown accelerator fault {fault!r}; choose one of {', '.join(FAULTS)}")
    faulty = copy.deepcopy(program)
    changed = 0
    for layer in faulty.layers:
        if fault == "shift_off_by_one" and layer.has_requant:
            layer.shift = layer.shift + 1
            changed += 1
        elif fault == "drop_bias" and layer.kind == "conv" and layer.bias is not None and layer.bias.any():
            layer.bias = layer.bias * 0
            changed += 1
        elif fault == "no_zero_point" and layer.kind in ("conv", "avgpool", "requant", "add") and \
                (layer.z_in != 0 or (layer.kind == "add" and layer.z_in2 != 0)):
            layer.z_in = 0
            layer.z_in2 = 0
            changed += 1
    if not changed:
        # A fault that changes nothing would "pass" and prove nothing about the checker: refuse it.
        what = {"shift_off_by_one": "no layer has a requant", "drop_bias": "no layer has a non-zero bias",
                "no_zero_point": "every layer input has zero point 0"}[fault]
        raise ConfigError(f"fault {fault!r} would change nothing in this graph ({what}); "
                          f"choose another of {', '.join(FAULTS)}")
    return faulty
