"""A pipeline file read and checked: its stages, their settings and the order they run in.

    [pipeline]
    out = "runs/demo-pipeline"        # the output folder (bitsmith run --out overrides it)

    [stages.fp32]
    kind = "train"
    model = "lenet5"
    dataset = "fashion-mnist"

    [stages.int8]
    kind = "quantize"
    from = "fp32"                     # the stage whose output this one reads
    wbits = 8

Everything is checked before any stage runs, and every error names the file, the line and the
key: TOML syntax (tomllib's own message and line), an unknown top-level key, stage kind or
setting, a value of the wrong type or one the job's config refuses, a `from` naming no stage or a
stage that does not make what this one needs (a missing input), and a cycle of `from`s.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitsmith.errors import BitsmithError, ConfigError
from bitsmith.pipefile.kinds import COMMON, PRODUCTS, StageKind, stage_kinds
from bitsmith.pipefile.locate import KeyLines
from bitsmith.pipefile.options import check_value, describe

PIPELINE_KEYS = ("out", "data_dir", "description")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


@dataclass
class Stage:
    """One stage: its `settings` (every option of its kind, defaults filled in), its `sources`
    (the stages `from` names, in order) and `refs` (other settings naming a stage, e.g. qat's
    widths_from), and `data_dir` (its own, else the pipeline's)."""

    name: str
    kind: StageKind
    settings: dict[str, Any]
    sources: list[str]
    refs: dict[str, str]
    data_dir: str | None

    @property
    def upstream(self) -> list[str]:
        return [*self.sources, *self.refs.values()]


@dataclass
class Pipeline:
    path: Path
    out: Path | None
    data_dir: str | None
    stages: dict[str, Stage]
    order: list[str]  # every stage after the stages it reads
    description: str | None = None
    lines: KeyLines = field(repr=False, default=None)  # type: ignore[assignment]

    def downstream(self, name: str) -> list[str]:
        """`name` and every stage that reads it, directly or not, in run order."""
        reached = {name}
        for stage in self.order:
            if any(u in reached for u in self.stages[stage].upstream):
                reached.add(stage)
        return [s for s in self.order if s in reached]


class _Where:
    """Error messages that name the file, the line and the dotted key."""

    def __init__(self, path: Path, lines: KeyLines) -> None:
        self.path, self.lines = path, lines

    def error(self, keys: tuple[str, ...], problem: str) -> ConfigError:
        line = self.lines.line(*keys)
        place = f"{self.path}:{line}" if line is not None else str(self.path)
        return ConfigError(f"{place}: {'.'.join(keys)}: {problem}")


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and check the pipeline file at `path` (module docstring); ConfigError on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipeline file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the pipeline file {path}: {e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message ends with "(at line L, column C)"
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    where = _Where(path, KeyLines(text))
    for key in doc:
        if key not in ("pipeline", "stages"):
            raise where.error((key,), "unknown key; allowed at the top: [pipeline] and [stages.NAME] tables")
    head = doc.get("pipeline", {})
    if not isinstance(head, dict):
        raise where.error(("pipeline",), "must be a table: [pipeline]")
    for key, value in head.items():
        if key not in PIPELINE_KEYS:
            raise where.error(("pipeline", key), f"unknown key; allowed: {', '.join(PIPELINE_KEYS)}")
        if not isinstance(value, str):
            raise where.error(("pipeline", key), f"{describe(value)} is not allowed; allowed: a string")
    tables = doc.get("stages")
    if not isinstance(tables, dict) or not tables:
        raise where.error(("stages",), "the file names no stage; add a [stages.NAME] table with a kind, "
                                       "e.g. [stages.fp32] kind = \"train\"")
    data_dir = head.get("data_dir")
    stages = {name: _stage(where, name, table, data_dir) for name, table in tables.items()}
    _check_inputs(where, stages)
    order = _order(where, stages)
    return Pipeline(path, Path(head["out"]) if "out" in head else None, data_dir, stages, order,
                    head.get("description"), where.lines)


def _stage(where: _Where, name: str, table: Any, data_dir: str | None) -> Stage:
    keys = ("stages", name)
    if not _NAME.match(name):
        raise where.error(keys, "a stage name (it names the stage's folder) may hold letters, digits, _ and -, "
                                "and may not start with -")
    if not isinstance(table, dict):
        raise where.error(keys, "must be a table: [stages.NAME] with kind = \"…\"")
    kinds = stage_kinds()
    if "kind" not in table:
        raise where.error(keys, f"has no kind; allowed kinds: {', '.join(kinds)}")
    kind_name = table["kind"]
    if not isinstance(kind_name, str) or kind_name not in kinds:
        raise where.error(keys + ("kind",), f"unknown stage kind {describe(kind_name)}; allowed: {', '.join(kinds)}")
    kind = kinds[kind_name]
    allowed = {**COMMON, **kind.options}
    for key, value in table.items():
        if key not in allowed:
            raise where.error(keys + (key,), f"unknown key for {_a(kind.name)} stage; allowed: "
                                             f"{', '.join(k for k in allowed if k != 'kind')}")
        problem = check_value(allowed[key], value)
        if problem is not None:
            raise where.error(keys + (key,), f"{describe(value)} is not allowed; allowed: {problem}")
    for key, option in kind.options.items():
        if option.required and key not in table:
            raise where.error(keys, f"{_a(kind.name)} stage needs {key} = …")
    settings = {key: table.get(key, option.default) for key, option in kind.options.items()}
    for key, option in kind.options.items():  # `cd = 0` and `cd = 0.0` are one setting, and one key
        if option.type == "float" and isinstance(settings[key], int) and not isinstance(settings[key], bool):
            settings[key] = float(settings[key])
    try:
        kind.check(settings)
    except BitsmithError as e:
        raise where.error(keys + (_culprit(kind, table, str(e)),), str(e)) from None
    sources = table.get("from", [])
    sources = [sources] if isinstance(sources, str) else list(sources)
    refs = {key: settings[key] for key in kind.refs if settings.get(key) is not None}
    return Stage(name, kind, settings, sources, refs, table.get("data_dir", data_dir))


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _culprit(kind: StageKind, table: dict[str, Any], message: str) -> str:
    """The setting a job config's error is about (its own name or the config's name for it), else "kind"."""
    for key in table:
        if key not in kind.options:
            continue  # kind, from, data_dir: a config's error is about the kind's own settings
        for name in (key, kind.aliases.get(key)):
            if name and re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message):
                return key
    return "kind"


def _check_inputs(where: _Where, stages: dict[str, Stage]) -> None:
    """Every `from` (and stage-naming setting) names a stage that makes what this one needs."""
    for stage in stages.values():
        kind, keys = stage.kind, ("stages", stage.name)
        needs = " or ".join(PRODUCTS[n] for n in kind.needs)
        if not kind.needs and stage.sources:
            raise where.error(keys + ("from",), f"{_a(kind.name)} stage reads no other stage's output; remove from")
        if kind.needs and not stage.sources:
            makers = [s.name for s in stages.values() if s.kind.makes in kind.needs and s is not stage]
            hint = f" (here: {', '.join(makers)})" if makers else "; no stage of this file makes one"
            raise where.error(keys, f"missing input: {_a(kind.name)} stage needs {needs}; add from = \"STAGE\" naming "
                                    f"a stage that makes it{hint}")
        if len(stage.sources) > 1 and not kind.many:
            raise where.error(keys + ("from",), f"{_a(kind.name)} stage reads one stage; got {len(stage.sources)}")
        named = [("from", source, kind.needs) for source in stage.sources]
        named += [(key, ref, (kind.refs[key],)) for key, ref in stage.refs.items()]
        for key, source, wanted in named:
            if source not in stages:
                raise where.error(keys + (key,), f"missing input: no stage named {source!r}; stages: "
                                                 f"{', '.join(stages)}")
            made = stages[source].kind.makes
            if source != stage.name and made not in wanted:
                raise where.error(keys + (key,), f"missing input: {_a(kind.name)} stage needs "
                                                 f"{' or '.join(PRODUCTS[w] for w in wanted)}, but stage {source!r} "
                                                 f"({stages[source].kind.name}) makes {PRODUCTS[made]}")


def _order(where: _Where, stages: dict[str, Stage]) -> list[str]:
    """The stages in run order (each after those it reads; otherwise in file order); a cycle is an error."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = path[path.index(name):] + [name]
            raise where.error(("stages", cycle[0], "from"), f"the stages read each other in a cycle: "
                                                             f"{' -> '.join(cycle)}; a stage can only read stages "
                                                             "that run before it")
        state[name] = "open"
        for upstream in stages[name].upstream:
            visit(upstream, path + [name])
        state[name] = "done"
        order.append(name)

    for name in stages:
        visit(name, [])
    return order
