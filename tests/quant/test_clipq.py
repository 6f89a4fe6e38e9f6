"""CLIP-Q: the vectorised quantizer against the per-bin loop, codes, lowering to codebook layers, the
budget search. (The codebook graph format: tests/integer/test_integer.py; its ONNX export:
tests/onnx/test_onnx.py; hex images: tests/targets/test_clipq_hex.py.)"""

import numpy as np
import pytest
import torch

from bitsmith.errors import ConfigError
from bitsmith.quant import lower
from bitsmith.models import build_model
from bitsmith.quant import QuantConfig, quantize
from bitsmith.quant.clipq import (ClipQWeightQuantizer, apply_clipq, clipq_codebook, clipq_codebook_loop,
                                  clipq_size_bits, search_clipq)
from bitsmith.integer import engine
from tests.oracle import reference_run


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("p", [0.0, 0.4, 0.75])
def test_vectorised_equals_per_bin_loop(p, bits):
    gen = torch.Generator().manual_seed(bits * 10 + int(p * 100))
    w = torch.randn(3000, generator=gen) * 0.1
    w[:50] = 0.0  # exact zeros go to the zero code
    idx, cb = clipq_codebook(w, p, bits)
    idx_loop, cb_loop = clipq_codebook_loop(w, p, bits)
    assert torch.equal(idx, idx_loop)
    torch.testing.assert_close(cb, cb_loop, rtol=1e-12, atol=0)
    zero = 1 << (bits - 1)
    # exactly ⌊p·n⌋ of each sign is clipped (continuous weights: no ties), and zeros stay zero
    for sign in (w > 0, w < 0):
        assert int((sign & (idx == zero)).sum()) == int(p * int(sign.sum()))
    assert bool((idx[:50] == zero).all())
    assert cb[zero] == 0.0 and bool((cb[1:] >= cb[:-1]).all())
    # each kept weight's level is the mean of its bin
    for code in range(1 << bits):
        members = w[idx == code]
        if code != zero and members.numel():
            assert abs(float(members.double().mean()) - float(cb[code])) < 1e-12
    assert bool((w[idx < zero] < 0).all()) and bool((w[idx > zero] > 0).all())


def test_codes_for_two_bits_follow_the_source():
    w = torch.tensor([-1.0, -0.9, -0.2, -0.05, -0.01, 0.01, 0.02, 0.5, 0.6, 0.0])
    idx, cb = clipq_codebook(w, 0.4, 2)
    # negatives: 5, clip ⌊2⌋ nearest 0 (-0.01, -0.05); remaining [-1, -0.2] in 2 bins split at -0.6
    # positives: 4, clip 1 (0.01); remaining one bin
    assert idx.tolist() == [0b00, 0b00, 0b01, 0b10, 0b10, 0b10, 0b11, 0b11, 0b11, 0b10]
    torch.testing.assert_close(cb.float(), torch.tensor([-0.95, -0.2, 0.0, (0.02 + 0.5 + 0.6) / 3]))


def test_empty_bins_take_their_centre():
    # negatives only at the two ends of their range: the middle bins of b=3 (4 negative bins) are empty
    w = torch.tensor([-1.0, -1.0, -0.2, -0.2, 0.3, 0.9])
    idx, cb = clipq_codebook(w, 0.0, 3)
    idx_loop, cb_loop = clipq_codebook_loop(w, 0.0, 3)
    assert torch.equal(idx, idx_loop) and torch.allclose(cb, cb_loop)
    assert idx.tolist() == [0, 0, 3, 3, 5, 7]
    torch.testing.assert_close(cb.float(), torch.tensor([-1.0, -0.7, -0.5, -0.2, 0.0, 0.3, 0.6, 0.9]))
    # no positive weight at all: its level sits at the threshold (just above 0)
    idx, cb = clipq_codebook(torch.tensor([-0.5, -0.25, -0.1]), 0.0, 2)
    assert 0.0 <= float(cb[3]) < 1e-30 and idx.tolist() == [0, 1, 1]


@pytest.mark.parametrize("q35", [False, True])
def test_quantizer_integers_equal_fake_quant(q35):
    w = (torch.randn(16, 6, 5, 5) * 0.3).requires_grad_()
    q = ClipQWeightQuantizer(0.4, 2, q35=q35)
    index, codebook, scale = q.codebook_weights(w)
    assert index.dtype == torch.uint8 and index.shape == w.shape and codebook.shape == (4,)
    wq = q(w)
    assert torch.equal(wq.detach(), codebook.float()[index.long()] * scale)
    assert int(codebook[2]) == 0 and codebook.min() >= -128 and codebook.max() <= 127
    if q35:
        assert float(scale) == 2 ** -5
    else:
        assert int(codebook.abs().max()) == 127
    codes, s2 = q.integer_weights(w)
    assert torch.equal(codes, codebook.long()[index.long()]) and torch.equal(s2, scale)
    wq.sum().backward()  # straight through to the shadow weights
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize("p, bits", [(1.0, 2), (-0.1, 2), (0.4, 1), (0.4, 9), (0.4, 2.0), ("0.4", 2)])
def test_bad_p_or_bits(p, bits):
    with pytest.raises(ConfigError, match="allowed"):
        ClipQWeightQuantizer(p, bits)


def _clipq_lenet(q35=False, bias=False):
    torch.manual_seed(0)
    model = build_model("lenet5", bias=bias).eval()
    calib = [torch.randn(8, *model.input_shape) for _ in range(2)]
    qmodel = quantize(model, calib, QuantConfig())
    apply_clipq(qmodel, 0.4, 2, q35=q35, layers={"conv3": (0.2, 3)}, skip=["fc2"])
    return qmodel, lower(qmodel), model.input_shape


@pytest.mark.parametrize("q35, bias", [(False, False), (True, True)])
def test_engine_equals_reference_and_fake_quant(q35, bias):
    qmodel, g, shape = _clipq_lenet(q35, bias)
    formats = {n.name: (n.attrs.get("weight_format"), n.attrs.get("index_bits")) for n in g.nodes if n.op in ("Conv2d", "Linear")}
    assert formats == {"q_conv1_acc": ("codebook", 2), "q_conv2_acc": ("codebook", 2),
                       "q_conv3_acc": ("codebook", 3), "q_fc1_acc": ("codebook", 2), "q_fc2": (None, None)}
    x = torch.randn(64, *shape) * 1.3
    got, want = engine.run(g, x, return_all=True), reference_run(g, x)
    for name, value in want.items():
        if g.tensors[name].dtype == "int":
            np.testing.assert_array_equal(got[name].numpy(), value, err_msg=name)
    assert torch.equal(engine.run(g, x), got[g.outputs[0]])  # fast path too
    with torch.no_grad():
        fq = qmodel(x)
    assert torch.equal(engine.predict(g, x).argmax(1), fq.argmax(1))
    assert len(np.unique(want[g.outputs[0]])) > 1


def test_search_respects_the_budget():
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(2000, generator=gen), "b": torch.randn(500, generator=gen) * 0.1}
    roomy = search_clipq(weights, budget_bits=10 ** 9)
    assert roomy == {"a": (0.0, 8), "b": (0.0, 8)}  # no pressure: the least error
    budget = 2500 * 3
    choice = search_clipq(weights, budget_bits=budget)
    assert sum(clipq_size_bits(weights[n].numel(), *c) for n, c in choice.items()) <= budget
    with pytest.raises(ConfigError, match="budget"):
        search_clipq(weights, budget_bits=100)
