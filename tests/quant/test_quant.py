"""Post-training quantization: observers, scale modes, per-layer settings, frozen weight scales,
the ranges report, and the integer engine against the int64 reference for every new mode."""

import csv
import json
import math
import time

import numpy as np
import pytest
import torch

from bitsmith.errors import ConfigError
from bitsmith.quant import lower
from bitsmith.models import build_model
from bitsmith.quant import QuantConfig, quantize
from bitsmith.quant.config import OBSERVERS, parse_qformat
from bitsmith.quant.fake_quant import FakeQuantize, activation_qparams, is_power_of_two
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.observers import HISTOGRAM_BINS, make_observer, weight_clip
from bitsmith.quant.ptq import set_activation_quantization
from bitsmith.quant.ranges import COLUMNS, layer_ranges, ranges_table, write_ranges
from bitsmith.integer import engine
from tests.oracle import reference_run
from tests.quantized import quantized_graph


def observe(name, data, batches=8):
    obs = make_observer(name)
    for chunk in data.chunk(batches):
        obs(chunk)
    return obs


@pytest.fixture(scope="module")
def gaussian_with_outliers():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=gen)
    x[:10] = 40.0  # a handful of outliers far outside the bulk
    return x


def quant_mse(x, lo, hi, bits, symmetric=True):
    scale, zp, signed = activation_qparams(lo, hi, bits, symmetric)
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    q = torch.clamp(torch.round(x / scale) + zp, qmin, qmax)
    return float((((q - zp) * scale - x) ** 2).mean())


# -- observers ------------------------------------------------------------------------------


def test_observer_names_are_the_documented_ones():
    assert OBSERVERS == ("minmax", "sigma", "percentile", "mse", "kl")


def test_minmax_keeps_outliers_and_clipping_observers_drop_them(gaussian_with_outliers):
    x = gaussian_with_outliers
    assert observe("minmax", x).range(8) == (float(x.min()), 40.0)
    for name, bits in (("percentile", 8), ("mse", 4), ("kl", 8), ("kl", 4), ("sigma", 8)):
        lo, hi = observe(name, x).range(bits)
        assert 1.5 < hi < 6.0 and -6.0 < lo < -1.5, (name, bits, lo, hi)


def test_mse_observer_minimises_the_quantization_error(gaussian_with_outliers):
    x = gaussian_with_outliers
    for bits, symmetric in ((4, True), (4, False), (8, True)):
        lo, hi = observe("mse", x).range(bits, symmetric)
        err = quant_mse(x, lo, hi, bits, symmetric)
        assert err <= quant_mse(x, float(x.min()), float(x.max()), bits, symmetric)
        for shrink in (0.7, 1.3):  # a clearly different clip is worse
            assert err < quant_mse(x, lo * shrink, hi * shrink, bits, symmetric) * 1.001


def test_sigma_is_mean_plus_minus_three_sigma_within_min_max():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50_000, generator=gen) * 2 + 1
    x[0] = 30.0
    mean, std = float(x.double().mean()), float(x.double().std(unbiased=False))
    lo, hi = observe("sigma", x).range()
    assert lo == pytest.approx(mean - 3 * std, rel=1e-9) and hi == pytest.approx(mean + 3 * std, rel=1e-9)
    u = torch.rand(10_000, generator=gen)  # uniform [0, 1): mean + 3σ ≈ 1.37 > max, so max wins
    lo, hi = observe("sigma", u).range()
    assert lo == pytest.approx(float(u.min())) and hi == pytest.approx(float(u.max()))


def test_percentile_is_per_side_and_survives_a_growing_range():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400_000, generator=gen) * torch.linspace(0.5, 3.0, 400_000)  # later batches are wider
    obs = observe("percentile", x, batches=8)
    assert float(obs.hist.sum() + obs.zeros) == pytest.approx(x.numel())  # re-binning keeps every count
    lo, hi = obs.range()
    bin_width = (float(x.max()) - float(x.min())) / HISTOGRAM_BINS
    want_lo, want_hi = np.quantile(x.numpy(), [1e-4, 1 - 1e-4])
    assert abs(hi - want_hi) < 3 * bin_width and abs(lo - want_lo) < 3 * bin_width
    assert hi < float(x.max()) and lo > float(x.min())


def test_histogram_starting_with_zeros_then_growing():
    obs = make_observer("kl")
    obs(torch.zeros(1000))  # e.g. a ReLU output that is all zero in the first batch
    obs(torch.rand(1000) * 4)
    assert float(obs.zeros) == 1000 and float(obs.hist.sum()) == pytest.approx(1000)
    assert 0 < obs.range(8)[1] <= 4


def test_relu_outputs_stay_unsigned_for_every_observer():
    x = torch.relu(torch.randn(20_000, generator=torch.Generator().manual_seed(3)))
    for name in OBSERVERS:
        lo, hi = observe(name, x).range(8)
        scale, zp, signed = activation_qparams(lo, hi, 8)
        assert lo >= 0 and hi > 0 and not signed and zp == 0, name


def test_kl_is_fast_on_lenet_sized_calibration():
    # conv1 of LeNet on 8 batches of 128: 8 × 128 × 6 × 28 × 28 values after the ReLU.
    gen = torch.Generator().manual_seed(4)
    obs = make_observer("kl")
    for _ in range(8):
        obs(torch.relu(torch.randn(128, 6, 28, 28, generator=gen)))
    start = time.perf_counter()
    for bits in (8, 4):
        obs.range(bits)
    assert time.perf_counter() - start < 2.0


def test_weight_clip_per_tensor_and_per_channel():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(8, 40, 5, 5, generator=gen) * 0.1
    w[0, 0, 0, 0] = 3.0  # one outlier among the 1000 weights of channel 0
    amax = w.abs().flatten(1).amax(1)
    assert torch.equal(weight_clip(w, 8, "minmax", per_channel=True), amax)
    assert float(weight_clip(w, 8, "minmax")) == pytest.approx(3.0)
    for name in ("sigma", "mse"):
        clip = weight_clip(w, 4, name, per_channel=True)
        assert clip.shape == (8,) and float(clip[0]) < 1.5 and torch.all(clip <= amax + 1e-7), name
        assert float(weight_clip(w, 4, name)) < 1.5, name
    big = torch.randn(8, 400, 5, 5, generator=gen) * 0.1  # 10,000 weights per channel
    big[0, 0, 0, 0] = 3.0
    pct = weight_clip(big, 8, "percentile", per_channel=True)
    assert float(pct[0]) < 1.0 and torch.all(pct <= big.abs().flatten(1).amax(1))


# -- activation parameters and scale modes --------------------------------------------------


def test_asymmetric_zero_point():
    scale, zp, signed = activation_qparams(-1.0, 3.0, 8, symmetric=False)
    assert not signed and scale == pytest.approx(4 / 255) and zp == 64
    scale, zp, signed = activation_qparams(0.5, 2.0, 8, symmetric=False)  # widened to include 0
    assert zp == 0 and scale == pytest.approx(2 / 255)
    scale, zp, signed = activation_qparams(-2.0, -0.5, 4, symmetric=False)
    assert zp == 15 and scale == pytest.approx(2 / 15)
    scale, zp, signed = activation_qparams(-1.0, 3.0, 8, symmetric=False, pot=True)
    assert scale == 2 ** -5 and zp == 32  # 4/255 ≈ 0.0157 rounded up to 1/32


def lenet_and_calib(bias=True, seed=0):
    torch.manual_seed(seed)
    model = build_model("lenet5", bias=bias).eval()
    calib = [torch.randn(16, 1, 32, 32) for _ in range(2)]
    return model, calib


def test_asymmetric_input_quantizer_has_a_zero_point():
    model, calib = lenet_and_calib()
    calib = [c * 0.5 + 0.6 for c in calib]  # skewed: mostly positive
    g = lower(quantize(model, calib, QuantConfig(act_symmetric=False)))
    spec = g.tensors[g.nodes[0].output]
    assert not spec.signed and 0 < spec.zero_point < 255


def test_pot_scales_are_powers_of_two_and_requant_is_a_pure_shift():
    model, calib = lenet_and_calib()
    float_model = quantize(model, calib, QuantConfig(per_channel=True))
    q = quantize(model, calib, QuantConfig(scale_mode="pot", per_channel=True))
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantLayer)}
    for name, m in layers.items():
        assert all(is_power_of_two(float(s)) for s in m.weight_scale)
        # Rounded up: never finer than the float scale, at most twice as coarse.
        ref = float_model.get_submodule(name).weight_scale
        assert torch.all(m.weight_scale >= ref) and torch.all(m.weight_scale < 2 * ref)
    for m in q.modules():
        if isinstance(m, FakeQuantize):
            assert is_power_of_two(float(m.scale))
    g = lower(q)
    requants = [n for n in g.nodes if n.op == "Requant"]
    assert requants
    for n in requants:
        assert torch.all(g.params[n.params["multiplier"]] == 1)  # out = (v + 2^(s-1)) >> s
        assert torch.all(g.params[n.params["shift"]] > 0)


def test_q35_weight_codes_are_rounded_times_32():
    model, calib = lenet_and_calib()
    with torch.no_grad():
        w = model.conv1.weight
        w[0, 0, 0, :3] = torch.tensor([5.0, -4.0, -4.3])  # beyond [−4, 3.96875]: saturate
        w[0, 0, 1, 0] = 1 / 64 + 1 / 32  # a tie: round half to even
    config = QuantConfig(scale_mode="qformat", weight_qformat="Q3.5", act_qformat="Q4.4")
    q = quantize(model, calib, config)
    g = lower(q)
    conv = next(n for n in g.nodes if n.op == "Conv2d")
    codes = g.params[conv.params["weight"]].to(torch.int64)
    assert torch.equal(codes, torch.clamp(torch.round(model.conv1.weight.detach() * 32), -128, 127).to(torch.int64))
    assert codes[0, 0, 0, 0] == 127 and codes[0, 0, 0, 1] == -128 and codes[0, 0, 0, 2] == -128
    assert codes[0, 0, 1, 0] == 2
    spec = g.tensors[g.nodes[0].output]
    assert (spec.scale, spec.zero_point, spec.signed, spec.bits) == (1 / 16, 0, True, 8)
    q35 = parse_qformat("Q3.5")
    assert (q35.bits, q35.scale, -128 * q35.scale, 127 * q35.scale) == (8, 2 ** -5, -4.0, 3.96875)


def test_per_layer_overrides_take_effect():
    model, calib = lenet_and_calib()
    config = QuantConfig(weight_bits=4, act_bits=4, per_channel=True,
                         layers={"conv1": {"weight_bits": 8, "act_bits": 8, "weight_observer": "mse"},
                                 "fc1": {"per_channel": False, "observer": "kl"},
                                 "input": {"act_bits": 8, "act_symmetric": False}})
    q = quantize(model, calib, config)
    g = lower(q)
    bits = {}
    for n in g.nodes:
        if n.op in ("Conv2d", "Linear"):
            w = g.params[n.params["weight"]]
            bits[n.name] = (n.attrs["weight_bits"], int(w.abs().max()))
    assert bits["q_conv1_acc"] == (8, 127)
    assert all(b == 4 and 1 <= amax <= 7 for name, (b, amax) in bits.items() if name != "q_conv1_acc")
    assert g.tensors["q_conv1"].bits == 8 and g.tensors["q_conv2"].bits == 4
    spec = g.tensors[g.nodes[0].output]  # the input quantizer
    assert spec.bits == 8 and not spec.signed and spec.zero_point > 0
    assert g.tensors["q_fc1_acc"].per_channel is False and g.tensors["q_conv2_acc"].per_channel is True
    assert q.q_fc1.act_quant.observer_name == "kl" and q.q_conv1.weight_observer == "mse"


# -- frozen weight scales, enabled flag -----------------------------------------------------


def test_frozen_weight_scale_is_what_forward_and_lower_use():
    model, calib = lenet_and_calib()
    q = quantize(model, calib, QuantConfig(weight_bits=4, per_channel=True, weight_observer="mse"))
    layer = q.q_conv2
    assert layer.weights_frozen and layer.weight_scale.shape == (16,)
    codes, scale = layer.quantize_weight()
    assert scale is layer.weight_scale
    captured = {}
    orig = layer._linear_op

    def spy(x, w, b):  # the weights the forward pass actually convolves with
        captured["w"] = w
        return orig(x, w, b)

    layer._linear_op = spy
    q(calib[0][:2])
    assert torch.equal(captured["w"], codes.float() * scale.reshape(-1, 1, 1, 1))
    g = lower(q)
    node = next(n for n in g.nodes if n.name == "q_conv2_acc")
    assert torch.equal(g.params[node.params["weight"]].to(torch.int64), codes)
    # The mse clip is tighter than max|W| on some channel, and the scale no longer follows the weights.
    amax = layer.weight.detach().abs().flatten(1).amax(1)
    assert torch.any(scale * 7 < amax * 0.999)
    before = layer.weight_scale.clone()
    with torch.no_grad():
        layer.weight.mul_(2)
    assert torch.equal(layer.quantize_weight()[1], before)


def test_disabled_activation_quantizers_make_a_weight_only_model():
    model, calib = lenet_and_calib()
    q = quantize(model, calib, QuantConfig(weight_bits=4, act_bits=2))
    x = calib[0][:4]
    quantized = q(x)
    set_activation_quantization(q, False)
    weight_only = q(x)
    assert not torch.allclose(quantized, weight_only)
    fq = q.input_quant
    assert torch.equal(fq(x), x)
    with pytest.raises(ConfigError, match="disabled"):
        lower(q)
    set_activation_quantization(q, True)
    assert torch.equal(q(x), quantized)


# -- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    dict(weight_bits=0), dict(weight_bits=1), dict(act_bits=33), dict(weight_bits=17),
    dict(observer="magic"), dict(weight_observer="kl"), dict(scale_mode="fixed"),
    dict(act_symmetric="no"), dict(per_channel=1),
    dict(weight_qformat="Q3.5"),  # needs scale_mode="qformat"
    dict(scale_mode="qformat"),  # needs a Q-format
    dict(scale_mode="qformat", weight_qformat="3.5"), dict(scale_mode="qformat", weight_qformat="Q0.8"),
    dict(scale_mode="qformat", weight_qformat="Q3.5", weight_bits=4),
    dict(scale_mode="qformat", act_qformat="Q4.4", act_symmetric=False),
    dict(layers={"conv1": {"weight_bits": 1}}), dict(layers={"conv1": {"act_bits": 33}}),
    dict(layers={"conv1": {"observer": "magic"}}), dict(layers={"conv1": {"weight_observer": "kl"}}),
    dict(layers={"conv1": {"colour": "red"}}), dict(layers={"conv1": 8}), dict(layers=["conv1"]),
    dict(scale_mode="qformat", weight_qformat="Q3.5", layers={"conv1": {"weight_bits": 4}}),
])
def test_bad_settings_are_config_errors_listing_what_is_allowed(bad):
    with pytest.raises(ConfigError, match="allowed"):
        QuantConfig(**bad)


@pytest.mark.parametrize("layers, words", [
    ({"conv9": {"weight_bits": 4}}, ["conv1", "fc2"]),  # lists the quantizable layers
    ({"pool1": {"per_channel": True}}, ["per-channel", "apply to Conv2d/Linear weights", "MaxPool2d"]),
    ({"flatten": {"per_channel": False}}, ["per-channel", "apply to Conv2d/Linear weights", "Flatten"]),
    ({"pool1": {"act_bits": 4}}, ["MaxPool2d", "no quantizer of its own"]),
    ({"input": {"weight_bits": 4}}, ["Conv2d/Linear weights"]),
])
def test_bad_layer_names_are_checked_when_the_model_is_known(layers, words):
    model, calib = lenet_and_calib()
    with pytest.raises(ConfigError, match="allowed") as err:
        quantize(model, calib, QuantConfig(layers=layers))
    for w in words:
        assert w in str(err.value)


def test_config_json_round_trip():
    config = QuantConfig(weight_bits=4, act_bits=6, per_channel=True, observer="kl", weight_observer="mse",
                         act_symmetric=False, scale_mode="pot", layers={"conv1": {"weight_bits": 8}})
    doc = json.loads(json.dumps(config.to_json()))
    assert QuantConfig.from_json(doc) == config
    q = QuantConfig(scale_mode="qformat", weight_qformat="Q3.5")
    assert QuantConfig.from_json(q.to_json()) == q
    with pytest.raises(ConfigError, match="allowed"):
        QuantConfig.from_json({**doc, "rounding": "up"})


def test_config_is_immune_to_later_edits_of_the_override_dict():
    layers = {"conv1": {"weight_bits": 8}}
    config = QuantConfig(layers=layers)
    layers["conv1"]["weight_bits"] = 3
    assert config.for_layer("conv1")["weight_bits"] == 8 and config.for_layer("fc1")["weight_bits"] == 8
    hash(config)  # still usable as a key


# -- ranges report --------------------------------------------------------------------------


def test_layer_ranges_report(tmp_path):
    model, calib = lenet_and_calib(bias=False)
    rows = layer_ranges(model, calib)
    assert [r["layer"] for r in rows] == ["input", "conv1", "conv2", "conv3", "fc1", "fc2"]
    conv1 = rows[1]
    w = model.conv1.weight.detach().double()
    assert conv1["weight_min"] == pytest.approx(float(w.min())) and conv1["weight_max"] == pytest.approx(float(w.max()))
    assert conv1["weight_3sigma_hi"] == pytest.approx(float(w.mean() + 3 * w.std(unbiased=False)))
    # Activations are measured after the fused ReLU, with float weights.
    act = torch.relu(torch.cat([model.conv1(x) for x in calib])).detach().double()
    assert conv1["act_min"] == 0.0 and conv1["act_max"] == pytest.approx(float(act.max()), rel=1e-6)
    assert conv1["act_std"] == pytest.approx(float(act.std(unbiased=False)), rel=1e-6)
    for r in rows[1:]:
        assert r["weight_wider"] == ("3sigma" if 6 * r["weight_std"] > r["weight_max"] - r["weight_min"] else "minmax")
        assert r["act_wider"] in ("minmax", "3sigma")
    assert rows[-1]["act_min"] < 0  # the logits are not behind a ReLU
    paths = write_ranges(rows, tmp_path / "out")
    with open(paths["csv"]) as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == COLUMNS and len(read) == 6 and read[0]["weight_min"] == ""
    assert float(read[1]["weight_max"]) == pytest.approx(conv1["weight_max"])
    assert json.loads((tmp_path / "out" / "ranges.json").read_text())["layers"][2]["layer"] == "conv2"
    assert ranges_table(rows).row_count == 6


# -- the integer engine against the int64 reference, for every new mode ----------------------


def assert_engine_equals_reference(g, shape, seed=0):
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed)) * 1.2
    got = engine.run(g, x, return_all=True)
    want = reference_run(g, x)
    for tensor, value in want.items():
        if g.tensors[tensor].dtype == "int":
            np.testing.assert_array_equal(got[tensor].numpy(), value, err_msg=f"tensor {tensor}")
    assert len(np.unique(want[g.outputs[0]])) > 1


@pytest.mark.parametrize("name, config", [
    ("lenet5", QuantConfig(act_symmetric=False, requantize_output=True)),
    ("lenet5", QuantConfig(scale_mode="pot", per_channel=True)),
    ("lenet5", QuantConfig(scale_mode="qformat", weight_qformat="Q3.5", act_qformat="Q4.4")),
    ("lenet5", QuantConfig(scale_mode="qformat", weight_qformat="Q2.6")),  # activations: pot
    ("lenet5", QuantConfig(weight_bits=4, act_bits=4, per_channel=True, observer="kl", weight_observer="mse",
                           layers={"conv1": {"weight_bits": 8, "act_bits": 8, "act_symmetric": False},
                                   "fc1": {"act_bits": 6, "observer": "percentile"}})),
    ("nin", QuantConfig(scale_mode="pot", act_symmetric=False, observer="mse")),  # avg-pool, zero points
])
def test_engine_equals_reference_for_new_modes(name, config):
    kwargs = {"bias": True} if name == "lenet5" else {}
    g, shape = quantized_graph(name, config, **kwargs)
    if config.scale_mode != "float":
        for n in g.nodes:
            if n.op == "Requant":
                assert torch.all(g.params[n.params["multiplier"]] == 1), n.name
    assert_engine_equals_reference(g, shape)


def test_fake_quant_matches_the_integer_graph_under_pot():
    # Power-of-two scales make every requantization exact up to the rounding of ties, so the
    # fake-quant model and the graph agree to within one output step.
    model, calib = lenet_and_calib()
    q = quantize(model, calib, QuantConfig(scale_mode="pot", requantize_output=True))
    g = lower(q)
    x = calib[0][:8]
    out = g.dequantize(engine.run(g, x))
    step = g.tensors[g.outputs[0]].scale
    with torch.no_grad():
        assert float((q(x) - out).abs().max()) <= step + 1e-6
    assert math.log2(step) == int(math.log2(step))


# -- the front end's entry points (moved from tests/integer/test_integer.py) ----------------

def test_quant_config_rejects_bad_settings():
    for bad in (dict(weight_bits=0), dict(weight_bits=1), dict(act_bits=33), dict(observer="magic"),
                dict(multiplier_bits=40), dict(weight_bits=8.0)):
        with pytest.raises(ConfigError, match="allowed"):
            QuantConfig(**bad)


def test_lower_needs_a_quantized_model():
    with pytest.raises(ConfigError, match="quantize"):
        lower(build_model("lenet5"))


def test_quantize_needs_calibration_data():
    with pytest.raises(ConfigError, match="calibration"):
        quantize(build_model("lenet5"), [], QuantConfig())


def test_predict_ranks_dequantized_outputs_with_per_channel_scales():
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    with torch.no_grad():  # very different class scales make a raw-code argmax wrong
        model.fc2.weight.mul_(torch.logspace(-2, 1, 10).reshape(-1, 1))
    q = quantize(model, [torch.randn(16, 1, 32, 32)], QuantConfig(weight_bits=4, act_bits=8, per_channel=True))
    g = lower(q)
    x = torch.randn(64, 1, 32, 32)
    assert torch.equal(engine.predict(g, x).argmax(1), q(x).argmax(1))
    assert not torch.equal(engine.run(g, x).argmax(1), q(x).argmax(1))
