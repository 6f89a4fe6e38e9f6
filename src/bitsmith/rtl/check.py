"""The RTL check: graph → program → memory images → Verilog → simulation → comparison.

`run_rtl` compiles an IntegerGraph for the accelerator (bitsmith.accel.compiler), writes the
`$readmemh` images with the integer engine's outputs for real test images
(bitsmith.accel.images), generates the Verilog and its testbench (bitsmith.rtl.generate), runs it
in Icarus or Verilator, and reports mismatches per layer and RTL cycles next to the §5 formula
(bitsmith.accel.timing). It passes only with zero mismatches and equal cycle counts.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bitsmith.accel.compiler import compile_graph
from bitsmith.accel.config import AccelConfig
from bitsmith.accel.images import sample_inputs, write_images
from bitsmith.accel.timing import program_cycles
from bitsmith.errors import ConfigError
from bitsmith.integer.graph import IntegerGraph

from .generate import TESTBENCH_TOP, generate_rtl
from .simulators import SIMULATORS, run_simulator


def run_rtl(graph: IntegerGraph, images: int = 1, sim: str = "icarus", pe: int = 8, simd: int = 8,
            waves: bool = False, *, config: AccelConfig | None = None, work_dir: str | os.PathLike | None = None,
            fault: str | None = None, data: str | None = None, data_dir: str | None = None,
            timeout: float | None = None) -> dict:
    """Run `images` test images of the graph's data set (Fashion-MNIST for LeNet-5; `data="random"`
    for shapes no data set has) through the generated RTL and compare every layer with the engine.

    `config` overrides `pe`/`simd`; `work_dir` keeps the images and the Verilog (default: a new
    temporary folder, reported as `work_dir`); `fault` injects a deliberate bug (generate.FAULTS).
    Returns a dict with `passed`, per-layer rows (mismatches, RTL and formula cycles), the cycles
    per image, the first printed mismatches and wall times.
    """
    if sim not in SIMULATORS:
        raise ConfigError(f"unknown simulator {sim!r}; choose one of {', '.join(SIMULATORS)}")
    t0 = time.perf_counter()
    config = config or AccelConfig(pe=pe, simd=simd)
    program = compile_graph(graph, config)
    x, source = sample_inputs(graph, images, data, data_dir)
    outputs = graph.run(x, return_all=True)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="bitsmith_rtl_"))
    image_dir, rtl_dir = work / "images", work / "rtl"
    write_images(program, outputs[program.input_name], image_dir, expected=outputs)
    manifest = generate_rtl(program, rtl_dir, images=images, fault=fault, image_dir=image_dir)
    t1 = time.perf_counter()
    sources = manifest["files"] + [manifest["testbench"]]
    log = run_simulator(sim, rtl_dir, sources, TESTBENCH_TOP, waves=waves, timeout=timeout)

    formula = program_cycles(program)
    layers = []
    for layer, row in zip(program.layers, formula["layers"]):
        rtl = log["layer_cycles"].get(layer.index, [])
        layers.append({
            "index": layer.index, "name": layer.name, "kind": layer.kind,
            "elements": layer.out_elems * images,
            "mismatches": log["mismatches_per_layer"].get(layer.index, 0),
            "checked_images": len(rtl),
            "rtl_cycles": rtl[0] if rtl else None, "formula_cycles": row["cycles"],
            "cycles_equal": len(rtl) == images and all(c == row["cycles"] for c in rtl),
        })
    cycles = log["cycles_per_image"]
    mismatches = log["summary"]["mismatches"]
    cycles_equal = len(cycles) == images and all(c == formula["total"] for c in cycles)
    complete = log["timeout"] is None and all(row["checked_images"] == images for row in layers)
    return {
        "passed": mismatches == 0 and cycles_equal and complete and all(r["cycles_equal"] for r in layers),
        "simulator": sim, "config": config.to_json(), "images": images, "inputs": source, "fault": fault,
        "layers": layers, "mismatches": mismatches, "complete": complete, "timeout": log["timeout"],
        "cycles_per_image": cycles, "formula_cycles": formula["total"], "cycles_equal": cycles_equal,
        "printed_mismatches": log["printed_mismatches"],
        "wall_s": {"prepare": t1 - t0, "build": log["build_s"], "simulate": log["run_s"],
                   "total": time.perf_counter() - t0},
        "work_dir": str(work), "waves": str(rtl_dir / "tb_bitsmith.vcd") if waves else None,
    }
