"""The floors of docs/architecture.md hold: import-linter's contracts, and a light IR import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _imported_modules(statement: str) -> set[str]:
    """Every module a fresh interpreter imports to run `statement` (from -X importtime)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True,
                          check=True)
    return {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_importing_the_ir_package_stays_light():
    modules = _imported_modules("import bitsmith.integer")
    heavy = sorted(m for m in modules if m.startswith(("torch", "bitsmith.quant", "bitsmith.models")))
    assert heavy == []


def test_the_ir_and_the_engine_never_load_the_front_end():
    # torch itself imports torch.fx, so this checks bitsmith's own modules only.
    modules = _imported_modules("import bitsmith.integer.engine, bitsmith.integer.graph, bitsmith.integer.reference")
    assert not any(m.startswith(("bitsmith.quant", "bitsmith.models", "bitsmith.data", "bitsmith.pipeline")) for m in modules)


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True)


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[test]')")
def test_contracts_hold_and_a_deliberate_violation_breaks_them(tmp_path):
    assert _lint(ROOT).returncode == 0, _lint(ROOT).stdout[-2000:]
    # The violation docs/architecture.md shows: the IR importing the front end.
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    graph = tmp_path / "src" / "bitsmith" / "integer" / "graph.py"
    graph.write_text(graph.read_text() + "\nfrom bitsmith.quant.config import QuantConfig  # deliberate violation\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "bitsmith.integer.graph -> bitsmith.quant.config" in done.stdout


# The back-end tests read golden graphs (tests/golden/README.md), never the front end: a change in
# quantization cannot break them. tests/quant/test_golden_graphs.py is where the two meet.
BACK_END_TESTS = ["onnx", "accel", "rtl", "targets", "cim", "test_verify.py", "test_backends_agree.py", "helpers.py",
                  "conftest.py", "oracle.py", "random_graphs.py"]
FRONT_END = ("bitsmith.quant", "bitsmith.models", "bitsmith.train", "bitsmith.runs", "tests.quantized")


def _imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_back_end_tests_never_import_the_front_end():
    tests = ROOT / "tests"
    files = [p for entry in BACK_END_TESTS for p in ([tests / entry] if entry.endswith(".py")
                                                      else sorted((tests / entry).rglob("*.py")))]
    assert len(files) > 10
    offending = {str(p.relative_to(tests)): sorted(m for m in _imports(p) if m.startswith(FRONT_END)) for p in files}
    assert {k: v for k, v in offending.items() if v} == {}
