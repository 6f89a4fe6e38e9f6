"""What a report is built from: the folders named on the command line, told apart by kind.

A float run and an integer (or QAT) graph are the primary sources; a demo folder stands for the
runs and graphs inside it. Beside them, the JSON other commands write is picked up where it lies:
a folder named on the command line, or any folder directly inside a run or graph folder, that is
a ranges report (ranges.json), a design sweep (sweep.json), a crossbar sweep (cim_sweep.json) or a
mixed-precision search (search.json); and verification results, the document `bitsmith verify
--json` prints, saved as a *.json file in a graph folder (or one folder below it), or named itself
(a pipeline's verify stage writes verify.json beside its graph). Anything else
named on the command line is refused by name: a report of nothing is a mistake, not an empty page.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitsmith.artifacts import (CIM_SWEEP, DEMO, FLOAT_RUN, INTEGER_GRAPH, QAT_GRAPH, RANGES, SEARCH, SWEEP,
                                folder_kind)
from bitsmith.errors import ConfigError
from bitsmith.storage import read_json

#: The side files a report shows, by kind, and the file of each that holds the figures.
SIDE_FILES = {RANGES.key: "ranges.json", SWEEP.key: "sweep.json", CIM_SWEEP.key: "cim_sweep.json",
              SEARCH.key: "search.json"}


@dataclass
class Sources:
    """The folders a report reads, each list in command-line order, without repeats."""

    runs: list[Path] = field(default_factory=list)
    graphs: list[Path] = field(default_factory=list)
    #: kind key (ranges, sweep, cim_sweep, search) -> [(folder, its JSON document)]
    side: dict[str, list[tuple[Path, Any]]] = field(default_factory=dict)
    #: graph folder -> [(file, the verify document)]
    verify: dict[Path, list[tuple[Path, dict]]] = field(default_factory=dict)

    def _add(self, bucket: list[Path], path: Path) -> None:
        if path.resolve() not in {p.resolve() for p in bucket}:
            bucket.append(path)

    def _add_side(self, key: str, path: Path) -> None:
        found = self.side.setdefault(key, [])
        if path.resolve() not in {p.resolve() for p, _ in found}:
            found.append((path, read_json(path / SIDE_FILES[key], f"{key} result")))


def _is_verify_doc(doc: Any) -> bool:
    return (isinstance(doc, dict) and isinstance(doc.get("backends"), dict) and "passed" in doc
            and all(isinstance(r, dict) for r in doc["backends"].values()))


def _read_verify_doc(path: Path) -> dict | None:
    """The saved `bitsmith verify --json` document at `path`; None when the file is not one."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if _is_verify_doc(doc) else None


def _verify_results(graph: Path) -> list[tuple[Path, dict]]:
    """Saved `bitsmith verify --json` documents in `graph` or one folder below it."""
    found = []
    candidates = sorted(graph.glob("*.json")) + sorted(graph.glob("*/*.json"))
    for path in candidates:
        if path.name in ("graph.json", "metrics.json", "program.json"):
            continue
        doc = _read_verify_doc(path)
        if doc is not None:
            found.append((path, doc))
    return found


def _classify(path: Path, sources: Sources, named: bool) -> bool:
    """Add `path` to `sources` by its kind; False when it is none a report reads."""
    kind = folder_kind(path)
    if kind is FLOAT_RUN:
        sources._add(sources.runs, path)
    elif kind in (QAT_GRAPH, INTEGER_GRAPH):
        sources._add(sources.graphs, path)
        found = sources.verify.setdefault(path, [])
        found += [(f, doc) for f, doc in _verify_results(path) if f.resolve() not in {p.resolve() for p, _ in found}]
    elif kind is not None and kind.key in SIDE_FILES:
        sources._add_side(kind.key, path)
    elif kind is DEMO and named:
        children = [c for c in sorted(path.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        return any([_classify(c, sources, named=False) for c in children])
    else:
        return False
    if kind in (FLOAT_RUN, QAT_GRAPH, INTEGER_GRAPH):
        for child in sorted(path.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                sub = folder_kind(child)
                if sub is not None and sub.key in SIDE_FILES:
                    sources._add_side(sub.key, child)
    return True


def _verify_file(path: Path, sources: Sources) -> bool:
    """A saved verification result named directly (a pipeline's verify stage writes one beside, not
    inside, its graph): its graph joins the report, with this result. False when it is not one."""
    doc = _read_verify_doc(path)
    if doc is None:
        return False
    graph = Path(str(doc.get("graph", "")))
    if not graph.is_absolute():
        graph = path.parent / graph
    if not graph.is_dir() or folder_kind(graph) not in (QAT_GRAPH, INTEGER_GRAPH):
        raise ConfigError(f"{path}: this verification result is of graph {graph}, which is not an integer graph "
                          "folder here; name the graph folder and keep the result inside it")
    _classify(graph, sources, named=True)
    key = next(g for g in sources.graphs if g.resolve() == graph.resolve())  # the graph as first named
    found = sources.verify.setdefault(key, [])
    if path.resolve() not in {p.resolve() for p, _ in found}:
        found.append((path, doc))
    return True


def collect_sources(paths: list[str | os.PathLike]) -> Sources:
    """Classify every folder named; ConfigError naming the first that no report section reads."""
    if not paths:
        raise ConfigError("bitsmith report needs at least one run or graph folder")
    sources = Sources()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder; bitsmith report reads float run folders "
                              "(bitsmith train) and integer graph folders (bitsmith quantize / qat)")
        if path.is_file() and _verify_file(path, sources):
            continue
        if not path.is_dir() or not _classify(path, sources, named=True):
            what = "a file" if not path.is_dir() else "neither a float run nor an integer graph folder"
            raise ConfigError(f"{path} is {what}; bitsmith report reads float run folders (bitsmith train), "
                              "integer or QAT graph folders (bitsmith quantize / qat), a demo folder, and the "
                              "ranges, sweep, cim sweep and search folders beside them, and saved verification "
                              "results (bitsmith verify --json)")
    return sources
