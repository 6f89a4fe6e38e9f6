"""`build_report`: read the folders, compute the sections that have data, render, publish one file."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitsmith.artifacts import QAT_GRAPH, Kind, folder_kind, publishing_file
from bitsmith.errors import ConfigError, DataError
from bitsmith.storage import write_bytes_atomic
from bitsmith.report import figures, sections
from bitsmith.report.histograms import MAX_SAMPLES
from bitsmith.report.sources import Sources, collect_sources

#: Calibration batches (of 128 training images) the activation histograms are drawn from.
CALIBRATION_BATCHES = 4
_GENERATOR = '<meta name="generator" content="bitsmith report'


def _is_report(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(400).decode("utf-8", "replace")
    except OSError:
        return False
    return head.startswith("<!DOCTYPE html>") and _GENERATOR in head


#: The output kind: an HTML report bitsmith wrote is replaced without --force, any other file is not.
REPORT = Kind("report", "an HTML report written by bitsmith", "an HTML report", _is_report, is_file=True)

#: (id, heading) of every section, in page order; the context key that holds each one's data.
SECTIONS = (("model", "Model summary", "runs"), ("training", "Float training curves", "curves"),
            ("histograms", "Weight and activation histograms", "histograms"), ("ranges", "Ranges", "ranges"),
            ("quantization", "Quantization results", "quant"), ("qat", "QAT curves", "qat"),
            ("integer", "Integer parameters", "graphs"), ("accelerator", "Accelerator", "graphs"),
            ("verification", "Verification", "verification"), ("sparsity", "Sparsity", "sparsity"),
            ("search", "Mixed-precision search", "searches"), ("pareto", "Design-space sweeps", "sweeps"),
            ("cim", "Crossbar (CIM) sweeps", "cim"))


@dataclass
class ReportOptions:
    log_y: bool = False
    calib_batches: int = CALIBRATION_BATCHES
    max_samples: int = MAX_SAMPLES
    data_dir: str | None = None

    def check(self) -> None:
        if isinstance(self.calib_batches, bool) or not isinstance(self.calib_batches, int) or self.calib_batches < 1:
            raise ConfigError(f"calibration batches must be a positive integer, got {self.calib_batches!r}")
        if isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < 1:
            raise ConfigError(f"activation samples must be a positive integer, got {self.max_samples!r}")


def _pair(run, graphs: list[tuple[Path, Any]]) -> tuple[Path, Any] | None:
    """The graph made from `run` whose clips the histograms mark: same model and data set; a PTQ
    graph before a QAT one (QAT moves the weights), the one recording this run as its source first."""
    here = run.path.resolve()
    candidates = [(p, g) for p, g in graphs
                  if g.metadata.get("model") == run.model.spec and g.metadata.get("dataset") == run.meta.get("dataset")]

    def rank(item):
        path, graph = item
        source = graph.metadata.get("source_run")
        return (folder_kind(path) is QAT_GRAPH, not (source and Path(source).resolve() == here))

    return min(candidates, key=rank) if candidates else None


def report_context(sources: Sources, options: ReportOptions) -> dict[str, Any]:
    """Everything the template shows; a section's key is empty when its data does not exist."""
    from bitsmith.integer import load
    from bitsmith.runs import load_run
    from bitsmith.quant.observers import PERCENTILE

    graphs = [(p, load(p)) for p in sources.graphs]
    ctx: dict[str, Any] = {"runs": [], "curves": [], "histograms": [], "ranges": [], "quant": None, "qat": [],
                           "graphs": [], "verification": [], "sparsity": [], "searches": [], "sweeps": [], "cim": [],
                           "log_y": options.log_y, "calib_batches": options.calib_batches, "percentile": PERCENTILE}
    for path in sources.runs:
        run = load_run(path)
        ctx["runs"].append({"folder": str(path), "summary": sections.model_summary(run)})
        curve = sections.training_curves(run, str(path))
        if curve:
            ctx["curves"].append({"folder": str(path), "figure": curve})
        paired = _pair(run, graphs)
        try:
            rows, plots = sections.distributions(run, paired[1] if paired else None, options.calib_batches,
                                                 options.data_dir, options.log_y, options.max_samples)
        except DataError as e:  # the run's data set is not on this machine: no activations to draw
            ctx["histograms"].append({"folder": str(path), "graph": None, "plots": [],
                                      "missing": f"no histograms: the calibration data cannot be read ({e})"})
            continue
        ctx["histograms"].append({"folder": str(path), "graph": str(paired[0]) if paired else None, "plots": plots,
                                  "missing": None})
        ctx["ranges"].append({"folder": str(path), "rows": rows})
    if not sources.runs:
        for folder, doc in sources.side.get("ranges", []):
            ctx["ranges"].append({"folder": str(folder), "rows": sections.saved_ranges([(folder, doc)])})
    results = []
    for path, graph in graphs:
        result = sections.quant_result(path, graph)
        if result["recorded"]:
            results.append(result)
        qat = sections.qat_curves(path)
        if qat:
            ctx["qat"].append({"folder": str(path), "figure": qat})
        ctx["graphs"].append({"folder": str(path), "bits": sections.bits_label(graph),
                              "layers": sections.integer_layers(graph), "accel": sections.accelerator(graph)})
        ctx["verification"] += [{"folder": str(path), **row}
                                for row in sections.verification(sources.verify.get(path, []))]
        sparse = sections.sparsity(graph, path)
        if sparse:
            ctx["sparsity"].append({"folder": str(path), **sparse})
    if results:
        ctx["quant"] = {"rows": results, "figure": figures.accuracy_bars(results)}
    ctx["searches"] = sections.searches(sources.side.get("search", []))
    ctx["sweeps"] = sections.sweeps(sources.side.get("sweep", []))
    ctx["cim"] = sections.cim_sweeps(sources.side.get("cim_sweep", []))
    ctx["sections"] = [{"id": sid, "title": title} for sid, title, key in SECTIONS if ctx.get(key)]
    names = [Path(p).name for p in sources.runs + sources.graphs]
    ctx["title"] = "bitsmith report: " + (", ".join(names) if names else "results")
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ctx["subtitle"] = (f"{len(sources.runs)} float run(s), {len(sources.graphs)} integer graph(s); "
                       f"sections: {len(ctx['sections'])}; made {made}")
    return ctx


def render(ctx: dict[str, Any]) -> str:
    """The HTML page from templates/report.html.j2 (autoescaped: names from folders are text)."""
    import jinja2

    from bitsmith.version import __version__

    env = jinja2.Environment(loader=jinja2.PackageLoader("bitsmith.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(version=__version__, **ctx)


def build_report(paths: list[str | os.PathLike], out: str | os.PathLike, *, log_y: bool = False,
                 calib_batches: int = CALIBRATION_BATCHES, max_samples: int = MAX_SAMPLES,
                 data_dir: str | None = None, force: bool = False) -> dict[str, Any]:
    """Write one self-contained HTML report of the run / graph folders `paths` to `out`, whole or not
    at all. Returns {"out", "sections" (the headings shown), "runs", "graphs"}."""
    options = ReportOptions(log_y, calib_batches, max_samples, data_dir)
    options.check()
    with publishing_file(out, REPORT, force=force, command="bitsmith report") as stage:
        sources = collect_sources(list(paths))
        ctx = report_context(sources, options)
        data = render(ctx).encode("utf-8")
        write_bytes_atomic(stage.path, data)
    return {"out": str(out), "sections": [s["title"] for s in ctx["sections"]],
            "runs": [str(p) for p in sources.runs], "graphs": [str(p) for p in sources.graphs],
            "bytes": len(data)}
