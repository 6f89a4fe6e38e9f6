"""`bitsmith run`: a checked pipeline file, planned, and its stages run in order.

    result = run_pipeline("pipelines/demo.toml")                       # runs what is not done yet
    result = run_pipeline("pipelines/demo.toml", force=["int8"])       # int8 and every stage after it
    plan = run_pipeline("pipelines/demo.toml", dry_run=True)["plan"]   # what would run, and why

The output folder holds `pipeline.json` (what wrote it) and one folder per stage, named after the
stage. Each stage is written into a temporary sibling of its folder and published whole, its
record (`stage.json`, bitsmith.pipefile.cache) written last, so after a kill -9 the next run finds
every finished stage finished and every other one absent. Training is the exception that makes
resuming cheaper: it checkpoints every epoch into `OUT/.work/<stage>-<key>` (kept across kills,
resumed by the next run with the same key) and moves the finished run into its stage folder.
A lock file keeps two runs out of one output folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bitsmith.artifacts import publishing
from bitsmith.errors import BitsmithError, ConfigError, OutputError
from bitsmith.pipefile.cache import (STAGE_FILE, STAGE_FOLDER, STAGE_FORMAT, digests, input_keys, make_plan,
                                     record_digests)
from bitsmith.pipefile.jobs import JOBS, StageJob, output_name
from bitsmith.pipefile.spec import Pipeline, load_pipeline
from bitsmith.storage import read_json, write_json_atomic

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "bitsmith.pipeline"
WORK = ".work"
LOCK = ".lock"


def run_pipeline(path: str | os.PathLike, *, out: str | os.PathLike | None = None, force: list[str] = (),
                 dry_run: bool = False, quiet: bool = False,
                 on_stage: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the pipeline file at `path` (module docstring). `out` overrides the file's [pipeline] out;
    `force` names stages to redo with everything downstream; `dry_run` only plans. `on_stage(entry)`
    is called as each stage starts ({"stage", "kind", "action", "reason", "key"}).

    Returns {"pipeline", "out", "plan", "stages": [one entry per stage: status ran / cached /
    failed / not run, reason, seconds, figures, output], "passed"}; with `dry_run`, only the plan.
    """
    pipeline = load_pipeline(path)
    out_dir = _out_dir(pipeline, out)
    for name in force:
        if name not in pipeline.stages:
            raise ConfigError(f"--force {name}: no such stage in {pipeline.path}; stages: {', '.join(pipeline.order)}")
    _check_out(out_dir)
    result: dict[str, Any] = {"pipeline": str(pipeline.path), "out": str(out_dir)}
    if dry_run:
        return {**result, "plan": [step.to_json() for step in make_plan(pipeline, out_dir, list(force))],
                "dry_run": True}
    with _locked(out_dir):
        plan = make_plan(pipeline, out_dir, list(force))  # under the lock: no other run changes the folder now
        result["plan"] = [step.to_json() for step in plan]
        write_json_atomic(out_dir / PIPELINE_FILE, {"format": PIPELINE_FORMAT, "file": str(pipeline.path.absolute()),
                                                    "stages": pipeline.order})
        entries, passed = [], True
        keys = {step.stage: step.key for step in plan}
        for step in plan:
            entry = {**step.to_json(), "output": str(out_dir / step.stage / _output(pipeline, step.stage))}
            if not passed and step.run:  # stop at the first failure, as make does
                entries.append({**entry, "status": "not run", "reason": "an earlier stage failed"})
                continue
            if not step.run:
                record = read_json(out_dir / step.stage / STAGE_FILE, "stage record")
                entries.append({**entry, "status": "cached", "seconds": 0.0, "figures": record.get("figures", {})})
                continue
            if on_stage is not None:
                on_stage(entry)
            figures, ok, seconds = _run_stage(pipeline, step.stage, step.key, keys, out_dir, quiet)
            entries.append({**entry, "status": "ran" if ok else "failed", "seconds": seconds, "figures": figures})
            passed = ok
        _tidy_work(out_dir)
    return {**result, "stages": entries, "passed": passed}


def _out_dir(pipeline: Pipeline, out: str | os.PathLike | None) -> Path:
    if out is not None:
        return Path(out)
    if pipeline.out is None:
        raise ConfigError(f"{pipeline.path}: no output folder: add out = \"…\" under [pipeline], or pass --out")
    return pipeline.out


def _check_out(out: Path) -> None:
    """The output folder is absent, empty, or one a pipeline wrote (pipeline.json); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; bitsmith run writes a folder there. Choose another output folder.")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not (out / PIPELINE_FILE).is_file():
        raise OutputError(f"{out} is not empty and is not a pipeline's output folder (no {PIPELINE_FILE}); "
                          "choose another output folder (--out or [pipeline] out)")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One `bitsmith run` per output folder at a time (the lock goes with the process, even on kill -9)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a")
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror}; choose another output folder") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{out} is in use by another `bitsmith run`; wait for it or choose another "
                              "output folder") from None
        yield


def _output(pipeline: Pipeline, name: str) -> str:
    stage = pipeline.stages[name]
    return output_name(stage.kind.name, stage.settings)


def _run_stage(pipeline: Pipeline, name: str, key: str, keys: dict[str, str], out: Path,
               quiet: bool) -> tuple[dict[str, Any], bool, float]:
    """Run one stage into a temporary folder, record it, publish it; returns (figures, passed, seconds)."""
    stage = pipeline.stages[name]
    start = time.perf_counter()
    inputs = [out / s / _output(pipeline, s) for s in stage.sources]
    refs = {role: out / s / _output(pipeline, s) for role, s in stage.refs.items()}
    work = out / WORK / f"{name}-{key[:16]}"
    _drop_other_work(out, name, work)
    folder = out / name
    if folder.exists() and not STAGE_FOLDER.detect(folder):
        raise OutputError(f"{folder} is not a stage folder (no {STAGE_FILE}), so bitsmith run will not replace it; "
                          "move it away or choose another output folder")
    # the check above is the kind check (bitsmith.artifacts knows no stage folders): force the rest
    with publishing(folder, STAGE_FOLDER, force=True, command=f"bitsmith run (stage {name})") as target:
        job = StageJob(name, stage.settings, inputs, refs, target.path, work, stage.data_dir, quiet, target.relocate)
        try:
            figures, passed = JOBS[stage.kind.name](job)
        except BitsmithError as e:
            raise type(e)(f"stage {name!r} ({stage.kind.name}): {e}") from e
        seconds = round(time.perf_counter() - start, 3)
        record = {"format": STAGE_FORMAT, "stage": name, "kind": stage.kind.name, "key": key,
                  "settings": stage.settings, "inputs": input_keys(stage, keys),
                  "input_records": record_digests(stage, out), "passed": passed,
                  "output": _output(pipeline, name), "figures": figures, "seconds": seconds,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": digests(target.path)}
        write_json_atomic(target.path / STAGE_FILE, record)  # last: a stage folder with a record is complete
    return figures, passed, seconds


def _drop_other_work(out: Path, name: str, keep: Path) -> None:
    """Resumable work a stage left under another key is of no use any more."""
    folder = out / WORK
    if folder.is_dir():
        for entry in folder.glob(f"{name}-*"):
            if entry != keep and entry.name[len(name) + 1:].isalnum():
                shutil.rmtree(entry, ignore_errors=True)


def _tidy_work(out: Path) -> None:
    """Remove the work folder once nothing in it is left to resume."""
    folder = out / WORK
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
