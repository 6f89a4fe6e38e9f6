"""The golden graphs in tests/golden/ are exactly what scripts/make_golden_graphs.py makes today.

The back-end tests read those graphs instead of quantizing (tests/golden/README.md); this is the one
place where quantization and the golden graphs meet. Each graph is rebuilt in memory with the
script's own builder and compared byte for byte: graph.json as text, every tensor (name, dtype,
shape, values), and the safetensors file. A failure means quantization or lowering changed what
it produces: if that was meant, re-run the script and review the diff of tests/golden/.
"""

import importlib.util
import json
import math
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


#: How far a float32 calibration statistic may move between CPUs: their convolution kernels sum in
#: different orders, so an activation range differs in its last bits, and more after a few layers
#: (NIN with BatchNorm: 2·10^-5 relative at its sixth conv, an AVX2 EPYC against the VNNI machine the
#: graphs were made on); every quantity derived from one (scales, requant multipliers, bias codes)
#: moves by as much relatively, or by one code.
CPU_ROUNDING = 1e-4


@pytest.mark.parametrize("name", list(MAKE.GRAPHS))
def test_golden_graph_is_byte_identical_to_a_fresh_build(name, tmp_path):
    """Byte for byte on the CPU the graphs were made on. On another CPU the float calibration rounds
    differently, so there the graph must be the same up to that rounding (`same_but_for_rounding`):
    a change to quantization or lowering still shows as a structural or larger difference."""
    fresh = MAKE.build(name).save(tmp_path / name)
    saved = GOLDEN / name
    if (saved / "tensors.safetensors").read_bytes() == (fresh / "tensors.safetensors").read_bytes() and \
            (saved / "graph.json").read_text() == (fresh / "graph.json").read_text():
        return
    problem = same_but_for_rounding(saved, fresh)
    assert problem is None, f"{name}: {problem}; {STALE}"


def same_but_for_rounding(saved, fresh) -> str | None:
    """None when the two graph folders differ at most by CPU_ROUNDING (relative) in floats and
    derived integers (or by one code); else what differs."""
    a, b = (json.loads((p / "graph.json").read_text()) for p in (saved, fresh))
    for doc in (a, b):
        doc.pop("tensors_sha256", None)   # the tensors are compared below
    problem = _json_difference(a, b, "graph.json")
    if problem is not None:
        return problem
    got, want = load_file(saved / "tensors.safetensors"), load_file(fresh / "tensors.safetensors")
    if sorted(got) != sorted(want):
        return "tensor names differ"
    for key, value in want.items():
        if got[key].dtype != value.dtype or got[key].shape != value.shape:
            return f"tensor {key}: dtype or shape differs"
        if value.dtype.is_floating_point:
            close = torch.allclose(got[key].double(), value.double(), rtol=CPU_ROUNDING, atol=0)
        else:
            diff = (got[key].to(torch.int64) - value.to(torch.int64)).abs()
            close = bool((diff <= (value.to(torch.int64).abs() * CPU_ROUNDING).clamp(min=1)).all())
        if not close:
            return f"tensor {key}: values differ beyond rounding"
    return None


def _json_difference(a, b, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        if sorted(a) != sorted(b):
            return f"{path}: keys differ"
        return next((p for k in a if (p := _json_difference(a[k], b[k], f"{path}/{k}")) is not None), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: lengths differ"
        return next((p for i, (u, v) in enumerate(zip(a, b))
                     if (p := _json_difference(u, v, f"{path}[{i}]")) is not None), None)
    if isinstance(a, float) and isinstance(b, float):
        return None if math.isclose(a, b, rel_tol=CPU_ROUNDING) else f"{path}: {a} != {b}"
    return None if a == b and type(a) is type(b) else f"{path}: {a!r} != {b!r}"


def test_rounding_tolerance_still_sees_a_real_change(tmp_path):
    """The fallback comparison refuses what a change to lowering would do: a shifted zero point."""
    name = "lenet5_w8a8"
    graph = MAKE.build(name)
    spec = next(t for t in graph.tensors.values() if t.dtype == "int" and t.bits == 8)
    spec.zero_point += 1
    assert same_but_for_rounding(GOLDEN / name, graph.save(tmp_path / name)) is not None
