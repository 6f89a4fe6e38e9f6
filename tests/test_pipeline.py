"""The main job end to end on the real Fashion-MNIST (slow: about 90 s; run with `make test-slow`)."""

import json
from pathlib import Path

import pytest

from bitsmith.pipeline import demo

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_demo_meets_the_accuracy_targets(tmp_path):
    summary = demo(tmp_path, quiet=True)
    assert summary["fp32_accuracy"] >= 89.5
    assert summary["integer_accuracy"] >= summary["fp32_accuracy"] - 0.2
    assert summary["agreement"] >= 0.999
    assert json.loads((tmp_path / "summary.json").read_text())["integer_accuracy"] == summary["integer_accuracy"]
    assert (tmp_path / "fp32" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "int8" / "graph.json").is_file()


def test_a_collapsed_qat_result_is_called_so():
    from bitsmith.pipeline import _collapsed

    assert _collapsed({"fp32_accuracy": 90.5, "integer_accuracy": 10.0}, 10000).startswith("QAT ended at 10.00%")
    assert "--lr" in _collapsed({"fp32_accuracy": 90.5, "integer_accuracy": 10.0}, 10000)
    assert _collapsed({"fp32_accuracy": 90.5, "integer_accuracy": 85.0}, 10000) is None
    assert _collapsed({"fp32_accuracy": 90.5, "integer_accuracy": 10.0}, 64) is None  # too few images to tell
