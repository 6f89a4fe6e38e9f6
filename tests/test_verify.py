"""bitsmith.verify: one input policy, one comparison, every back end against the integer engine."""

import json

import numpy as np
import pytest
import torch

from bitsmith.accel.config import AccelConfig
from bitsmith.errors import ConfigError
from bitsmith.integer import engine
from bitsmith.integer.arithmetic import quantize_input
from bitsmith.verify import (BACKENDS, compare, random_code_images, summary, verification_inputs, verify,
                             verify_all)
from tests.helpers import GXX, golden, invoke

# Golden graphs (tests/golden/README.md):
LENET = "lenet5_bias_w8a8"            # LeNet-5 W8A8 with bias, so that a dropped bias shows
LENET_ASYM = "lenet5_bias_asym"       # … and asymmetric activations: an input zero point
SMALL_ALL_BACKENDS = "all_backends_small"   # every back end runs it (no AvgPool for HLS): bias, padding, raw Linear
NON_SQUARE_STRIDE = "strided_padded"  # a conv of stride (1, 2): the HLS format has one stride for both axes


@pytest.fixture(scope="module")
def lenet():
    return golden(LENET)


@pytest.fixture(scope="module")
def lenet_reports(lenet, tmp_path_factory):
    """All four back ends once on 1 test image + 1 random-code image (the RTL is the slow part)."""
    if GXX is None:
        pytest.skip("g++ not installed: the HLS reference cannot be compiled")
    inputs = verification_inputs(lenet, 1)
    return inputs, verify_all(lenet, list(BACKENDS), inputs, config=AccelConfig(pe=8, simd=8),
                              work_dir=tmp_path_factory.mktemp("verify"))


# -- the input policy -----------------------------------------------------------------------------

def test_random_codes_reproduce_exactly_under_quantize_input(lenet):
    x = random_code_images(lenet, 16, seed=3)
    spec = lenet.tensors[lenet.nodes[0].output]
    codes = quantize_input(x, float(spec.scale), spec.zero_point, spec.qmin, spec.qmax)
    assert torch.equal(engine.run(lenet, x, return_all=True)[lenet.nodes[0].output], codes)
    # uniform over the whole code range: both ends and many values in between
    assert int(codes.min()) == spec.qmin and int(codes.max()) == spec.qmax
    assert len(torch.unique(codes)) == spec.qmax - spec.qmin + 1
    # and with a zero point (asymmetric, unsigned input codes)
    asym = golden(LENET_ASYM)
    aspec = asym.tensors[asym.nodes[0].output]
    assert aspec.zero_point != 0
    ax = random_code_images(asym, 4)
    acodes = engine.run(asym, ax, return_all=True)[asym.nodes[0].output]
    assert int(acodes.min()) == aspec.qmin and int(acodes.max()) == aspec.qmax
    assert torch.equal(random_code_images(lenet, 16, seed=3), x)   # seeded


def test_real_and_random_inputs_are_both_present(lenet):
    inputs = verification_inputs(lenet, 3)
    assert (inputs.real, inputs.random, inputs.count) == (3, 3, 6)
    assert inputs.description.startswith("fashion-mnist: the first 3 test images + 3 random input codes")
    real, rand = inputs.x[:3], inputs.x[3:]
    assert torch.equal(rand, random_code_images(lenet, 3, seed=0))
    assert not torch.equal(real, rand)
    # the real ones are what evaluation feeds the model: a Fashion-MNIST picture, padded to 32x32
    from bitsmith.data import load_dataset
    from bitsmith.data.datasets import dataset_info
    from bitsmith.data.transforms import to_model_input

    test = load_dataset("fashion-mnist", "test", limit=3)
    assert torch.equal(real, to_model_input(test.images, dataset_info("fashion-mnist"), (1, 32, 32)))
    only = verification_inputs(lenet, 2, data="random")
    assert (only.real, only.random, only.count) == (0, 2, 2) and only.description.startswith("random:")


def test_random_only_when_no_data_set_fits_the_input_shape():
    g = golden(SMALL_ALL_BACKENDS)   # 2x8x8: no data set has it
    inputs = verification_inputs(g, 2)
    assert (inputs.real, inputs.random) == (0, 2)
    assert "no data set fits the input shape 2x8x8" in inputs.description
    with pytest.raises(ConfigError, match="--data random"):
        verification_inputs(g, 2, data="fashion-mnist")   # asked for by name: an error
    with pytest.raises(ConfigError, match="positive integer"):
        verification_inputs(g, 0)


# -- the comparison -------------------------------------------------------------------------------

def test_compare_names_the_first_mismatch_with_coordinates():
    want = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    got = want.clone().numpy()
    assert compare(got, want) == (120, 0, None)
    got[1, 2, 3, 1] += 7
    got[1, 2, 3, 4] -= 1
    assert compare(got, want) == (120, 2, {"image": 1, "channel": 2, "y": 3, "x": 1, "got": int(want[1, 2, 3, 1]) + 7,
                                           "want": int(want[1, 2, 3, 1])})
    vec = torch.arange(12).reshape(2, 6)
    bad = vec.clone().numpy().reshape(2, 6, 1, 1)   # a back end's [N, F, 1, 1] for the engine's [N, F]
    bad[1, 4] = -1
    assert compare(bad, vec) == (12, 1, {"image": 1, "index": 4, "got": -1, "want": 10})
    assert compare(np.zeros((2, 5)), vec)[1] == 12   # a different size: every element counts


# -- every back end, zero mismatches ------------------------------------------------------------------

def test_four_backends_agree_bit_for_bit_with_the_engine(lenet, lenet_reports):
    inputs, reports = lenet_reports
    assert set(reports) == {"onnx", "accel", "hls", "rtl"}
    for name, report in reports.items():
        assert report.error is None, (name, report.error)
        assert report.images == 2 and report.inputs == inputs.description
        assert report.mismatches == 0 and report.first_mismatch is None, name
        assert report.passed, name
        assert all(row.elements > 0 for row in report.layers), name
    # ONNX: every tensor of the graph; accel, rtl: the 7 layers with cycles = §5; hls: CONV_n / POOL_n
    assert [r.name for r in reports["onnx"].layers] == [n.output for n in lenet.nodes]
    layer_names = [r.name for r in reports["accel"].layers]
    assert len(layer_names) == 7 and [r.name for r in reports["rtl"].layers] == layer_names
    assert [r.name for r in reports["hls"].layers] == layer_names
    assert [r.label for r in reports["hls"].layers][:2] == ["CONV_0", "POOL_0"]
    for name in ("accel", "rtl"):
        r = reports[name]
        assert r.cycles_per_image == [r.formula_cycles] * 2 and r.cycles_equal
        assert all(row.cycles == row.formula_cycles for row in r.layers)
    assert reports["onnx"].cycles_per_image is None and reports["onnx"].cycles_equal is None
    doc = summary("lenet", inputs, reports)
    assert doc["passed"] and json.loads(json.dumps(doc))["backends"]["rtl"]["cycles_equal"]


@pytest.mark.parametrize("fault", ["drop_bias", "shift_off_by_one", "no_zero_point"])
def test_a_fault_fails_the_accelerator_naming_the_layer(fault):
    g = golden(LENET_ASYM)   # bias and an input zero point: every fault changes a value
    inputs = verification_inputs(g, 2, data="random")
    good = verify(g, "accel", inputs)
    bad = verify(g, "accel", inputs, fault=fault)
    assert good.passed and not bad.passed
    first = bad.first_mismatch
    assert first["layer"] == "q_conv1" and first["label"] == "L00"   # the first layer already differs
    assert first["got"] != first["want"] and {"image", "channel", "y", "x"} <= set(first)
    assert bad.cycles_equal   # a datapath bug does not change the timing
    assert any(fault in note for note in bad.notes)


def test_rtl_fault_fails_naming_the_layer():
    g = golden(SMALL_ALL_BACKENDS)
    inputs = verification_inputs(g, 1, data="random")
    report = verify(g, "rtl", inputs, config=AccelConfig(pe=4, simd=4), fault="drop_bias")
    assert not report.passed and report.mismatches > 0
    assert report.first_mismatch["layer"] == report.layers[0].name and report.first_mismatch["label"] == "L00"


def test_a_backend_that_cannot_run_the_graph_is_an_error_report():
    g = golden(NON_SQUARE_STRIDE)
    inputs = verification_inputs(g, 1, data="random")
    report = verify(g, "hls", inputs)
    assert not report.passed and report.layers == []
    assert "stride [1, 2]" in report.error and "HLS export" in report.error
    assert verify(g, "accel", inputs).passed
    with pytest.raises(ConfigError, match="unknown back end 'gpu'"):
        verify(g, "gpu", inputs)


# -- the command line ------------------------------------------------------------------------------

def _invoke(args):
    return invoke("verify", *args)


def test_cli_verify_all_json_and_exit_codes(tmp_path):
    if GXX is None:
        pytest.skip("g++ not installed")
    golden(SMALL_ALL_BACKENDS).save(tmp_path / "g")
    base = [tmp_path / "g", "--backend", "all", "--images", "1", "--pe", "4", "--simd", "4", "--json"]
    ok = _invoke(base)
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.output.strip().splitlines()[-1])
    assert doc["passed"] and set(doc["backends"]) == {"onnx", "accel", "hls", "rtl"}
    assert doc["inputs"]["random"] == 1 and doc["graph"] == str(tmp_path / "g")
    for name, r in doc["backends"].items():
        assert r["passed"] and r["mismatches"] == 0 and r["images"] == 1, name
    assert doc["backends"]["rtl"]["cycles_per_image"] == [doc["backends"]["rtl"]["formula_cycles"]]

    bad = _invoke(base + ["--fault", "drop_bias"])
    assert bad.exit_code == 1, bad.output
    doc = json.loads(bad.output.strip().splitlines()[-1])
    assert not doc["passed"]
    for name in ("accel", "rtl"):
        r = doc["backends"][name]
        assert not r["passed"] and r["first_mismatch"]["layer"] == r["layers"][0]["name"], name
    assert doc["backends"]["onnx"]["passed"] and doc["backends"]["hls"]["passed"]   # no fault there

    table = _invoke([tmp_path / "g", "--backend", "accel,onnx", "--images", "1", "--fault", "shift_off_by_one"])
    assert table.exit_code == 1 and "FAIL" in table.output and "PASS" in table.output
    for option in (["--backend", "gpu"], ["--fault", "flip"], ["--sim", "modelsim"]):
        wrong = _invoke([tmp_path / "g", "--images", "1", *option])
        assert isinstance(wrong.exception, ConfigError), option   # exit 2 through bitsmith.cli.main


def test_cli_verify_reports_an_unsupported_op_as_an_error_row(tmp_path):
    golden(NON_SQUARE_STRIDE).save(tmp_path / "g")
    result = _invoke([tmp_path / "g", "--backend", "hls,accel", "--images", "1", "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.output.strip().splitlines()[-1])
    assert doc["backends"]["accel"]["passed"] and "stride [1, 2]" in doc["backends"]["hls"]["error"]


def test_a_fault_that_would_change_nothing_is_refused():
    """drop_bias on a graph without bias would 'pass' and prove nothing about the checker."""
    from bitsmith.accel.compiler import compile_graph
    from bitsmith.accel.faults import with_fault

    g = golden("lenet5_w8a8")  # no bias anywhere
    program = compile_graph(g, AccelConfig())
    with pytest.raises(ConfigError, match="would change nothing"):
        with_fault(program, "drop_bias")
    assert with_fault(program, "shift_off_by_one") is not program
