"""The residual zoo models through the command line: `bitsmith train` on the synthetic data set, then
`bitsmith quantize` (PTQ W8A8), whose graph holds the adds and agrees with the fake-quant model."""

import json
import subprocess
import sys

import pytest

from bitsmith.integer import load


def bitsmith(*args):
    proc = subprocess.run([sys.executable, "-m", "bitsmith.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"bitsmith {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, adds", [
    ("mobilenetv2_tiny", 3),
    pytest.param("resnet20", 9, marks=pytest.mark.slow),  # 6.6x the multiply-adds: with -m slow
])
def test_train_then_quantize_from_the_command_line(name, adds, tmp_path):
    run, graph_dir = tmp_path / "fp32", tmp_path / "w8a8"
    trained = bitsmith("train", "--model", name, "--dataset", "synthetic", "--epochs", "2", "--batch-size", "64",
                       "--out", run, "--json")
    assert trained["accuracy"] > 50  # learnable in two epochs (62 SGD steps): well above 10 % chance
    q = bitsmith("quantize", run, "--out", graph_dir, "--json")
    graph = load(graph_dir)
    assert [n.op for n in graph.nodes].count("Add") == adds
    assert graph.input_spec.shape == (1, 28, 28)
    assert q["agreement"] >= 0.98
    assert abs(q["integer_accuracy"] - q["fp32_accuracy"]) <= 3.0
