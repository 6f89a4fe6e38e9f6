"""Which stages of a pipeline must run and which are done: cache keys, stage records and the plan.

**Key.** A stage's key is the sha256 of its kind, its settings (every option, defaults filled in,
so `epochs = 8` and leaving the default 8 are the same stage; where the data lives is left out,
as `bitsmith train --resume` leaves it out), the keys of the stages it reads (so a change
anywhere upstream changes every key below it) and the bitsmith version.

**Record.** A finished stage's folder holds `stage.json`: its key, settings, the keys of its
inputs, the sha256 of every file it wrote, and its figures. The runner writes it last, inside the
stage's temporary folder, and the folder is published whole (bitsmith.artifacts): a folder with
a record is complete, and a stage killed mid-way leaves no record (its temporary folder is
deleted by the next run), so it runs again.

**Plan.** In run order, a stage is cached when its record holds its key, says it passed, its
files still have the recorded digests, and the records of the stages it reads are the ones it
read (not redone since: `--force` of a stage whose run then stopped before this one); it runs otherwise, or when `--force` names it or a stage
it reads, or when any stage it reads runs. Each entry says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitsmith.artifacts import Kind
from bitsmith.pipefile.options import describe
from bitsmith.pipefile.spec import Pipeline, Stage
from bitsmith.storage import sha256_file
from bitsmith.version import __version__

STAGE_FILE = "stage.json"
STAGE_FORMAT = "bitsmith.pipeline_stage"
#: Bumped when what a stage kind computes changes, so older records stop matching.
KEY_VERSION = 1


#: The kind of a stage folder (bitsmith.artifacts): told by its record.
STAGE_FOLDER = Kind("pipeline_stage", "a pipeline stage folder", "a pipeline stage",
                    lambda path: read_record(path) is not None)


def stage_key(stage: Stage, inputs: dict[str, str]) -> str:
    """The content hash of the stage's configuration and of its inputs' keys (module docstring)."""
    keyed = {k: v for k, v in stage.settings.items() if stage.kind.options[k].keyed}
    doc = {"key_version": KEY_VERSION, "bitsmith": __version__, "kind": stage.kind.name, "settings": keyed,
           "inputs": inputs}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def input_keys(stage: Stage, keys: dict[str, str]) -> dict[str, str]:
    """The keys of what a stage reads, by role: from[0], from[1], …, then each stage-naming setting."""
    roles = {f"from[{i}]": source for i, source in enumerate(stage.sources)} | stage.refs
    return {role: keys[name] for role, name in roles.items()}


def read_record(folder: Path) -> dict[str, Any] | None:
    """A stage folder's record, or None when there is none (never finished) or it cannot be read."""
    try:
        doc = json.loads((folder / STAGE_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == STAGE_FORMAT else None


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` except the record, by path relative to it."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel != STAGE_FILE and not path.is_symlink():
                found[rel] = sha256_file(path)
    return dict(sorted(found.items()))


def _changed_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    changed = []
    for rel, digest in recorded.items():
        path = folder / rel
        if not path.is_file() or sha256_file(path) != digest:
            changed.append(rel)
    return changed


@dataclass
class Step:
    """One stage in the plan: `run` or not, why, and its key."""

    stage: str
    kind: str
    run: bool
    reason: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "kind": self.kind, "action": "run" if self.run else "cached",
                "reason": self.reason, "key": self.key}


def make_plan(pipeline: Pipeline, out: Path, force: list[str] = ()) -> list[Step]:
    """The plan of `pipeline` with output folder `out` (module docstring). `force` must name stages."""
    forced: dict[str, str] = {}
    for name in force:
        for below in pipeline.downstream(name):
            forced.setdefault(below, "--force" if below == name else f"--force {name} (it reads {name})")
    keys: dict[str, str] = {}
    running: set[str] = set()
    plan = []
    for name in pipeline.order:
        stage = pipeline.stages[name]
        inputs = input_keys(stage, keys)
        keys[name] = key = stage_key(stage, inputs)
        upstream = [u for u in stage.upstream if u in running]
        if name in forced:
            reason = forced[name]
        elif upstream:
            reason = f"stage {upstream[0]!r}, which it reads, runs"
        else:
            reason = _stale(stage, out / name, key, inputs) or _redone_inputs(stage, out, out / name)
        if reason is not None:
            running.add(name)
        plan.append(Step(name, stage.kind.name, reason is not None, reason or "finished with this key", key))
    return plan


def _stale(stage: Stage, folder: Path, key: str, inputs: dict[str, str]) -> str | None:
    """Why the stage's folder does not hold its finished result for `key`, or None when it does."""
    record = read_record(folder)
    if record is None:
        return "not run yet" if not folder.exists() else "no finished record (it was interrupted or never finished)"
    if record.get("key") != key:
        return _difference(stage, record, inputs)
    if not record.get("passed", False):
        return "it failed last time"
    changed = _changed_files(folder, record.get("files", {}))
    if changed:
        return f"its output changed since it finished: {', '.join(changed[:3])}"
    return None


def record_digests(stage: Stage, out: Path) -> dict[str, str | None]:
    """The sha256 of the records of the stages `stage` reads (None: no record), by stage name."""
    found = {}
    for name in stage.upstream:
        path = out / name / STAGE_FILE
        found[name] = sha256_file(path) if path.is_file() else None
    return found


def _redone_inputs(stage: Stage, out: Path, folder: Path) -> str | None:
    """A stage it reads finished again after it (forced, then the run stopped before this one)."""
    recorded = (read_record(folder) or {}).get("input_records", {})
    for name, digest in record_digests(stage, out).items():
        if recorded.get(name) != digest:
            return f"stage {name!r}, which it reads, was redone after it"
    return None


def _difference(stage: Stage, record: dict[str, Any], inputs: dict[str, str]) -> str:
    """In words, what differs between the recorded stage and this one."""
    if record.get("kind") != stage.kind.name:
        return f"its kind changed: {record.get('kind')} -> {stage.kind.name}"
    old = record.get("settings", {})
    changed = [f"{k} {describe(old[k]) if k in old else '(unset)'} -> {describe(v)}"
               for k, v in stage.settings.items() if stage.kind.options[k].keyed and old.get(k) != v]
    if changed:
        return "settings changed: " + ", ".join(changed)
    if record.get("inputs") != inputs:
        return "its input changed"
    return "its key changed (another bitsmith version)"
