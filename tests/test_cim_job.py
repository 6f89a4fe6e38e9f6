"""`bitsmith cim run`: an integer graph from a float run evaluated on the crossbar simulator against the
integer engine (the ideal crossbar agrees image by image), and bad settings refused naming the layer."""

import json

import pytest

from bitsmith.artifacts import CIM_SWEEP, folder_kind
from bitsmith.cim import CIMConfig
from bitsmith.errors import ConfigError
from bitsmith.pipeline import cim_evaluate, quantize_run
from bitsmith.quant import QuantConfig
from tests.helpers import invoke
from tests.quantized import tiny_float_run


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("cim")
    quantize_run(tiny_float_run(root / "fp"), root / "g", QuantConfig(weight_bits=4, act_bits=4))
    return root / "g"


def test_the_ideal_crossbar_agrees_with_the_engine_image_by_image(graph, one_thread):
    result = cim_evaluate(graph, CIMConfig(cell_bits=2, digital="none"), limit=64)
    assert result["exact"] and result["agreement"] == 1.0 and result["images"] == 64
    assert result["cim_accuracy"] == result["integer_accuracy"]
    assert set(result["mapped_layers"]) and result["crossbars"] == sum(
        layer["crossbars"] for layer in result["mapped_layers"].values())
    coarse = cim_evaluate(graph, CIMConfig(cell_bits=1, adc_bits=1, digital="none"), limit=64)
    assert not coarse["exact"] and coarse["agreement"] < 1.0      # a 1-bit ADC cannot keep every prediction


def test_the_command(graph, one_thread):
    result = invoke("cim", "run", str(graph), "--cell-bits", "4", "--digital", "none", "--images", "16",
                    "--batch-size", "8", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["agreement"] == 1.0 and doc["images"] == 16 and doc["config"]["cell_bits"] == 4
    assert doc["batch_size"] == 8
    # per-call ADC ranges are the min / max of one batch: the batch size changes what a coarse ADC gives
    coarse = {b: cim_evaluate(graph, CIMConfig(adc_bits=2, digital="none"), limit=64, batch_size=b)
              for b in (1, 64)}
    assert coarse[1]["cim_accuracy"] != coarse[64]["cim_accuracy"] or coarse[1]["agreement"] != coarse[64]["agreement"]
    bad = invoke("cim", "run", str(graph), "--cell-bits", "3")
    assert bad.exit_code != 0 and "cell_bits" in bad.output + str(bad.exception)
    with pytest.raises(ConfigError, match="variation"):
        CIMConfig(variation=-0.1)


def test_the_sweep_writes_every_point_and_a_figure(graph, tmp_path, one_thread):
    result = invoke("cim", "sweep", str(graph), "--out", str(tmp_path / "s"), "--adc-bits", "2,ideal",
                    "--cell-bits", "1,4", "--variation", "0", "--digital", "none", "--images", "16", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert json.loads((tmp_path / "s" / "cim_sweep.json").read_text()) == doc
    assert (tmp_path / "s" / "cim_sweep.png").stat().st_size > 1000
    assert [(p["cell_bits"], p["adc_bits"]) for p in doc["points"]] == [(1, 2), (1, None), (4, 2), (4, None)]
    assert all(p["agreement"] == 1.0 for p in doc["points"] if p["adc_bits"] is None)
    assert folder_kind(tmp_path / "s") is CIM_SWEEP
    other = invoke("cim", "sweep", str(graph), "--out", str(graph), "--adc-bits", "2", "--cell-bits", "1")
    assert other.exit_code != 0 and "integer graph" in other.output + str(other.exception)   # not over a graph
    assert (graph / "graph.json").is_file()
    for bad, fragment in ((["--adc-bits", "3..x"], "not a number"), (["--cell-bits", "3"], "cell_bits"),
                          (["--variation", "-0.1"], "variation")):
        result = invoke("cim", "sweep", str(graph), "--out", str(tmp_path / "b"), *bad)
        assert result.exit_code != 0 and fragment in result.output + str(result.exception), bad
        assert not (tmp_path / "b").exists()                     # refused before any image ran


def test_a_calibrated_adc_range_is_measured_on_training_images(graph, one_thread):
    result = invoke("cim", "run", str(graph), "--adc-bits", "16", "--adc-range", "calibrated", "--digital", "none",
                    "--calibration-images", "64", "--images", "16", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["calibration_images"] == 64 and doc["config"]["adc_range"] == "calibrated"
    assert doc["agreement"] > 0.9  # 16 bits over ranges seen on training images: test sums may fall outside
    coarse = cim_evaluate(graph, CIMConfig(adc_bits=3, adc_range="calibrated", digital="none"), limit=16,
                          calibration_images=32)
    assert coarse["agreement"] < 1.0
    with pytest.raises(ConfigError, match="calibration_images"):
        cim_evaluate(graph, CIMConfig(adc_bits=3, adc_range="calibrated"), limit=16, calibration_images=0)
