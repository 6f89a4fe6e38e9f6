"""Design points of the accelerator: one (R, C, weight mode) evaluated for cycles (timing) and
resources (cost), a sweep over R, C and weight modes, its Pareto front and plot
(docs/hardware.md "Design-space sweep").

Weight modes, all of the same network:

- `int8`     every conv layer dense with 8-bit weights (codebook layers expanded to their values);
- `int4`     the `int8` program with `weight_bits = 4`: the weights are not re-quantized and the
             packing modes stay the compiled ones, so only the MixQ-table DSPs and the weight loads
             (4-bit storage, half the bus words) differ from int8;
- `codebook2` the compiled CLIP-Q program (2-bit codebook layers, dense layers as they are), when
             the graph has codebook layers or a CLIP-Q graph of the same network is given.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path

from .. import progress
from ..errors import AcceleratorError, ConfigError
from ..integer.graph import IntegerGraph
from ..storage import write_bytes_atomic, write_json_atomic
from .compiler import choose_packing, compile_graph, d_range, fit_weight_ring
from .config import AccelConfig
from .cost import cost_report
from .precision import assignment_cost, weighted_layers
from .program import Program
from .timing import program_cycles

SIZES = (1, 2, 4, 8, 16, 32)
MODES = ("int8", "int4", "codebook2")
CSV_FIELDS = ("mode", "pe", "simd", "status", "reason", "cycles", "fps", "utilisation", "dsp", "dsp_array",
              "dsp_requant", "dsp_lanes", "bram18", "finn_bram18", "lut", "ff", "pareto")


def evaluate_design(program: Program, activation_density: dict[str, float] | None = None) -> dict:
    """Cycles (docs/hardware.md §5) and resources (cost model) of one program: per-layer rows with
    both, and the totals. `zero_skip` adds the cycles with zero skipping: "weights" exact, "both"
    estimated from `activation_density` ({layer name: ρ}, timing.layer_densities; None when not given)."""
    # The plain figures are without skipping whatever the program's zero_skip; skipping is added beside them.
    plain = dataclasses.replace(program, config=dataclasses.replace(program.config, zero_skip="none"))
    cycles, cost = program_cycles(plain), cost_report(program)
    layers = [{**c, "cycles": t["cycles"], "compute": t["compute"], "weights": t["weights"],
               "utilisation": t["utilisation"]} for c, t in zip(cost["layers"], cycles["layers"])]
    skipping = {}
    for mode in ("weights", "both"):
        if mode == "both" and not activation_density:
            skipping[mode] = None
            continue
        skipped = program_cycles(dataclasses.replace(program, config=dataclasses.replace(program.config, zero_skip=mode)),
                                 activation_density)
        skipping[mode] = {"cycles": skipped["total"], "compute": skipped["phases"]["compute"],
                          "fps": skipped["fps"], "count": skipped["zero_skip"]}
        for row, t in zip(layers, skipped["layers"]):
            row[f"compute_skip_{mode}"] = t["compute"]
    return {
        "config": cost["config"], "layers": layers,
        "cycles": cycles["total"], "fps": cycles["fps"], "utilisation": cycles["utilisation"], "macs": cycles["macs"],
        "compute": cycles["phases"]["compute"], "zero_skip": skipping,
        "dsp": cost["dsp"], "bram18": cost["bram18"], "memories": cost["memories"],
        "ecp5_dp16kd": cost["ecp5_dp16kd"], "register_bits": cost["register_bits"], "lutram_bits": cost["lutram_bits"],
        "finn_bram18": cost["finn_bram18"], "weight_memory": cost["weight_memory"], "logic": cost["logic"],
    }


def precision_totals(program: Program) -> dict | None:
    """The mixed-precision search's cost of the program's own widths (bitsmith.accel.precision),
    totals only; None for codebook graphs (no width to price)."""
    if has_codebook(program) or not weighted_layers(program):
        return None
    return {k: v for k, v in assignment_cost(program).items() if k != "layers"}


def has_codebook(program: Program) -> bool:
    return any(layer.is_codebook for layer in program.layers)


def dense_program(program: Program, weight_bits: int) -> Program:
    """A copy where every conv layer is dense with `weight_bits`: codebook layers are expanded to
    their values, dense layers keep their weight codes. Only the cost model reads weight_bits this
    way — the weights themselves are not re-quantized."""
    layers = []
    for layer in program.layers:
        if layer.kind == "conv":
            weights = layer.codebook[layer.weights] if layer.is_codebook else layer.weights
            layer = dataclasses.replace(layer, weight_bits=weight_bits, codebook=None, weights=weights)
            choose_packing(layer, d_range(layer), program.config)  # the modes this width allows
        layers.append(layer)
    return fit_weight_ring(dataclasses.replace(program, layers=layers))


def mode_programs(graph: IntegerGraph, config: AccelConfig, codebook_graph: IntegerGraph | None = None) -> dict[str, Program]:
    """The programs of each weight mode for one configuration (AcceleratorError if one does not fit)."""
    program = compile_graph(graph, config)
    programs = {"int8": dense_program(program, 8), "int4": dense_program(program, 4)}
    if has_codebook(program):
        programs["codebook2"] = program
    elif codebook_graph is not None:
        clipq = compile_graph(codebook_graph, config)
        if not has_codebook(clipq):
            raise ConfigError("the codebook graph has no 2-bit codebook layer; quantize with CLIP-Q (bits=2) first")
        programs["codebook2"] = clipq
    return programs


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates minimised: another point
    is ≤ in both and < in one). Equal points do not dominate each other; all of them are kept."""
    def dominates(a, b):
        return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def sweep(graph: IntegerGraph, sizes=SIZES, codebook_graph: IntegerGraph | None = None,
          base: AccelConfig = AccelConfig()) -> dict:
    """Every R, C in `sizes` × weight mode: cycles per image, DSPs, BRAM18, LUT/FF. Configurations
    whose buffers (or anything else) the compiler refuses are recorded with the reason."""
    points, skipped = [], []
    grid = [(pe, simd) for pe in sizes for simd in sizes]
    for pe, simd in progress.steps(grid, "design points"):
        config = dataclasses.replace(base, pe=pe, simd=simd)
        try:
            programs = mode_programs(graph, config, codebook_graph)
        except AcceleratorError as e:
            skipped.append({"pe": pe, "simd": simd, "reason": str(e)})
            continue
        for mode, program in programs.items():
            d = evaluate_design(program)
            points.append({"mode": mode, "pe": pe, "simd": simd, "cycles": d["cycles"], "fps": d["fps"],
                           "utilisation": d["utilisation"], "dsp": d["dsp"]["total"], "dsp_array": d["dsp"]["array"],
                           "dsp_requant": d["dsp"]["requant"], "dsp_lanes": d["dsp"]["lanes"],
                           "bram18": d["bram18"]["total"],
                           "finn_bram18": d["finn_bram18"], "lut": d["logic"]["lut"], "ff": d["logic"]["ff"]})
    if not points:
        raise AcceleratorError(f"sweep: no configuration R, C in {list(sizes)} can run the graph; first refusal: "
                               f"{skipped[0]['reason'] if skipped else 'none'}")
    front = set(pareto_front([(p["dsp"], p["cycles"]) for p in points]))
    for i, p in enumerate(points):
        p["pareto"] = i in front
    return {"base_config": base.to_json(), "sizes": list(sizes), "modes": sorted({p["mode"] for p in points}, key=MODES.index),
            "points": points, "skipped": skipped,
            "pareto": sorted((p for p in points if p["pareto"]), key=lambda p: (p["dsp"], p["cycles"]))}


# --- output files -----------------------------------------------------------------------------

def sweep_csv(result: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for p in result["points"]:
        writer.writerow({**{k: p.get(k, "") for k in CSV_FIELDS}, "status": "ok", "reason": ""})
    for s in result["skipped"]:
        writer.writerow({"mode": "all", "pe": s["pe"], "simd": s["simd"], "status": "skipped", "reason": s["reason"]})
    return buf.getvalue()


def _dsp_split(p: dict) -> str:
    """"array + requant" (+ pool-lane multipliers when the program has Add layers)."""
    return f"{p['dsp_array']} + {p['dsp_requant']}" + (f" + {p['dsp_lanes']}" if p.get("dsp_lanes") else "")


def pareto_markdown(result: dict) -> str:
    lines = ["| R×C | mode | DSP (array + requant) | BRAM18 | LUT (rough) | cycles / image | FPS | utilisation |",
             "|---|---|---|---|---|---|---|---|"]
    for p in result["pareto"]:
        lines.append(f"| {p['pe']}×{p['simd']} | {p['mode']} | {p['dsp']} ({_dsp_split(p)}) | "
                     f"{p['bram18']} | {p['lut']:,} | {p['cycles']:,} | {p['fps']:,.0f} | {p['utilisation']:.1%} |")
    return "\n".join(lines) + "\n"


MODE_STYLE = {"int8": ("tab:blue", "o"), "int4": ("tab:orange", "s"), "codebook2": ("tab:green", "^")}


def plot_pareto(result: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Cycles per image against DSPs (log–log), every point by mode, the Pareto front as a line
    with its points labelled R×C."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=120)
    for mode in result["modes"]:
        pts = [p for p in result["points"] if p["mode"] == mode]
        colour, marker = MODE_STYLE[mode]
        ax.scatter([p["dsp"] for p in pts], [p["cycles"] for p in pts], c=colour, marker=marker, s=22, alpha=0.45,
                   label=f"{mode} ({len(pts)} configs)")
    front = result["pareto"]
    ax.plot([p["dsp"] for p in front], [p["cycles"] for p in front], "-", color="black", lw=1, zorder=2,
            label=f"Pareto front ({len(front)} points)")
    labelled = set()
    for p in front:
        colour, marker = MODE_STYLE[p["mode"]]
        ax.scatter([p["dsp"]], [p["cycles"]], c=colour, marker=marker, s=70, edgecolors="black", linewidths=1.2, zorder=3)
        if (p["dsp"], p["cycles"]) in labelled:
            continue  # the same point in two modes (e.g. int8 and int4 at 1×1): one label
        # The front falls to the right: alternate labels above-right and below-left so neighbours do not collide.
        above = len(labelled) % 2 == 0
        labelled.add((p["dsp"], p["cycles"]))
        ax.annotate(f"{p['pe']}×{p['simd']} {p['mode']}", (p["dsp"], p["cycles"]), textcoords="offset points",
                    xytext=(7, 5) if above else (-7, -12), ha="left" if above else "right", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("DSP48E2 (PE array + requant units)")
    ax.set_ylabel("cycles per image")
    clock = result["base_config"]["clock_mhz"]
    ax.set_title(title or f"design space: R, C in {result['sizes']} at {clock:g} MHz")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(path)
    write_bytes_atomic(path, buf.getvalue())
    return path


def write_sweep(result: dict, out_dir: str | os.PathLike, title: str = "") -> dict:
    """sweep.csv, sweep.json, pareto.md and pareto.png in `out_dir`; returns their paths."""
    out = Path(out_dir)
    files = {"csv": out / "sweep.csv", "json": out / "sweep.json", "pareto_table": out / "pareto.md",
             "plot": out / "pareto.png"}
    write_bytes_atomic(files["csv"], sweep_csv(result).encode())
    write_json_atomic(files["json"], result)
    write_bytes_atomic(files["pareto_table"], pareto_markdown(result).encode())
    plot_pareto(result, files["plot"], title)
    return {k: str(v) for k, v in files.items()}


# --- tables for the command line --------------------------------------------------------------

def design_tables(design: dict, title: str):
    """Two rich tables for `bitsmith hw report`: per layer, then the totals."""
    from rich.table import Table

    layers = Table(title=title)
    for col in ("#", "layer", "kind", "in → out", "k", "w/a bits", "MACs", "cycles", "util", "DSP",
                "group weights", "FINN BRAM18"):
        layers.add_column(col, justify="left" if col in ("layer", "kind", "in → out", "k") else "right")
    for r in design["layers"]:
        bits = ("cb2" if r["codebook"] else str(r["w_bits"])) if r["kind"] == "conv" else "-"
        layers.add_row(str(r["index"]), r["name"], r["kind"],
                       f"{'x'.join(map(str, r['in_shape']))} → {'x'.join(map(str, r['out_shape']))}",
                       "x".join(map(str, r["kernel"])), f"{bits}/{r['a_bits']}", f"{r['macs']:,}", f"{r['cycles']:,}",
                       "-" if r["utilisation"] is None else f"{r['utilisation']:.1%}", str(r["dsp"]),
                       f"{r['weight_buffer_entries']:,}", str(r["finn_bram18"]))
    totals = Table(title="totals", show_header=False)
    dsp = design["dsp"]
    rows = [("cycles per image", f"{design['cycles']:,}"),
            ("FPS", f"{design['fps']:,.0f} at {design['config']['clock_mhz']:g} MHz"),
            ("utilisation", f"{design['utilisation']:.1%}"),
            ("DSP48E2", f"{dsp['total']} = array {dsp['array']} (one per PE) + requant {dsp['requant']}"
             + f" ({dsp['requant_units']} units)" + (f" + pool-lane multipliers {dsp['lanes']}" if dsp["lanes"] else "")
             + f"; a MixQ dataflow array: {dsp['mixq_array']}" + (f" (set by {dsp['array_layer']})" if dsp["array_layer"] else "")),
            *[(f"BRAM18 {m['name']}", _memory_cell(m)) for m in design["memories"]],
            ("BRAM18 total", f"{design['bram18']['total']} (ECP5: {design['ecp5_dp16kd']} DP16KD)"),
            ("memory bits in flip-flops / LUT RAM", f"{design['register_bits']:,} / {design['lutram_bits']:,}"),
            ("BRAM18 FINN dataflow (sum of layers)", str(design["finn_bram18"])),
            *_weight_memory_rows(design.get("weight_memory")),
            *_zero_skip_rows(design),
            ("LUT / FF (rough)", f"{design['logic']['lut']:,} / {design['logic']['ff']:,}")]
    p = design.get("precision")
    if p is not None:  # the figures `bitsmith search` optimises, for the graph's own widths
        rows += [("mixed-precision cost: w / a bits", f"{''.join(map(str, p['wbits']))} / {''.join(map(str, p['abits']))}"
                  if max(p["wbits"] + p["abits"]) < 10 else f"{p['wbits']} / {p['abits']}"),
                 ("  DSP48E2, dataflow design (search cost)", f"{p['dsp']} (II {p['interval']:,} cycles)"),
                 ("  BitOPs", f"{p['bitops']:,}"),
                 ("  weights", f"{p['weight_kb']:.2f} KB, {p['bram18']} BRAM18")]
    for key, value in rows:
        totals.add_row(key, value)
    return layers, totals


def _memory_cell(m: dict) -> str:
    """One memory of the RTL: its BRAM18 and what Yosys builds it from (cost.memories)."""
    size = f"{m['depth']:,} × {m['width']} bits"
    if m["kind"] == "rom":
        return f"{m['bram18']}  ({m['blocks']} {m['primitive']}; {size})" if m["blocks"] else f"0  (ROM in LUTs; {size})"
    return f"0  ({'flip-flops' if m['kind'] == 'registers' else 'LUT RAM'}, multi-ported; {size})"


def _weight_memory_rows(m: dict | None) -> list[tuple[str, str]]:
    """Dense vs the IR's storage formats (docs/hardware.md "Cost model", weight memory)."""
    if not m or not m["dense_bits"]:
        return []
    return [("weight memory, dense", f"{m['dense_bits']:,} bits ({m['dense_bits'] / 8192:.2f} KB), "
                                     f"{m['dense_bram18']} BRAM18"),
            ("weight memory, IR storage formats", f"{m['stored_bits']:,} bits ({m['stored_bits'] / 8192:.2f} KB), "
             f"{m['stored_bram18']} BRAM18; {m['nnz']:,} non-zero codes, index/mask/pointer bits "
             f"{m['index_bits']:,}; {m['dense_bits'] / m['stored_bits']:.2f}x")]


def _zero_skip_rows(design: dict) -> list[tuple[str, str]]:
    rows = []
    for mode, label in (("weights", "zero weights skipped (exact)"), ("both", "zero weights and activations skipped (estimate)")):
        s = (design.get("zero_skip") or {}).get(mode)
        if s is not None:
            rows.append((f"cycles per image, {label}", f"{s['cycles']:,} (compute {s['compute']:,} of "
                                                        f"{design['compute']:,}), {s['fps']:,.0f} FPS"))
    return rows


def pareto_table(result: dict):
    """A rich table of the Pareto front, fewest DSPs first."""
    from rich.table import Table

    table = Table(title=f"Pareto front: cycles per image vs DSP48E2 ({len(result['pareto'])} of {len(result['points'])} points)")
    for col in ("R×C", "mode", "DSP", "array + requant", "BRAM18", "LUT (rough)", "cycles", "FPS", "utilisation"):
        table.add_column(col, justify="left" if col in ("R×C", "mode") else "right")
    for p in result["pareto"]:
        table.add_row(f"{p['pe']}×{p['simd']}", p["mode"], str(p["dsp"]), _dsp_split(p),
                      str(p["bram18"]), f"{p['lut']:,}", f"{p['cycles']:,}", f"{p['fps']:,.0f}", f"{p['utilisation']:.1%}")
    return table
