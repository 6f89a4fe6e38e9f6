"""What each stage kind runs: the job functions the bitsmith commands call, writing into the stage's folder.

Each job gets a `StageJob` (its settings, the output paths of the stages it reads, a temporary
folder to write into) and returns (figures, passed): the figures go into the stage's record and
the run's summary; `passed` False (a back end that does not match the engine) stops the pipeline
and leaves the stage unfinished, so the next run tries it again. The outputs, in the stage folder:

| kind | output |
|---|---|
| train, prune | `run/` (a float run folder) |
| quantize, qat | `graph/` (an integer graph folder, with metrics.json) |
| search | `search/` (search.json) |
| export | `model.onnx` or `clipq-hex/` |
| verify | `verify.json`, `work/<back end>/` |
| rtl | `rtl.json`, `work/` (memory files, Verilog, logs) |
| cim | `cim.json` |
| report | `report.html` |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitsmith.pipefile import kinds
from bitsmith.storage import read_json, write_json_atomic

#: The output of each kind inside its stage folder (what `from` hands to the next stage).
OUTPUTS = {"train": "run", "prune": "run", "quantize": "graph", "qat": "graph", "search": "search",
           "export": "model.onnx", "verify": "verify.json", "rtl": "rtl.json", "cim": "cim.json",
           "report": "report.html"}


def output_name(kind: str, settings: dict[str, Any]) -> str:
    if kind == "export" and settings["format"] == "clipq-hex":
        return "clipq-hex"
    return OUTPUTS[kind]


@dataclass
class StageJob:
    """A stage about to run: write into `folder` (temporary; published when the stage finishes);
    `inputs` are the outputs of the stages `from` names, `refs` those of other stage-naming
    settings; `work` is a folder that survives a kill (training resumes from it)."""

    name: str
    settings: dict[str, Any]
    inputs: list[Path]
    refs: dict[str, Path]
    folder: Path
    work: Path
    data_dir: str | None
    quiet: bool
    relocate: Callable[[Any], Any]

    @property
    def input(self) -> Path:
        return self.inputs[0]


Result = tuple[dict[str, Any], bool]


def _train(job: StageJob) -> Result:
    from bitsmith.train import train

    metrics = train(kinds.train_config(job.settings, job.data_dir), job.work, resume=True, quiet=job.quiet)
    job.work.rename(job.folder / "run")  # the finished run moves into the stage's folder
    return {"accuracy": metrics["accuracy"], "epochs": metrics["epochs_completed"],
            "train_seconds": metrics["train_seconds"]}, True


def _prune(job: StageJob) -> Result:
    from bitsmith.prune.job import prune_run

    m = prune_run(job.input, job.folder / "run", kinds.prune_config(job.settings), data_dir=job.data_dir,
                  quiet=job.quiet, train_limit=job.settings["train_limit"])
    return {k: m[k] for k in ("fp32_accuracy", "accuracy", "sparsity", "macs_before", "macs_after")}, True


def _search(job: StageJob) -> Result:
    from bitsmith.search.job import search_run

    s = job.settings
    candidates = {k: s[k] if isinstance(s[k], str) else ",".join(map(str, s[k])) for k in ("candidates_w", "candidates_a")}
    doc = search_run(job.input, job.folder / "search", method=s["method"], cost=s["cost"], cd=s["cd"],
                     epochs=s["epochs"], **candidates, search_first_last=s["search_first_last"],
                     budgets={"dsp": s["budget_dsp"], "cycles": s["budget_cycles"], "kb": s["budget_kb"]},
                     accel=kinds.accel_config(s), seed=s["seed"], data_dir=job.data_dir, train_limit=s["train_limit"],
                     quiet=job.quiet, max_iterations=s["max_iterations"])
    return {"bitw": doc["bitw"], "bita": doc["bita"], **doc["predicted"]}, True


def _graph_figures(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("fp32_accuracy", "accuracy", "integer_accuracy", "agreement") if k in m}


def _quantize(job: StageJob) -> Result:
    from bitsmith.pipeline import quantize_run

    m = quantize_run(job.input, job.folder / "graph", kinds.quant_config(job.settings), data_dir=job.data_dir,
                     calib_batches=job.settings["calib_batches"])
    return _graph_figures(m), True


def _qat(job: StageJob) -> Result:
    from bitsmith.pipeline import qat_run

    widths = None
    if "widths_from" in job.refs:
        doc = read_json(job.refs["widths_from"] / "search.json", "search result")
        widths = (doc["bitw"], doc["bita"])
    config = kinds.qat_config(job.settings, job.input, widths)
    m = qat_run(job.input, job.folder / "graph", config, data_dir=job.data_dir, quiet=job.quiet,
                train_limit=job.settings["train_limit"])
    return _graph_figures(m), True


def _export(job: StageJob) -> Result:
    """`bitsmith export`: the file, then (check > 0) its comparison with the engine on random codes."""
    from bitsmith.integer import load
    from bitsmith.pipeline import export_graph

    s = job.settings
    clipq = s["format"] == "clipq-hex"
    figures, passed = export_graph(load(job.input), job.folder / output_name("export", s),
                                   format=s["format"], qdq=s["qdq"], check=s["check"])
    if clipq:
        figures = {"format": figures["format"], "layers": len(figures["manifest"]["layers"])}
    return figures, passed


def _verify(job: StageJob) -> Result:
    from bitsmith.integer import load
    from bitsmith.verify import summary, verification_inputs, verify_all

    s, g = job.settings, load(job.input)
    inputs = verification_inputs(g, s["images"], s["data"], job.data_dir)
    reports = verify_all(g, list(s["backends"]), inputs, config=kinds.accel_config(s), sim=s["sim"],
                         work_dir=job.folder / "work")
    doc = job.relocate(summary(str(job.input), inputs, reports))
    write_json_atomic(job.folder / "verify.json", doc)
    figures = {name: ("PASS" if r.passed else f"FAIL ({r.error or f'{r.mismatches} mismatches'})")
               for name, r in reports.items()}
    return {"images": inputs.count, **figures}, doc["passed"]


def _rtl(job: StageJob) -> Result:
    from bitsmith.integer import load
    from bitsmith.verify import verification_inputs, verify

    s, g = job.settings, load(job.input)
    config = kinds.accel_config(s)
    inputs = verification_inputs(g, s["images"], s["data"], job.data_dir)
    report = verify(g, "rtl", inputs, config=config, sim=s["sim"], work_dir=job.folder / "work", raise_errors=True)
    result = report.to_json()
    if s["synth"]:
        from bitsmith.accel.memory import read_program
        from bitsmith.rtl.synth import synthesize

        work = job.folder / "work"
        result["synth"] = synthesize(work / "rtl", config, program=read_program(work / "memory"))
    write_json_atomic(job.folder / "rtl.json", job.relocate(result))
    cycles = report.cycles_per_image
    return {"images": report.images, "mismatches": report.mismatches,
            "cycles_per_image": cycles[0] if cycles else None, "formula_cycles": report.formula_cycles}, report.passed


def _cim(job: StageJob) -> Result:
    from bitsmith.pipeline import cim_evaluate

    s = job.settings
    result = cim_evaluate(job.input, kinds.cim_config(s), limit=s["images"], data_dir=job.data_dir,
                          calibration_images=s["calibration_images"], batch_size=s["batch_size"])
    write_json_atomic(job.folder / "cim.json", result)
    return {k: result[k] for k in ("integer_accuracy", "cim_accuracy", "agreement", "crossbars")}, True


def _report(job: StageJob) -> Result:
    build_report = kinds.report_function()
    s = job.settings
    options = {k: s[k] for k in ("log_y", "calib_batches", "max_samples") if s[k] is not None}
    result = build_report(list(job.inputs), job.folder / "report.html", data_dir=job.data_dir, **options)
    return {"sections": len(result.get("sections", [])), "bytes": result.get("bytes")}, True


JOBS: dict[str, Callable[[StageJob], Result]] = {
    "train": _train, "prune": _prune, "search": _search, "quantize": _quantize, "qat": _qat, "export": _export,
    "verify": _verify, "rtl": _rtl, "cim": _cim, "report": _report,
}
