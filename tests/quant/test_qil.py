"""QIL (learned intervals, γ = 1): weights below the interval are pruned to code 0 and above it
clipped, activations likewise (their offset folded into the producing layer's bias), the centres
and distances learn, and the fake-quant model in exact mode equals the integer engine."""

import pytest
import torch

from bitsmith.data import iterate_batches, load_dataset
from bitsmith.errors import ConfigError
from bitsmith.integer import engine
from bitsmith.models import build_model
from bitsmith.quant import lower
from bitsmith.quant.fake_quant import FakeQuantize
from bitsmith.quant.modules import QuantLayer
from bitsmith.quant.qat import QATSpec, QATTrainConfig, qat_prepare, qat_train, sync_input_scales
from bitsmith.quant.qat.qil import QILQuantize, QILWeight, interval
from bitsmith.quant.requant import activation_offset, layer_bias_codes
from tests.quantized import exact_lowering_logits, randomised, synthetic_images


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one thread."""


def _layers(qmodel):
    return [m for m in qmodel.modules() if isinstance(m, QuantLayer)]


@pytest.fixture(scope="module")
def trained(fp_model):
    """QIL W4A4 after a few training steps, then every interval pushed off zero (p > 0), so the
    pruning edges — and the activation offsets folded into the biases — are certainly exercised."""
    torch.manual_seed(0)
    qmodel = qat_prepare(fp_model, [synthetic_images(64)], QATSpec("qil", wbits=4, abits=4))
    qat_train(qmodel, fp_model, load_dataset("synthetic", "train", limit=128),
              QATTrainConfig(epochs=1, batch_size=32, lr=0.01))
    with torch.no_grad():
        for m in qmodel.modules():
            if isinstance(m, (QILWeight, QILQuantize)):
                m.centre.copy_(m.distance.abs() * 1.1)  # p = c − |d| = 0.1·|d| > 0 (training kept p = 0)
    sync_input_scales(qmodel)  # the next layers read the (changed) activation grids
    return qmodel


# -- lowering: fake-quant (exact mode) == integer engine ----------------------------------------


def test_qil_lowers_exactly(trained):
    graph = lower(trained)
    x = torch.cat([synthetic_images(64), torch.randn(8, *trained.input_shape) * 2])
    float_logits, int_logits = exact_lowering_logits(trained, graph, x)
    # The float path subtracts the same snapped offsets: equal but for rare rounding-boundary cases.
    assert float((float_logits.argmax(1) == int_logits.argmax(1)).float().mean()) >= 0.95
    offsets = [activation_offset(m.act_quant) for m in _layers(trained) if m.act_quant is not None]
    assert len(offsets) == 4 and all(p > 0 for p in offsets)


def test_every_activation_after_a_relu_is_qil(trained):
    acts = [m.act_quant for m in _layers(trained) if m.act_quant is not None]
    assert all(isinstance(a, QILQuantize) for a in acts)
    assert all(isinstance(m.weight_quantizer, QILWeight) for m in _layers(trained))


# -- weights: pruned below p, clipped above u, linear between ------------------------------------


def test_qil_weights_prune_clip_and_quantize_between(trained):
    """Checked on the codes the graph holds."""
    graph = lower(trained)
    pruned_total = 0
    for layer, node in zip(_layers(trained), [n for n in graph.nodes if n.op in ("Conv2d", "Linear")]):
        q = layer.weight_quantizer
        w = layer.weight.detach()
        codes = graph.weight_codes(node).to(torch.int64)
        scale = layer.quantize_weight()[1]
        p, s = (t.reshape(-1, *([1] * (w.dim() - 1))) for t in q.edges())
        u = p + s * q.levels
        assert torch.equal(scale, q.edges()[1])
        below, above = w.abs() < p, w.abs() > u
        assert bool((codes[below] == 0).all())
        pruned_total += int(below.sum())
        assert bool((codes[above].abs() == q.levels).all()) and bool((codes[above].sign() == w[above].sign()).all())
        between = ~below & ~above
        want = torch.sign(w) * torch.round((w.abs() - p) / s)
        assert torch.equal(codes[between].to(torch.float32), want[between])
        assert int(codes.abs().max()) <= q.levels
    assert pruned_total > 0


def test_qil_weight_gradients():
    """w gets 1 inside (p, u) and 0 outside; c and d get the gradient of codes·s."""
    torch.manual_seed(0)
    q = QILWeight(3, torch.tensor([0.1, 0.1]), per_channel=True)  # L = 3, clip 0.3, c = d = 0.15
    with torch.no_grad():
        q.centre.copy_(torch.tensor([0.2, 0.18]))  # p = 0.05 / 0.03, u = 0.35 / 0.33
    w = (torch.randn(2, 50) * 0.2).requires_grad_()
    g = torch.randn(2, 50)
    (q(w) * g).sum().backward()
    p, s = interval(q.centre.detach(), q.distance.detach(), 3)
    inside = (w.detach().abs() > p[:, None]) & (w.detach().abs() < (p + 3 * s)[:, None])
    torch.testing.assert_close(w.grad, g * inside)
    assert bool((q.centre.grad != 0).all()) and bool((q.distance.grad != 0).all())


# -- activations: pruned below p, clipped above u -------------------------------------------------


def test_qil_activations_prune_below_and_clip_above(trained):
    graph = lower(trained)
    x = synthetic_images(32)
    got = engine.run(graph, x, return_all=True)
    for layer, node in zip(_layers(trained), [n for n in graph.nodes if n.op in ("Conv2d", "Linear")]):
        fq = layer.act_quant
        if fq is None:
            continue
        acc_scale = torch.tensor(graph.tensors[node.output].scale, dtype=torch.float64).reshape(-1)
        offset_codes = torch.round(activation_offset(fq) / acc_scale)  # P, per channel
        acc = got[node.output].to(torch.float64)  # conv + bias − P
        view = (1, -1) + (1,) * (acc.dim() - 2)
        raw = acc + offset_codes.reshape(view)  # conv + bias: the pre-activation on the accumulator grid
        requant = next(n for n in graph.nodes if n.inputs == [node.output])
        codes = got[requant.output]
        pruned = raw <= offset_codes.reshape(view)  # y ≤ p (snapped): below the interval
        assert bool(pruned.any()) and bool((codes[pruned] == 0).all())
        clip = float(fq.offset) + float(fq.scale) * (fq.qmax + 0.5)  # beyond u by half a step
        clipped = raw * acc_scale.reshape(view) > clip * (1 + 1e-6)
        assert bool((codes[clipped] == fq.qmax).all())
        assert int(codes.max()) > 0


def test_offset_is_folded_into_the_bias_on_the_accumulator_grid():
    # bias codes round(0.1/0.1) = 1, round(−0.2/0.2) = −1; offset codes round(0.33/0.1) = 3, round(0.33/0.2) = 2
    got = layer_bias_codes(torch.tensor([0.1, -0.2]), 0.33, [0.1, 0.2], 2)
    assert got.tolist() == [-2.0, -3.0]
    assert layer_bias_codes(None, 0.33, [0.1], 3).tolist() == [-3.0, -3.0, -3.0]  # per-tensor scale, no bias
    assert layer_bias_codes(None, 0.0, [0.1], 3) is None


def test_per_tensor_qil_lowers_exactly(fp_model):
    torch.manual_seed(0)
    qmodel = qat_prepare(fp_model, [synthetic_images(64)], QATSpec("qil", wbits=3, abits=3, per_channel=False))
    with torch.no_grad():
        for m in qmodel.modules():
            if isinstance(m, (QILWeight, QILQuantize)):
                assert m.centre.dim() == 0
                m.centre.copy_(m.distance.abs() * 1.05)
    sync_input_scales(qmodel)
    graph = lower(qmodel)
    x = synthetic_images(64)
    with torch.no_grad():
        assert torch.equal(qmodel.eval()(x), engine.predict(graph, x))


def test_qil_activation_parameters_get_gradients(fp_model):
    torch.manual_seed(0)
    qmodel = qat_prepare(fp_model, [synthetic_images(64)], QATSpec("qil", wbits=4, abits=4))
    x, y = next(iterate_batches(load_dataset("synthetic", "train", limit=64), 64, (1, 32, 32)))
    qmodel.train()
    torch.nn.functional.cross_entropy(qmodel(x), y).backward()
    quantizers = [m for m in qmodel.modules() if isinstance(m, (QILWeight, QILQuantize))]
    assert len(quantizers) == 9  # 5 weight, 4 activation quantizers
    for m in quantizers:
        assert m.centre.grad is not None and bool((m.centre.grad != 0).any()), m
        assert m.distance.grad is not None and bool((m.distance.grad != 0).any()), m
    qat_train(qmodel, fp_model, load_dataset("synthetic", "train", limit=128),
              QATTrainConfig(epochs=1, batch_size=32, lr=0.01))
    moved = [m for m in quantizers if not torch.equal(m.centre.detach(), m.distance.detach())]
    assert len(moved) == len(quantizers)  # every interval left its PTQ start (c = d)


# -- where QIL cannot go: LSQ there; an offset where the graph cannot take it is refused --------


def test_qil_on_other_architectures_lowers_exactly():
    """BN folding, concat, reorg (UltraNet-Bypass): QIL where a ReLU output feeds the next layer."""
    torch.manual_seed(0)
    model = randomised(build_model("ultranet_bypass", input_shape=(3, 16, 16), classify=True))
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, *model.input_shape, generator=gen) for _ in range(2)]
    qmodel = qat_prepare(model, calib, QATSpec("qil", wbits=3, abits=4))
    with torch.no_grad():
        for m in qmodel.modules():
            if isinstance(m, QILQuantize):
                m.centre.mul_(1.2)
    sync_input_scales(qmodel)
    kinds = {type(m.act_quant).__name__ for m in _layers(qmodel) if m.act_quant is not None}
    assert "QILQuantize" in kinds
    graph = lower(qmodel)
    x = torch.randn(8, *model.input_shape)
    with torch.no_grad():
        assert torch.equal(qmodel.eval()(x), engine.predict(graph, x))


def test_a_signed_point_gets_no_qil():
    with pytest.raises(ConfigError, match="unsigned points"):
        QILQuantize(FakeQuantize(4), 4)  # signed until calibrated otherwise


def test_an_offset_outside_a_layer_is_refused(trained, monkeypatch):
    monkeypatch.setattr(type(trained.input_quant), "offset", 0.25, raising=False)
    with pytest.raises(ConfigError, match="subtracts an offset"):
        lower(trained)
