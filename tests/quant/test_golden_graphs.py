"""The golden graphs in tests/golden/ are exactly what scripts/make_golden_graphs.py makes today.

The back-end tests read those graphs instead of quantizing (tests/golden/README.md); this is the one
place where quantization and the golden graphs meet. Each graph is rebuilt in memory with the
script's own builder and compared byte for byte: graph.json as text, every tensor (name, dtype,
shape, values), and the safetensors file. A failure means quantization or lowering changed what
it produces: if that was meant, re-run the script and review the diff of tests/golden/.
"""

import importlib.util
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import GOLDEN, TESTS

SCRIPT = TESTS.parent / "scripts" / "make_golden_graphs.py"
STALE = "is stale: re-run scripts/make_golden_graphs.py (tests/golden/README.md) and review the diff"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_golden_graphs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


MAKE = _load_script()


def test_the_folder_holds_the_scripts_graphs_and_the_readme_names_each():
    assert MAKE.GOLDEN == GOLDEN
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(MAKE.GRAPHS)
    for name in MAKE.GRAPHS:
        assert sorted(f.name for f in (GOLDEN / name).iterdir()) == ["graph.json", "tensors.safetensors"], name
    readme = (GOLDEN / "README.md").read_text()
    assert [name for name in MAKE.GRAPHS if f"`{name}`" not in readme] == []


@pytest.mark.parametrize("name", list(MAKE.GRAPHS))
def test_golden_graph_is_byte_identical_to_a_fresh_build(name, tmp_path):
    fresh = MAKE.build(name).save(tmp_path / name)
    saved = GOLDEN / name
    assert (saved / "graph.json").read_text() == (fresh / "graph.json").read_text(), f"{name}/graph.json {STALE}"
    got, want = load_file(saved / "tensors.safetensors"), load_file(fresh / "tensors.safetensors")
    assert sorted(got) == sorted(want), f"{name}: tensor names differ; {STALE}"
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, f"{name}: tensor {key} {STALE}"
        assert torch.equal(got[key], value), f"{name}: tensor {key} {STALE}"
    assert (saved / "tensors.safetensors").read_bytes() == (fresh / "tensors.safetensors").read_bytes(), \
        f"{name}/tensors.safetensors {STALE}"
