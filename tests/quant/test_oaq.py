"""Outlier-aware quantization (OAQ): the outlier share is the one asked for, normal codes lie on the
coarse grid (multiples of 2^k), nothing is clipped, the codes split into dense low-bit codes and
sparse outliers and back, and the fake-quant model in exact mode equals the integer engine."""

import math

import numpy as np
import pytest
import torch

from bitsmith.data import load_dataset
from bitsmith.errors import ConfigError, DataError
from bitsmith.integer.outliers import OutlierSplit, outlier_merge, outlier_split, outlier_storage_bits
from bitsmith.quant import lower
from bitsmith.integer.sparsity import graph_sparsity
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.qat import QATSpec, QATTrainConfig, qat_prepare, qat_train
from bitsmith.quant.qat.oaq import OutlierAwareWeight
from tests.quantized import exact_lowering_logits, synthetic_images


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one thread."""


def _trained(model, **spec_kw):
    torch.manual_seed(0)
    spec = QATSpec("oaq", **{"wbits": 4, "abits": 4, "outlier_fraction": 0.02, **spec_kw})
    qmodel = qat_prepare(model, [synthetic_images(64)], spec)
    qat_train(qmodel, model, load_dataset("synthetic", "train", limit=128),
              QATTrainConfig(epochs=1, batch_size=32, lr=0.01))
    return qmodel


def _layers(qmodel):
    return [m for m in qmodel.modules() if isinstance(m, QuantLayer)]


@pytest.fixture(scope="module")
def trained(fp_model):
    return _trained(fp_model)


# -- lowering: fake-quant (exact mode) == integer engine, element by element -------------------


@pytest.mark.parametrize("outlier_bits", [8, 16])
def test_oaq_lowers_exactly(fp_model, trained, outlier_bits):
    qmodel = trained if outlier_bits == 8 else _trained(fp_model, wbits=3, outlier_bits=16)
    graph = lower(qmodel)
    x = torch.cat([synthetic_images(64), torch.randn(8, *qmodel.input_shape) * 2])
    float_logits, int_logits = exact_lowering_logits(qmodel, graph, x)
    torch.testing.assert_close(float_logits, int_logits, rtol=1e-3, atol=1e-3)
    weighted = [n for n in graph.nodes if n.op in ("Conv2d", "Linear")]
    assert [n.attrs["weight_bits"] for n in weighted] == [outlier_bits] * len(weighted)
    stored = {graph.params[n.params["weight"]].dtype for n in weighted}
    assert stored == {torch.int8 if outlier_bits == 8 else torch.int16}


# -- the grid: outlier share, multiples of 2^k, nothing clipped, k maximal ---------------------


def test_outlier_share_is_the_requested_fraction(trained):
    for layer in _layers(trained):
        q = layer.weight_quantizer
        w = layer.weight.detach()
        mask, _, _ = q.grid(w)
        want = round(0.02 * w.numel())
        threshold = w.abs().reshape(-1).sort().values[w.numel() - want - 1]
        ties = int((w.abs() == threshold).sum()) - 1  # weights equal to the largest normal stay normal
        assert want - ties <= int(mask.sum()) <= want, layer.float_name
        assert bool((w.abs()[mask] > w.abs()[~mask].max()).all())  # the outliers are the largest |w|


def test_normal_codes_are_multiples_of_two_to_the_k_and_nothing_clips(trained):
    for layer in _layers(trained):
        q = layer.weight_quantizer
        w = layer.weight.detach()
        codes, scale = layer.quantize_weight()
        mask, s_n, k = q.grid(w)
        assert q.split_parameters(w)["shift"] == k and float(scale) == math.ldexp(s_n, -k)
        normal = codes[~mask]
        assert bool((normal % (1 << k) == 0).all()) and int(normal.abs().max()) <= q.levels << k
        assert int(codes.abs().max()) <= q.outlier_levels
        # Every weight within half a step of its own grid: the normal one (s_n) or the fine one (s_o).
        error = (w - codes.to(torch.float32) * scale).abs()
        assert float(error[~mask].max()) <= s_n / 2 * (1 + 1e-5)
        assert float(error[mask].amax()) <= float(scale) / 2 * (1 + 1e-5)
        # k is the largest shift that still holds the outliers and the normal codes in outlier_bits.
        amax = float(w.abs().max())
        assert amax * 2.0 ** (k + 1) > q.outlier_levels * s_n or q.levels << (k + 1) > q.outlier_levels
        assert k > 0  # at 4 bits with 8-bit outliers the fine grid is finer (else the test proves little)


def test_forward_value_is_codes_times_scale_and_gradient_straight_through():
    torch.manual_seed(3)
    w = (torch.randn(8, 4, 3, 3) * 0.1).requires_grad_()
    w.data[0, 0, 0, 0] = 2.0  # a clear outlier
    q = OutlierAwareWeight(4, 0.05, 8)
    value = q(w)
    codes, scale = q.integer_weights(w)
    assert torch.equal(value.detach(), codes.to(torch.float32) * scale)
    g = torch.randn_like(w)
    (value * g).sum().backward()
    assert torch.equal(w.grad, g)
    assert int(codes[0, 0, 0, 0]) == round(2.0 / float(scale))  # the outlier is kept, not clipped


# -- the split: the node's "outlier" attr, round trip, storage ------------------------------------


def test_graph_records_the_split_and_it_round_trips(trained):
    graph = lower(trained)
    weighted = [n for n in graph.nodes if n.op in ("Conv2d", "Linear")]
    storage = {row["name"]: row for row in graph_sparsity(graph)["layers"]}
    for node, layer in zip(weighted, _layers(trained)):
        entry = node.attrs["outlier"]
        assert entry["low_bits"] == 4 and entry["outlier_bits"] == node.attrs["weight_bits"] == 8
        codes = graph.weight_codes(node).numpy()
        split = outlier_split(codes, entry["low_bits"], entry["shift"])
        assert np.array_equal(outlier_merge(split), codes)
        assert int(np.abs(split.dense).max()) <= 7
        # The stored outliers are the selected ones, less those whose code happens to lie on the coarse
        # grid (just above the largest normal weight, they round to its code).
        mask = layer.weight_quantizer.grid(layer.weight)[0].numpy().reshape(-1)
        assert 0 < split.outliers and set(split.index.tolist()) <= set(np.flatnonzero(mask).tolist())
        flat = codes.reshape(-1).astype(np.int64)
        on_grid = (flat % (1 << entry["shift"]) == 0) & (np.abs(flat >> entry["shift"]) <= 7)
        assert split.outliers == int(mask.sum()) - int((on_grid & mask).sum())
        # bitsmith sparsity counts the layer as 4-bit codes plus sparse 8-bit outliers: below 8-bit dense
        row = storage[node.output]
        assert row["outlier"]["outliers"]["nnz"] == split.outliers
        assert row["stored_bits"] <= row["formats"]["outlier"] < row["formats"]["dense"]


def test_split_by_hand():
    codes = np.array([[0, 4, -8, 5], [28, -28, 32, -3]], dtype=np.int8)
    split = outlier_split(codes, low_bits=4, shift=2)  # normal: multiples of 4 within ±7·4 = ±28
    assert split.dense.tolist() == [[0, 1, -2, 0], [7, -7, 0, 0]]
    assert split.index.tolist() == [3, 6, 7] and split.values.tolist() == [5, 32, -3]
    assert np.array_equal(outlier_merge(split), codes)
    # 8 codes at 4 bits + 3 outliers · (3 index bits + 8 code bits)
    assert outlier_storage_bits(split, 4, 8) == 8 * 4 + 3 * (3 + 8)


@pytest.mark.parametrize("low_bits, shift, width", [(2, 0, 8), (3, 4, 8), (4, 3, 16), (8, 8, 16), (2, 15, 16)])
def test_split_round_trips_random_codes(low_bits, shift, width):
    gen = np.random.default_rng(low_bits * 100 + shift)
    hi = (1 << (width - 1)) - 1
    for size in (0, 1, 17, 1000):
        coarse = gen.integers(-((1 << (low_bits - 1)) - 1), 1 << (low_bits - 1), size) * (1 << shift)
        coarse = np.clip(coarse, -hi, hi)
        anything = gen.integers(-hi, hi + 1, size)
        codes = np.where(gen.random(size) < 0.1, anything, coarse)
        split = outlier_split(codes, low_bits, shift)
        assert np.array_equal(outlier_merge(split), codes)
        assert np.all(np.abs(split.dense) <= (1 << (low_bits - 1)) - 1)


def test_bad_split_input_is_refused():
    with pytest.raises(DataError, match="integer codes"):
        outlier_split(np.array([0.5, 1.0]), 4, 1)
    with pytest.raises(ConfigError, match="low_bits"):
        outlier_split(np.array([1]), 1, 0)
    with pytest.raises(ConfigError, match="shift"):
        outlier_split(np.array([1]), 4, 16)
    split = outlier_split(np.array([1, 99, 2]), 4, 0)
    with pytest.raises(DataError, match="ascending and within"):
        outlier_merge(OutlierSplit(split.dense, np.array([5]), split.values, 0))
    with pytest.raises(DataError, match="1 outlier positions but 2"):
        outlier_merge(OutlierSplit(split.dense, split.index, np.array([99, 3]), 0))


@pytest.mark.parametrize("kwargs, needle", [
    ({"outlier_fraction": 1.0}, r"outlier_fraction=1.0; allowed: a fraction in \[0, 1\)"),
    ({"outlier_fraction": -0.1}, "outlier_fraction"),
    ({"outlier_bits": 12}, "outlier_bits=12; allowed: 8, 16"),
])
def test_bad_oaq_settings_are_refused(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        QATSpec("oaq", **kwargs)
