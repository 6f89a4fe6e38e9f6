"""CLIP-Q: the vectorised quantizer against the per-bin loop, codes, the codebook IR, hex images."""

import json

import numpy as np
import pytest
import torch

from bitsmith.targets.clipq_hex import pack_w2, read_clipq_hex, unpack_w2, write_clipq_hex
from bitsmith.errors import ConfigError, DataError, GraphError
from bitsmith.integer import load
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


def test_codebook_graph_saves_loads_and_validates(tmp_path):
    _, g, shape = _clipq_lenet()
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


@pytest.mark.parametrize("qdq", [False, True])
def test_onnx_export_expands_the_codebook(tmp_path, qdq):
    pytest.importorskip("onnxruntime")
    from bitsmith.onnx.export import export_onnx, run_onnx

    _, g, shape = _clipq_lenet()
    x = torch.randn(16, *shape)
    path = export_onnx(g, tmp_path / "m.onnx", qdq=qdq)
    out = np.asarray(run_onnx(path, x))
    if qdq:  # float QDQ model: its argmax, not its bits
        assert np.array_equal(out.argmax(1), engine.predict(g, x).argmax(1).numpy())
    else:
        np.testing.assert_array_equal(out.astype(np.int64), engine.run(g, x).numpy())


def test_w2_packing_layout():
    index = np.full((5, 6, 1, 2), 2, dtype=np.uint32)
    index[0, 0, 0, 0] = 0b01  # output 0, input 0, first kernel position: lowest bits of line 0
    index[1, 3, 0, 1] = 0b11  # output 1, input 3: bits [15:14] of line 1 (second kernel position)
    index[4, 5, 0, 0] = 0b00  # output 4, input 5: output group 1, input group 1, slot (0, 1)
    words = pack_w2(index)
    assert len(words) == 2 * 2 * 2  # 2 output groups × 2 input groups × 2 kernel positions
    assert words[0] & 0b11 == 0b01 and (words[0] >> 2) & 0b11 == 0b10
    assert (words[1] >> 14) & 0b11 == 0b11
    assert (words[6] >> 2) & 0b11 == 0b00  # og 1, ig 1, position 0; slot i=0, j=1
    assert (words[6] >> 4) & 0b11 == 0b10  # padding input channel 6 → zero code
    assert words[7] == 0xAAAAAAAA  # og 1, ig 1, position 1: every code 10 (real or padding)
    assert np.array_equal(unpack_w2(words, index.shape), index)


def test_hex_round_trip(tmp_path):
    _, g, _ = _clipq_lenet()
    manifest = write_clipq_hex(g, tmp_path / "hex")
    names = [entry["name"] for entry in manifest["layers"]]
    assert names == ["q_conv1_acc", "q_conv2_acc", "q_fc1_acc"]  # the 2-bit layers only
    back = read_clipq_hex(tmp_path / "hex")
    for node in g.nodes:
        if node.name in back:
            assert torch.equal(back[node.name]["weight_index"], g.params[node.params["weight_index"]])
            assert torch.equal(back[node.name]["codebook"], g.params[node.params["codebook"]])
    folder = tmp_path / "hex" / manifest["layers"][0]["folder"]
    lines = (folder / "W2.hex").read_text().split()
    assert len(lines) == 2 * 1 * 25 and all(len(s) == 8 for s in lines)  # 6 out → 2 groups, 1 in → 1 group
    w8 = int((folder / "W8.hex").read_text().strip(), 16)
    cb = g.params["q_conv1_acc.codebook"].tolist()
    assert [((w8 >> (8 * c)) & 0xFF) for c in range(4)] == [v & 0xFF for v in cb]
    (folder / "W2.hex").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="lines"):
        read_clipq_hex(tmp_path / "hex")
    json.loads((tmp_path / "hex" / "manifest.json").read_text())


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
