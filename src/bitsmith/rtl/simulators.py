"""Run the generated testbench in Icarus Verilog or Verilator and read its log.

Both run the same plain Verilog testbench (`tb_bitsmith.v`); the log lines it prints
(`MISMATCH ...`, `LAYER ...`, `CYCLES ...`, `SUMMARY ...`) are parsed into one result dict.
`run_testbench` is the whole step for a compiled program whose memory files are written:
generate the Verilog, simulate, parse.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bitsmith import progress
from bitsmith.accel.program import Program
from bitsmith.errors import BitsmithError, ConfigError

from .generate import TESTBENCH_TOP, generate_rtl

SIMULATORS = ("icarus", "verilator")

_MISMATCH = re.compile(r"^MISMATCH image=(\d+) layer=(\d+) channel=(\d+) y=(\d+) x=(\d+) got=(-?\d+) want=(-?\d+)")
_LAYER = re.compile(r"^LAYER image=(\d+) layer=(\d+) cycles=(\d+) mismatches=(\d+)")
_CYCLES = re.compile(r"^CYCLES image=(\d+) total=(\d+)")
_SUMMARY = re.compile(r"^SUMMARY mismatches=(\d+) images=(\d+)(?: timeout=1)?")
_TIMEOUT = re.compile(r"^TIMEOUT image=(\d+) cycles=(\d+) state=(\d+) layer=(\d+)")


class SimulationError(BitsmithError):
    """The simulator could not build or run the generated design (the log says why)."""


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ConfigError(f"{tool} is not installed (Debian package {package!r}); it is needed for --sim "
                          f"{'icarus' if tool in ('iverilog', 'vvp') else 'verilator'}")
    return path


def run_tool(cmd: list[str], cwd: Path, what: str, timeout: float | None,
             on_line: Callable[[str], None] | None = None) -> str:
    """Run a tool to completion and return its output (stdout and stderr), each line fed to
    `on_line` (without its newline) as it is printed (progress); SimulationError with the output's tail when it fails or
    outlives `timeout` seconds. An exception raised by `on_line` stops the tool and is raised here
    (a watcher that sees from the log that the run cannot succeed)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    lines: list[str] = []
    stopped: list[BaseException] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None and not stopped:
                try:
                    on_line(line.rstrip("\n"))
                except BaseException as error:   # noqa: BLE001 - handed to the caller's thread
                    stopped.append(error)
                    proc.kill()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SimulationError(f"{what} did not finish within {timeout:g} s ({' '.join(cmd[:3])} ...)") from None
    finally:
        reader.join(timeout=10)
    if stopped:
        raise stopped[0]
    log = "".join(lines)
    if proc.returncode != 0:
        raise SimulationError(f"{what} failed (exit {proc.returncode}) in {cwd}:\n{log[-3000:]}")
    return log


def _run_testbench_binary(cmd: list[str], cwd: Path, what: str, timeout: float | None, images: int | None) -> str:
    """The built testbench, with a progress bar over its images (one CYCLES line each)."""
    with progress.bar(f"{what}: images", images) as advance:
        return run_tool(cmd, cwd, what, timeout, lambda line: advance(1) if line.startswith("CYCLES ") else None)


def run_icarus(rtl_dir: str | os.PathLike, sources: list[str], top: str, waves: bool = False,
               timeout: float | None = None, defines: tuple[str, ...] = (), images: int | None = None) -> dict:
    """iverilog -g2005 + vvp (`defines` as -D macros); returns the parsed log plus build/run wall times."""
    rtl_dir = Path(rtl_dir)
    _require("iverilog", "iverilog")
    _require("vvp", "iverilog")
    cmd = ["iverilog", "-g2005", "-o", "tb_bitsmith.vvp", "-s", top]
    if waves:
        cmd.append("-DWAVES")
    cmd += [f"-D{d}" for d in defines]
    t0 = time.perf_counter()
    run_tool(cmd + sources, rtl_dir, "iverilog", timeout)
    t1 = time.perf_counter()
    log = _run_testbench_binary(["vvp", "-n", "tb_bitsmith.vvp"], rtl_dir, "vvp", timeout, images)
    t2 = time.perf_counter()
    (rtl_dir / "icarus.log").write_text(log)
    return {"simulator": "icarus", **parse_log(log), "build_s": t1 - t0, "run_s": t2 - t1}


def run_verilator(rtl_dir: str | os.PathLike, sources: list[str], top: str, waves: bool = False,
                  timeout: float | None = None, defines: tuple[str, ...] = (), images: int | None = None) -> dict:
    """verilator --binary with the same testbench (`defines` as -D macros); returns the parsed log plus
    build/run wall times."""
    rtl_dir = Path(rtl_dir)
    _require("verilator", "verilator")
    cmd = ["verilator", "--binary", "-Wno-fatal",
           "--top-module", top, "-Mdir", "obj_verilator", "-o", "tb_bitsmith", "-j", "2"]
    if waves:
        cmd += ["--trace", "-DWAVES"]
    cmd += [f"-D{d}" for d in defines]
    t0 = time.perf_counter()
    run_tool(cmd + sources, rtl_dir, "verilator", timeout)
    t1 = time.perf_counter()
    log = _run_testbench_binary([str(rtl_dir / "obj_verilator" / "tb_bitsmith")], rtl_dir, "verilated testbench", timeout, images)
    t2 = time.perf_counter()
    (rtl_dir / "verilator.log").write_text(log)
    return {"simulator": "verilator", **parse_log(log), "build_s": t1 - t0, "run_s": t2 - t1}


def lint_verilator(rtl_dir: str | os.PathLike, sources: list[str], top: str, defines: tuple[str, ...] = (),
                   timeout: float | None = None) -> list[str]:
    """`verilator --lint-only -Wall` on `sources` (names in `rtl_dir`) with `top` as the top module and
    `defines` as `-D` macros (SYNTHESIS: what Yosys reads). Returns the warning lines, none when the
    design is clean; a Verilator error (a design it cannot read) raises SimulationError."""
    rtl_dir = Path(rtl_dir)
    _require("verilator", "verilator")
    cmd = ["verilator", "--lint-only", "-Wall", "--timing", "--top-module", top, *(f"-D{d}" for d in defines)]
    try:
        proc = subprocess.run(cmd + list(sources), cwd=rtl_dir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SimulationError(f"verilator --lint-only did not finish within {timeout:g} s") from None
    lines = (proc.stdout + proc.stderr).splitlines()
    warnings = [line for line in lines if line.startswith("%Warning")]
    errors = [line for line in lines if line.startswith("%Error") and not line.startswith("%Error: Exiting due to")]
    if errors or (proc.returncode != 0 and not warnings):
        raise SimulationError(f"verilator --lint-only failed (exit {proc.returncode}) in {rtl_dir}:\n"
                              + "\n".join(lines[-40:]))
    return warnings


def run_simulator(sim: str, rtl_dir: str | os.PathLike, sources: list[str], top: str, waves: bool = False,
                  timeout: float | None = None, defines: tuple[str, ...] = (), images: int | None = None) -> dict:
    if sim not in SIMULATORS:
        raise ConfigError(f"unknown simulator {sim!r}; choose one of {', '.join(SIMULATORS)}")
    runner = run_icarus if sim == "icarus" else run_verilator
    return runner(rtl_dir, sources, top, waves=waves, timeout=timeout, defines=defines, images=images)


def parse_log(text: str) -> dict:
    """The testbench's log as numbers: mismatches per layer (all images), cycles per image and per
    layer, the printed mismatch lines, the summary, and whether the watchdog fired."""
    mismatches: dict[int, int] = {}
    layer_cycles: dict[int, list[int]] = {}
    cycles: list[int] = []
    printed: list[dict] = []
    summary = None
    timeout = None
    for line in text.splitlines():
        line = line.strip()
        if m := _MISMATCH.match(line):
            printed.append(dict(zip(("image", "layer", "channel", "y", "x", "got", "want"), map(int, m.groups()))))
        elif m := _LAYER.match(line):
            image, layer, n, wrong = map(int, m.groups())
            mismatches[layer] = mismatches.get(layer, 0) + wrong
            layer_cycles.setdefault(layer, []).append(n)
        elif m := _CYCLES.match(line):
            cycles.append(int(m.group(2)))
        elif m := _TIMEOUT.match(line):
            timeout = dict(zip(("image", "cycles", "state", "layer"), map(int, m.groups())))
        elif m := _SUMMARY.match(line):
            summary = {"mismatches": int(m.group(1)), "images": int(m.group(2))}
    if summary is None:
        raise SimulationError("the testbench printed no SUMMARY line; the simulation did not finish:\n"
                              + text[-2000:])
    return {"mismatches_per_layer": mismatches, "cycles_per_image": cycles, "layer_cycles": layer_cycles,
            "printed_mismatches": printed, "summary": summary, "timeout": timeout}


def run_testbench(program: Program, memory_dir: str | os.PathLike, rtl_dir: str | os.PathLike, images: int,
                  sim: str = "icarus", fault: str | None = None, waves: bool = False,
                  timeout: float | None = None, defines: tuple[str, ...] = ()) -> dict:
    """Generate the Verilog and testbench for `program` into `rtl_dir` (memory files and expected
    outputs in `memory_dir`, bitsmith.accel.memory.write_memory), run `images` images in `sim`,
    and return the parsed log with the manifest and wall times (build_s, run_s, generate_s).
    `defines` are Verilog macros for the simulator: SYNTHESIS simulates the design as Yosys reads it."""
    if sim not in SIMULATORS:
        raise ConfigError(f"unknown simulator {sim!r}; choose one of {', '.join(SIMULATORS)}")
    t0 = time.perf_counter()
    manifest = generate_rtl(program, rtl_dir, images=images, fault=fault, memory_dir=memory_dir, relative_paths=True)
    t1 = time.perf_counter()
    log = run_simulator(sim, rtl_dir, manifest["files"] + [manifest["testbench"]], TESTBENCH_TOP, waves=waves,
                        timeout=timeout, defines=defines, images=images)
    return {**log, "manifest": manifest, "generate_s": t1 - t0,
            "waves": str(Path(rtl_dir) / "tb_bitsmith.vcd") if waves else None}
