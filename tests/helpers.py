"""Helpers shared by the tests (plain functions; tests/conftest.py turns some into fixtures).

Nothing here imports bitsmith's front end (quant, models, train): back-end tests import this module.
"""

from __future__ import annotations

import copy
import functools
import shutil
from pathlib import Path

import pytest

from bitsmith.integer import IntegerGraph, load

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "golden"

GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ not installed: the C++ HLS reference cannot be compiled")
needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed")


@functools.cache
def _golden(name: str) -> IntegerGraph:
    if not (GOLDEN / name / "graph.json").is_file():
        raise FileNotFoundError(f"no golden graph {name!r} in {GOLDEN}; scripts/make_golden_graphs.py makes them")
    return load(GOLDEN / name)


def golden(name: str) -> IntegerGraph:
    """The golden graph tests/golden/<name> (scripts/make_golden_graphs.py made it; tests/golden/README.md
    says what each is). Loaded and validated once per process; each call returns a deep copy, so a
    test may change its graph without touching another test's."""
    return copy.deepcopy(_golden(name))


def golden_path(name: str) -> Path:
    """The folder of a golden graph, for commands that read a graph folder (copy it before changing it)."""
    _golden(name)
    return GOLDEN / name


def save_tensors_tied(folder, params) -> None:
    """Replace a graph folder's tensors.safetensors with `params` (plain safetensors, no digest of
    its own) and record the new file's sha256 in graph.json, as a test that edits a graph's
    parameters on purpose must: graph.json is tied to its tensors (docs/integer-graph.md)."""
    import json

    from safetensors.torch import save_file

    from bitsmith.storage import sha256_file

    folder = Path(folder)
    save_file(params, folder / "tensors.safetensors")
    doc = json.loads((folder / "graph.json").read_text())
    doc["tensors_sha256"] = sha256_file(folder / "tensors.safetensors")
    (folder / "graph.json").write_text(json.dumps(doc))


def invoke(*args):
    """`bitsmith ARGS…` in-process (no second torch import); a BitsmithError comes back as result.exception."""
    from typer.testing import CliRunner

    from bitsmith.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])
