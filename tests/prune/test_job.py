"""`bitsmith prune` end to end: a float run in, a pruned float run out; QAT of it keeps the zeros down
to the integer codes, and the pruned, quantized graph runs bit-exactly on ONNX Runtime and the
accelerator's cycle model. Bad input is refused before any work, and nothing is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bitsmith.errors import ConfigError
from bitsmith.integer import load
from bitsmith.integer.sparsity import WEIGHTED_OPS, graph_sparsity
from bitsmith.pipeline import qat_run, quantize_run
from bitsmith.prune.job import PruneConfig, prune_run
from bitsmith.prune.nm import is_nm
from bitsmith.quant.api import ClipQConfig, QATConfig
from bitsmith.runs import load_run
from bitsmith.verify import verification_inputs, verify_all
from tests.helpers import invoke
from tests.quantized import tiny_float_run


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    return tiny_float_run(tmp_path_factory.mktemp("prune") / "fp32")


def _weight_codes(graph) -> dict[str, np.ndarray]:
    return {node.output: graph.weight_codes(node).numpy() for node in graph.nodes if node.op in WEIGHTED_OPS}


def _agree(graph) -> None:
    reports = verify_all(graph, ["onnx", "accel"], verification_inputs(graph, 100))
    for name, report in reports.items():
        assert report.passed, (name, report.to_json()["first_mismatch"], report.error)
        assert report.images >= 100                 # 100 test images (+ 100 random-code images)


def test_magnitude_prune_then_qat_keeps_the_zeros_and_agrees_on_the_back_ends(float_run, tmp_path):
    metrics = prune_run(float_run, tmp_path / "p", PruneConfig("magnitude", sparsity=0.8, epochs=1), quiet=True)
    assert metrics["sparsity"] == pytest.approx(0.8, abs=0.01)
    run = load_run(tmp_path / "p")
    assert run.meta["pruning"]["method"] == "magnitude" and run.meta["pruning"]["sparsity"] == 0.8
    stored = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert stored["accuracy"] == metrics["accuracy"]

    qat = qat_run(tmp_path / "p", tmp_path / "q", QATConfig("lsq", epochs=1), quiet=True)
    graph = load(tmp_path / "q")
    # every weight that was pruned in the float run is code 0 in the graph (and QAT revived none)
    float_zero = sum(int((m.weight == 0).sum()) for m in run.model.modules() if hasattr(m, "weight")
                     and m.weight is not None and m.weight.dim() > 1)
    code_zero = sum(int((c == 0).sum()) for c in _weight_codes(graph).values())
    assert code_zero >= float_zero
    assert qat["pruned"]["density"] == pytest.approx(graph_sparsity(graph)["density"])
    assert qat["pruned"]["density"] <= 0.2 + 1e-9
    _agree(graph)


def test_ptq_of_a_pruned_run_keeps_the_zeros(float_run, tmp_path):
    prune_run(float_run, tmp_path / "p", PruneConfig("nm", n=2, m=4, epochs=1), quiet=True)
    quantize_run(tmp_path / "p", tmp_path / "g")
    graph = load(tmp_path / "g")
    for name, codes in _weight_codes(graph).items():
        assert is_nm(torch.as_tensor(codes).reshape(codes.shape[0], -1).float(), 2, 4), name
    _agree(graph)


def test_channel_pruning_shrinks_the_run_and_the_graph(float_run, tmp_path):
    metrics = prune_run(float_run, tmp_path / "p", PruneConfig("channel", sparsity=0.5, epochs=1), quiet=True)
    assert metrics["macs_after"] < 0.5 * metrics["macs_before"]
    quantize_run(tmp_path / "p", tmp_path / "g")
    graph = load(tmp_path / "g")
    conv1 = next(iter(_weight_codes(graph).values()))
    assert conv1.shape[0] == 3                                   # LeNet-5's 6 filters halved
    _agree(graph)


def test_clipq_of_a_pruned_run_is_refused(float_run, tmp_path):
    prune_run(float_run, tmp_path / "p", PruneConfig("magnitude", sparsity=0.5, epochs=1), quiet=True)
    with pytest.raises(ConfigError, match="pruned run"):
        qat_run(tmp_path / "p", tmp_path / "q", ClipQConfig(), quiet=True)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"sparsity": 1.0}, "sparsity must be in [0, 1)"),
    ({"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ({"method": "nm", "n": 5, "m": 4}, "N=5 with M=4 is not allowed"),
    ({"method": "pattern", "pattern_k": 10}, "pattern size must be 2..9"),
    ({"method": "lottery"}, "unknown pruning method"),
    ({"criterion": "taylor"}, "unknown criterion"),
    ({"ssl_groups": ("kernel",)}, "SSL groups"),
    ({"epochs": 0}, "epochs must be a positive integer"),
])
def test_bad_settings_are_refused_before_any_work(float_run, tmp_path, kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        prune_run(float_run, tmp_path / "p", PruneConfig(**kwargs), quiet=True)
    assert fragment in str(e.value)
    assert not (tmp_path / "p").exists()


def test_the_command(float_run, tmp_path):
    result = invoke("prune", str(float_run), "--out", str(tmp_path / "p"), "--sparsity", "0.5", "--epochs", "1",
                    "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["method"] == "magnitude" and doc["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "bitsmith qat" in doc["next"]
    bad = invoke("prune", str(float_run), "--out", str(tmp_path / "b"), "--sparsity", "1.5")
    assert bad.exit_code != 0 and "sparsity must be in [0, 1)" in bad.output + str(bad.exception)
    assert not (tmp_path / "b").exists()
