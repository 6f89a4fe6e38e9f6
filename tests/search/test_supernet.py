"""The mixed-precision supernet: one candidate is plain quantization bit for bit, the fused mixture
matches its unfused definition (value and gradients), α and W get gradients, argmax reads α,
fixed layers have no α, the float model is left alone, and bad layers or widths are refused."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.data import iterate_batches, load_dataset
from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.quant.fake_quant import fake_quantize
from bitsmith.quant.qat.activations import HWGQ_STEP, fake_quant_act
from bitsmith.quant.qat.weights import GAUSS_STEP, GaussianWeight
from bitsmith.search.supernet import (
    MixedLayer,
    activation_step,
    alpha_parameters,
    argmax_bits,
    build_supernet,
    mixed_layers,
    mixed_quantize,
    probabilities,
    supernet_alphas,
    weight_parameters,
    weight_step,
)

LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]
SEARCHED = list(range(2, 9))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small tensors: one thread (tests/conftest.py)."""


def _lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet5", bias=True).eval()


def _calib(n: int = 64) -> list[torch.Tensor]:
    ds = load_dataset("synthetic", "train", limit=n)
    return [x for x, _ in iterate_batches(ds, 32, (1, 32, 32))]


def _first_last_fixed(searched=SEARCHED) -> list[list[int]]:
    return [[8]] + [list(searched)] * 3 + [[8]]


def _naive(x: torch.Tensor, p: torch.Tensor, steps, lo, hi) -> torch.Tensor:
    """Σ_k p_k · Q_k(x) with autograd's own ops: clipped straight-through rounding (torch.clamp's
    gradient: 1 on the grid's ends too, like bitsmith's fused fake-quant)."""
    out = 0
    for k in range(len(p)):
        xs = x / steps[k]
        clipped = torch.clamp(xs, float(lo[k]), float(hi[k]))
        q = clipped + (torch.round(clipped) - clipped).detach()
        out = out + p[k] * (q * steps[k])
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_one_candidate_is_plain_quantization_at_that_width(bits):
    model = _lenet()
    calib = _calib()
    net = build_supernet(model, LAYERS, [[bits]] * 5, [[bits]] * 5, calib)
    x = calib[0]
    # Weights: GaussianWeight's value, bit for bit.
    for name, layer in mixed_layers(net):
        assert torch.equal(layer.mixed_weight(), GaussianWeight(bits)(layer.weight))
    # conv2's input (after ReLU and max-pool): HWGQ's unsigned grid h[b]·σ, as HWGQQuantize computes it.
    layer = net.conv2
    h = model.pool1(model.conv1_relu(model.conv1(x)))
    assert not layer.signed
    scale = torch.tensor(HWGQ_STEP[bits] * layer.sigma, dtype=torch.float32)
    expected = fake_quant_act(h, None, scale, 0, 0, (1 << bits) - 1)
    assert torch.equal(layer.mixed_input(h), expected)
    out = layer(h)
    assert torch.equal(out, F.conv2d(expected, GaussianWeight(bits)(layer.weight), layer.bias))
    # The normalised image into conv1 is signed: symmetric grid, step g[b]·σ.
    first = net.conv1
    assert first.signed
    qmax = (1 << (bits - 1)) - 1
    scale = torch.tensor(GAUSS_STEP[bits] * first.sigma, dtype=torch.float32)
    assert torch.equal(first.mixed_input(x), fake_quantize(x, scale, 0, -qmax, qmax))


def test_sigma_is_the_pre_activation_rms():
    model = _lenet()
    calib = _calib()
    net = build_supernet(model, LAYERS, _first_last_fixed(), _first_last_fixed(), calib)
    x = torch.cat(calib)
    rms = x.pow(2).mean().sqrt().item()
    assert net.conv1.sigma == pytest.approx(rms, rel=1e-5)  # signed: σ = RMS
    with torch.no_grad():
        h = model.pool1(model.conv1_relu(model.conv1(x)))
    assert net.conv2.sigma == pytest.approx(math.sqrt(2) * h.pow(2).mean().sqrt().item(), rel=1e-5)  # after a ReLU


def test_fused_mixture_matches_its_definition():
    gen = torch.Generator().manual_seed(3)
    bits = [2, 3, 4, 6, 8]
    for signed in (False, True):
        steps = torch.tensor([activation_step(b, signed) * 1.7 for b in bits])
        top = torch.tensor([float((1 << (b - 1)) - 1 if signed else (1 << b) - 1) for b in bits])
        lo = -top if signed else torch.zeros(len(bits))
        x = torch.randn(16, 6, 7, 7, generator=gen) * 2
        if not signed:
            x = x.relu()
        alpha = torch.randn(len(bits), generator=gen)
        x1, a1 = x.clone().requires_grad_(), alpha.clone().requires_grad_()
        x2, a2 = x.clone().requires_grad_(), alpha.clone().requires_grad_()
        out = mixed_quantize(x1, F.softmax(a1, 0), steps, lo, top)
        ref = _naive(x2, F.softmax(a2, 0), steps, lo, top)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        g = torch.randn(x.shape, generator=gen)
        (out * g).sum().backward()
        (ref * g).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-4, atol=1e-5)


def test_probabilities_sum_to_one_and_fixed_sides_are_one():
    net = build_supernet(_lenet(), LAYERS, _first_last_fixed(), [[8], [4], [2, 4, 8], [3, 5], [8]], _calib())
    for (name, layer), (pw, pa) in zip(mixed_layers(net), probabilities(net)):
        assert pw.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert pa.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert len(pw) == len(layer.candidates_w) and len(pa) == len(layer.candidates_a)
    # The initial α are all 0.01: uniform probabilities.
    pw, pa = net.conv3.probabilities()
    torch.testing.assert_close(pw, torch.full((7,), 1 / 7))
    torch.testing.assert_close(pa, torch.full((3,), 1 / 3))
    assert net.conv2.alpha_a is None and net.conv2.probabilities()[1].tolist() == [1.0]


def test_gradients_reach_alpha_and_weights():
    calib = _calib()
    net = build_supernet(_lenet(), LAYERS, _first_last_fixed(), _first_last_fixed(), calib)
    net.train()
    y = torch.arange(len(calib[0])) % 10
    F.cross_entropy(net(calib[0]), y).backward()
    for name, aw, aa in supernet_alphas(net):
        if name in ("conv1", "fc2"):
            assert aw is None and aa is None
            continue
        for a in (aw, aa):
            assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    for name, layer in mixed_layers(net):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


def test_argmax_bits_reads_alpha():
    net = build_supernet(_lenet(), LAYERS, _first_last_fixed(), _first_last_fixed(), _calib())
    assert argmax_bits(net) == ([8, 2, 2, 2, 8], [8, 2, 2, 2, 8])  # all equal: the first candidate
    with torch.no_grad():
        net.conv2.alpha_w[SEARCHED.index(5)] = 1.0
        net.conv2.alpha_a[SEARCHED.index(3)] = 0.5
        net.conv3.alpha_w[SEARCHED.index(8)] = 0.2
        net.fc1.alpha_a.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3, 0.9, 0.4, 0.1]))
    assert argmax_bits(net) == ([8, 5, 8, 2, 8], [8, 3, 2, 6, 8])


def test_fixed_layers_have_no_alpha_in_the_optimiser():
    net = build_supernet(_lenet(), LAYERS, _first_last_fixed(), [[8], [4], [2, 4, 8], [3], [8]], _calib())
    alphas = alpha_parameters(net)
    expected = [net.conv2.alpha_w, net.conv3.alpha_w, net.conv3.alpha_a, net.fc1.alpha_w]
    assert [id(a) for a in alphas] == [id(a) for a in expected]
    for name in ("conv1", "fc2"):
        layer = getattr(net, name)
        assert layer.alpha_w is None and layer.alpha_a is None
        assert not [n for n, _ in layer.named_parameters() if n.startswith("alpha")]
    # Weights and α split every parameter, without overlap.
    weights = weight_parameters(net)
    assert {id(p) for p in weights} | {id(a) for a in alphas} == {id(p) for p in net.parameters()}
    assert not {id(p) for p in weights} & {id(a) for a in alphas}


def test_float_model_untouched():
    model = _lenet()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    net = build_supernet(model, LAYERS, _first_last_fixed(), _first_last_fixed(), _calib())
    assert net.training  # the float model's mode
    y = torch.zeros(32, dtype=torch.long)
    F.cross_entropy(net(_calib()[0]), y).backward()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert model.training and [type(m) for m in model.modules()] == kinds
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(isinstance(m, MixedLayer) for m in model.modules())


class _Nested(nn.Module):
    """Conv–BatchNorm–ReLU inside a Sequential (dotted names), then a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_nested_names_batchnorm_kept_and_wide_candidates():
    torch.manual_seed(0)
    model = _Nested()
    calib = [torch.randn(8, 3, 10, 10)]
    net = build_supernet(model, ["features.0", "features.3", "head"], [[8], [2, 12, 16], [8]],
                         [[10], [4, 16], [8]], calib)
    assert isinstance(net.features[0], MixedLayer) and isinstance(net.features[3], MixedLayer)
    assert isinstance(net.features[1], nn.BatchNorm2d)
    assert net.features[1] is not model.features[1]
    assert net.features[3].groups == 2 and net.features[3].stride == (2, 2)
    net.train()
    out = net(calib[0])
    assert out.shape == (8, 4)
    out.sum().backward()
    assert net.features[1].weight.grad is not None
    assert net.features[3].alpha_w.grad is not None
    # Past 8 bits the step halves per bit: 16-bit weights are all but exact.
    assert weight_step(16) == pytest.approx(GAUSS_STEP[8] / 256)
    layer = MixedLayer(nn.Linear(50, 20), [16], [16], sigma=1.0, signed=True)
    w = layer.weight
    assert (layer.mixed_weight() - w).abs().max() <= weight_step(16) * w.std() / 2 + 1e-9


@pytest.mark.parametrize("layers, error", [
    (["pool1"], "not a Conv2d/Linear"),
    (["conv1_relu"], "not a Conv2d/Linear"),
    (["nope"], "not a module"),
    ([""], "not a module"),
    ([], "non-empty"),
    (["conv1", "conv1"], "twice"),
])
def test_bad_layer_names_are_refused(layers, error):
    n = len(layers)
    with pytest.raises(ConfigError, match=error):
        build_supernet(_lenet(), layers, [[4]] * n, [[4]] * n, _calib(32))


@pytest.mark.parametrize("cands, error", [
    ([1, 2], "not allowed"),
    ([2, 17], "not allowed"),
    ([], "not allowed"),
    ([True, 4], "not allowed"),
    ([4.0], "not allowed"),
    ([4, 4], "repeat"),
    ("48", "not allowed"),
])
def test_bad_widths_are_refused(cands, error):
    with pytest.raises(ConfigError, match=error):
        build_supernet(_lenet(), ["conv2"], [cands], [[4]], _calib(32))
    with pytest.raises(ConfigError, match=error):
        build_supernet(_lenet(), ["conv2"], [[4]], [cands], _calib(32))


def test_mismatched_lists_and_empty_calibration_are_refused():
    with pytest.raises(ConfigError, match="one list of widths per layer"):
        build_supernet(_lenet(), ["conv2", "conv3"], [[4]], [[4], [4]], _calib(32))
    with pytest.raises(ConfigError, match="at least one batch"):
        build_supernet(_lenet(), ["conv2"], [[4]], [[4]], [])
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ConfigError, match="padding_mode"):
        build_supernet(model, ["0"], [[4]], [[4]], [torch.randn(2, 1, 5, 5)])
