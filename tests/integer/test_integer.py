"""Unit tests of the integer arithmetic, the graph format and its validation, and the engine's checks."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bitsmith.errors import AccumulatorOverflowError, ConfigError, GraphError
from bitsmith.integer import engine, load
from bitsmith.integer.arithmetic import MAX_SHIFT, int_range, quantize_input, quantize_multiplier, requantize
from bitsmith.integer.exactness import FLOAT32_EXACT, compute_dtype
from bitsmith.integer.reference import conv2d_int64
from tests.helpers import golden, save_tensors_tied


# -- arithmetic -----------------------------------------------------------------------------

@pytest.mark.parametrize("real, bits, want", [
    (0.5, 32, (1 << 30, 31)),
    (0.75, 32, (3 << 29, 31)),
    (1.0, 32, (1 << 30, 30)),
    (3.0, 8, (96, 5)),
    (0.0, 32, (0, 0)),
])
def test_quantize_multiplier_known_values(real, bits, want):
    assert quantize_multiplier(real, bits) == want


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_quantize_multiplier_is_normalised_and_close(bits):
    gen = torch.Generator().manual_seed(0)
    for real in (torch.rand(200, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-6, 2, (200,), generator=gen)).tolist():
        m, s = quantize_multiplier(real, bits)
        assert 1 << (bits - 2) <= m < 1 << (bits - 1)
        assert 0 <= s <= MAX_SHIFT
        assert abs(m * 2.0**-s - real) <= 2.0 ** -(s + 1) * (1 + 1e-12)  # within half an LSB of m


def test_quantize_multiplier_rounding_carry_and_limits():
    # 0.99999999 rounds up to 2^31 at 32 bits: m must be renormalised, not overflow.
    m, s = quantize_multiplier(0.9999999999, 32)
    assert (m, s) == (1 << 30, 30)
    m, s = quantize_multiplier(1e-30, 32)  # tiny: shift capped
    assert s == MAX_SHIFT and m == round(1e-30 * 2.0**MAX_SHIFT)
    with pytest.raises(ConfigError, match="too large"):
        quantize_multiplier(300.0, 8)
    with pytest.raises(ConfigError):
        quantize_multiplier(-1.0)
    with pytest.raises(ConfigError):
        quantize_multiplier(math.nan)


def test_requantize_rounds_half_up_and_clamps():
    acc = torch.tensor([5, 6, 7, -5, -6, -7, 1000, -1000], dtype=torch.int64)
    # M = 1/4 exactly: m = 2^30, s = 32
    m, s = quantize_multiplier(0.25)
    out = requantize(acc, torch.tensor([m]), torch.tensor([s]), 0, -128, 127)
    # 1.25→1, 1.5→2 (half up), 1.75→2, −1.25→−1, −1.5→−1 (half toward +inf), −1.75→−2, saturation
    assert out.tolist() == [1, 2, 2, -1, -1, -2, 127, -128]
    relu = requantize(acc, torch.tensor([m]), torch.tensor([s]), 3, 3, 255)
    assert relu.tolist() == [4, 5, 5, 3, 3, 3, 253, 3]


def test_requantize_per_channel_and_shift_zero():
    acc = torch.arange(12, dtype=torch.int64).reshape(1, 3, 2, 2) - 6
    m = torch.tensor([1, 2, 3])
    s = torch.tensor([0, 1, 2])
    out = requantize(acc, m, s, 0, -100, 100)
    want = torch.stack([acc[0, 0] * 1, (acc[0, 1] * 2 + 1) >> 1, (acc[0, 2] * 3 + 2) >> 2])
    assert torch.equal(out[0], want)


def test_quantize_input_half_to_even_and_saturation():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0])
    assert quantize_input(x, 1.0, 0, -128, 127).tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert quantize_input(x, 1.0, 10, 0, 255).tolist() == [10, 12, 12, 10, 8, 255, 0]


def test_int_range():
    assert int_range(8, True) == (-128, 127)
    assert int_range(8, False) == (0, 255)
    with pytest.raises(ConfigError):
        int_range(33, True)


def test_int64_conv_path_equals_float64_conv():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-300, 300, (2, 4, 7, 6), generator=gen)
    w = torch.randint(-50, 50, (6, 2, 3, 3), generator=gen)
    attrs = {"stride": [2, 1], "padding": [1, 2], "dilation": [1, 2], "groups": 2}
    want = torch.nn.functional.conv2d(x.double(), w.double(), None, (2, 1), (1, 2), (1, 2), 2).long()
    assert torch.equal(conv2d_int64(x, w, attrs), want)


def test_compute_dtype_thresholds():
    assert compute_dtype(FLOAT32_EXACT - 1) == torch.float32
    assert compute_dtype(FLOAT32_EXACT) == torch.float64
    assert compute_dtype(1 << 53) == torch.int64


# -- graphs: format, validation, engine checks ---------------------------------------------

@pytest.fixture(scope="module")
def lenet_graph_dir(tmp_path_factory):
    """The golden LeNet-5 W8A8 with bias, saved again with a metadata note."""
    g = golden("lenet5_bias_w8a8")
    g.metadata["note"] = "test"
    path = tmp_path_factory.mktemp("graph") / "g"
    g.save(path)
    return path


def copy_graph(src, tmp_path):
    dst = tmp_path / "g"
    shutil.copytree(src, dst)
    return dst


def test_save_load_round_trip(lenet_graph_dir):
    g = load(lenet_graph_dir)
    assert g.metadata["note"] == "test"
    assert [n.op for n in g.nodes][:3] == ["QuantizeInput", "Conv2d", "Requant"]
    x = torch.randn(5, 1, 32, 32)
    codes = engine.run(g, x)
    assert codes.dtype == torch.int64 and codes.shape == (5, 10)
    assert torch.equal(codes, engine.run(load(lenet_graph_dir / "graph.json"), x))
    logits = g.dequantize(codes)
    assert logits.dtype == torch.float32 and logits.shape == (5, 10)
    # Deterministic bit for bit.
    assert torch.equal(codes, engine.run(g, x.clone()))


def edit_json(path, change):
    doc = json.loads((path / "graph.json").read_text())
    change(doc)
    (path / "graph.json").write_text(json.dumps(doc))


def test_load_rejects_newer_version(lenet_graph_dir, tmp_path):
    p = copy_graph(lenet_graph_dir, tmp_path)
    edit_json(p, lambda d: d.update(version=99))
    with pytest.raises(GraphError, match="version 99"):
        load(p)


def test_load_rejects_unknown_op_and_bad_shape(lenet_graph_dir, tmp_path):
    p = copy_graph(lenet_graph_dir, tmp_path)
    edit_json(p, lambda d: d["nodes"][1].update(op="Conv3d"))
    with pytest.raises(GraphError, match="unknown op"):
        load(p)
    p2 = tmp_path / "b"
    shutil.copytree(lenet_graph_dir, p2)
    edit_json(p2, lambda d: d["tensors"][2].update(shape=[6, 27, 28]))
    with pytest.raises(GraphError, match="declared shape"):
        load(p2)


def test_load_rejects_out_of_range_weight_codes(lenet_graph_dir, tmp_path):
    p = copy_graph(lenet_graph_dir, tmp_path)
    params = load_file(p / "tensors.safetensors")
    doc = json.loads((p / "graph.json").read_text())
    conv = next(n for n in doc["nodes"] if n["op"] == "Conv2d")
    conv["attrs"]["weight_bits"] = 4  # the stored int8 codes no longer fit
    (p / "graph.json").write_text(json.dumps(doc))
    with pytest.raises(GraphError, match="weight codes"):
        load(p)
    assert params  # the parameters file itself is intact


def test_load_rejects_missing_parameter_and_float_weights(lenet_graph_dir, tmp_path):
    p = copy_graph(lenet_graph_dir, tmp_path)
    params = load_file(p / "tensors.safetensors")
    key = next(k for k in params if k.endswith(".weight"))
    save_tensors_tied(p, {k: v for k, v in params.items() if k != key})
    with pytest.raises(GraphError, match="missing"):
        load(p)
    params[key] = params[key].float()
    save_tensors_tied(p, params)
    with pytest.raises(GraphError, match="integer type"):
        load(p)


def test_load_rejects_truncated_tensors_and_missing_graph(lenet_graph_dir, tmp_path):
    p = copy_graph(lenet_graph_dir, tmp_path)
    data = (p / "tensors.safetensors").read_bytes()
    (p / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphError, match="truncated"):
        load(p)
    with pytest.raises(GraphError, match="not an integer graph"):
        load(tmp_path / "nowhere")


def test_run_rejects_bad_input(lenet_graph_dir):
    g = load(lenet_graph_dir)
    with pytest.raises(GraphError, match="does not fit"):
        engine.run(g, torch.randn(2, 1, 28, 28))
    with pytest.raises(GraphError, match="NaN"):
        engine.run(g, torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(GraphError, match="float"):
        engine.run(g, torch.zeros((1, 1, 32, 32), dtype=torch.int64))


def test_accumulator_overflow_is_detected_and_names_the_layer(lenet_graph_dir, tmp_path):
    p = copy_graph(lenet_graph_dir, tmp_path)
    # Declare conv3's accumulator (400 terms of int8 × uint8) as 16 bits: real data overflows it.
    edit_json(p, lambda d: [t.update(bits=16) for t in d["tensors"] if t["name"].startswith("q_conv3") and t["name"].endswith("_acc")])
    doc = json.loads((p / "graph.json").read_text())
    params = load_file(p / "tensors.safetensors")
    # Keep the stored bias inside the narrower width so that loading succeeds.
    bias_key = next(n["params"]["bias"] for n in doc["nodes"] if n["name"].startswith("q_conv3"))
    params[bias_key] = params[bias_key].clamp(-1000, 1000)
    save_tensors_tied(p, params)
    g = load(p)
    with pytest.raises(AccumulatorOverflowError, match="q_conv3"):
        engine.run(g, torch.randn(16, 1, 32, 32) * 3)
    engine.run(g, torch.randn(2, 1, 32, 32), check_overflow=False)  # the check can be switched off


def test_codebook_graph_saves_loads_and_validates(tmp_path):
    g = golden("lenet5_clipq_3bit")   # 2- and 3-bit codebook layers, a dense fc2
    shape = g.input_spec.shape
    g.save(tmp_path / "g")
    g2 = load(tmp_path / "g")
    x = torch.randn(4, *shape)
    assert torch.equal(engine.run(g2, x), engine.run(g, x))
    node = next(n for n in g2.nodes if n.attrs.get("weight_format") == "codebook")
    g2.params[node.params["weight_index"]][0] = 4  # beyond a 4-entry codebook
    with pytest.raises(GraphError, match="weight_index"):
        g2.validate()
    g2.params[node.params["weight_index"]][0] = 0
    g2.params[node.params["codebook"]][0] = 300  # beyond 8-bit weights
    with pytest.raises(GraphError, match="codebook values"):
        g2.validate()
