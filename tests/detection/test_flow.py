"""The detection flow through the jobs and the command line: float training reports IoU, QAT with
the UltraNet_BJTU bit strings trains with the detection loss, the integer graph's boxes equal the
fake-quant model's, `bitsmith eval` prints IoU. Small: 32 x 64 inputs, a few hundred images."""

from __future__ import annotations

import json

import pytest

from bitsmith.data import datasets
from bitsmith.errors import ConfigError
from bitsmith.pipeline import evaluate_path, qat_config, qat_run, quantize_run
from bitsmith.quant import QuantConfig
from bitsmith.train import TrainConfig, train
from tests.helpers import invoke

DATASET = "dacsdc-synthetic-32x64"


@pytest.fixture(autouse=True)
def small_splits(monkeypatch):
    monkeypatch.setitem(datasets.DETECTION_SIZES, "train", (256, 0))
    monkeypatch.setitem(datasets.DETECTION_SIZES, "test", (64, 1))


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    # module scope: set the small splits by hand (monkeypatch is per test)
    saved = dict(datasets.DETECTION_SIZES)
    datasets.DETECTION_SIZES.update({"train": (256, 0), "test": (64, 1)})
    try:
        out = tmp_path_factory.mktemp("det") / "fp"
        metrics = train(TrainConfig(model="ultranet", dataset=DATASET, epochs=2, batch_size=32, optimizer="adam"),
                        out, quiet=True)
    finally:
        datasets.DETECTION_SIZES.update(saved)
    return out, metrics


def test_float_training_reports_mean_iou(float_run):
    out, metrics = float_run
    assert "accuracy" not in metrics and 0.0 <= metrics["mean_iou"] <= 1.0
    assert [set(r) >= {"train_iou", "test_iou", "train_loss"} for r in metrics["history"]] == [True, True]
    assert metrics["history"][1]["train_loss"] < metrics["history"][0]["train_loss"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mean_iou"] == metrics["mean_iou"]
    assert evaluate_path(out)["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-6)


def test_qat_with_bjtu_bits_trains_the_detection_loss_and_integer_boxes_match(float_run, tmp_path):
    out, _ = float_run
    config = qat_config(out, "lsq", bitw="444444444", bita="444444444", epochs=1)
    metrics = qat_run(out, tmp_path / "qat", config, quiet=True)
    assert metrics["weight_bits"] == [4] * 9
    assert set(metrics["history"][0]) >= {"train_iou", "train_loss"} and "train_acc" not in metrics["history"][0]
    assert metrics["agreement"] == 1.0 and metrics["disagreements"] == 0 and metrics["box_max_abs_diff"] == 0.0
    assert metrics["integer_iou"] == metrics["iou"]
    assert evaluate_path(tmp_path / "qat")["integer_iou"] == pytest.approx(metrics["integer_iou"], abs=1e-6)


def test_ptq_reports_iou_of_float_fake_quant_and_integer(float_run, tmp_path):
    out, metrics = float_run
    figures = quantize_run(out, tmp_path / "ptq", QuantConfig(weight_bits=8, act_bits=8))
    assert figures["fp32_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-6)
    assert 0.0 <= figures["integer_iou"] <= 1.0 and "integer_accuracy" not in figures
    assert abs(figures["integer_iou"] - figures["iou"]) < 0.01
    # No bound on the box agreement here: PTQ's fake-quant model rounds in float, and this 2-epoch
    # head has near-ties in objectness whose argmax flips with the float summation order (0.72 on
    # one thread, above 0.9 on two). QAT's agreement is checked exactly above.
    assert 0.0 <= figures["agreement"] <= 1.0


def test_cli_input_size_and_eval(float_run, tmp_path):
    out, metrics = float_run
    result = invoke("eval", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-6)

    result = invoke("train", "--model", "skynet", "--dataset", "dacsdc-synthetic", "--input-size", "32x64",
                    "--epochs", "1", "--batch-size", "128", "--out", tmp_path / "sky", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["dataset"] == DATASET and "mean_iou" in doc

    result = invoke("train", "--model", "ultranet", "--dataset", "cifar10", "--input-size", "32x64",
                    "--epochs", "1", "--out", tmp_path / "bad")
    assert isinstance(result.exception, ConfigError) and "detection data sets" in str(result.exception)
    result = invoke("train", "--model", "vgg7", "--dataset", "dacsdc-synthetic", "--input-size", "32x64",
                    "--epochs", "1", "--out", tmp_path / "bad2")
    assert isinstance(result.exception, ConfigError) and "no detection head" in str(result.exception)


def test_a_detector_searched_by_hessian_uses_the_detection_loss(float_run, tmp_path, monkeypatch):
    """The Hessian search of a detector computes its traces on the detection loss (cross-entropy
    would refuse the box targets) and gives bit strings QAT takes; DNAS, which trains a classifier's
    supernet, is refused by name."""
    from bitsmith.accel.config import AccelConfig
    from bitsmith.search import hessian
    from bitsmith.search.job import search_run

    out, _ = float_run
    seen = []
    real = hessian.layer_traces

    def spy(*args, **kwargs):
        seen.append(kwargs.get("loss_fn"))
        return real(*args, **kwargs)

    monkeypatch.setattr(hessian, "layer_traces", spy)
    accel = AccelConfig(act_buffer_bytes=1 << 20)
    doc = search_run(out, tmp_path / "s", method="hessian", budgets={"dsp": 1000}, accel=accel, train_limit=32,
                     max_iterations=2, quiet=True)
    assert seen and seen[0] is not None and seen[0].__self__.__class__.__name__ == "DetectionObjective"
    assert len(doc["bitw"]) == 9 and len(doc["bita"]) == 9
    with pytest.raises(ConfigError, match="hessian"):
        search_run(out, tmp_path / "d", method="dnas", accel=accel, quiet=True)
