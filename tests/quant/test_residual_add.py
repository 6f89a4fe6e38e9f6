"""The residual add through the front end: add_parameters, QuantAdd == the graph's Add + Requant, the
forms of `a + b` fx records, fused clamps after an add, QAT, and what is refused."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.integer import engine
from bitsmith.quant import QuantConfig, lower, quantize
from bitsmith.quant.add import QuantAdd
from bitsmith.quant.lower import add_parameters
from bitsmith.quant.qat import QATSpec, QATTrainConfig, qat_prepare, qat_train
from bitsmith.quant.qat.exact import set_exact_eval
from bitsmith.quant.requant import ADD_MULTIPLIER_LIMIT
from tests.quantized import randomised


class ResidualNet(nn.Module):
    """Two ResNet blocks (identity and projection shortcut) and a MobileNet-style add with ReLU6 after
    a depthwise conv; a global pool of 4 x 4 (a power of two: exact under pot scales) and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(16)
        self.proj = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.proj_bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        x = self.relu(self.stem_bn(self.stem(x)))
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        x = self.relu(out)
        x = self.relu(self.down_bn(self.down(x)) + self.proj_bn(self.proj(x)))
        x = F.relu6(torch.add(self.dw(x), x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _residual_net(seed=0):
    torch.manual_seed(seed)
    return randomised(ResidualNet())


def _batches(shape, n=2, size=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *shape, generator=gen) for _ in range(n)]


# -- add_parameters ------------------------------------------------------------------------------


def test_add_parameters_takes_the_largest_shift_that_fits():
    m_a, m_b, k = add_parameters((0.02, 0.05), (255, 127), 0.04, 32)
    assert max(m_a, m_b) <= ADD_MULTIPLIER_LIMIT
    assert m_a == round(0.02 * 2**k / 0.04) and m_b == round(0.05 * 2**k / 0.04)
    # one more bit of shift would need a multiplier beyond 16 bits
    assert round(0.05 * 2 ** (k + 1) / 0.04) > ADD_MULTIPLIER_LIMIT
    assert abs(m_a / 2**k - 0.5) < 2**-15 and abs(m_b / 2**k - 1.25) < 2**-14


def test_add_parameters_respects_the_accumulator_width():
    # 12-bit accumulator: 255·m_a + 255·m_b ≤ 2047 bounds k before the 16-bit multiplier limit does
    # (12-bit: 255·(4 + 4) = 2040 ≤ 2047 < 255·(8 + 8))
    assert add_parameters((1.0, 1.0), (255, 255), 1.0, 12) == (4, 4, 2)
    assert add_parameters((1.0, 1.0), (255, 255), 1.0, 32) == (1 << 14, 1 << 14, 14)


def test_power_of_two_scales_give_power_of_two_multipliers():
    m_a, m_b, k = add_parameters((2.0**-5, 2.0**-3), (127, 127), 2.0**-4, 32)
    assert (m_a, m_b) == (2 ** (k - 1), 2 ** (k + 1))  # S_a / S_out = 1/2, S_b / S_out = 2, exactly


def test_an_add_whose_output_grid_is_far_finer_than_its_inputs_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"add 'layer1.0.add'.*32767"):
        add_parameters((1.0, 1.0), (127, 127), 1e-5, 32, where="add 'layer1.0.add'")


# -- fake-quant == integer graph ----------------------------------------------------------------


@pytest.mark.parametrize("config", [
    QuantConfig(scale_mode="pot"),
    QuantConfig(scale_mode="pot", per_channel=True),
    QuantConfig(scale_mode="pot", per_channel=True, act_symmetric=False),
    QuantConfig(scale_mode="qformat", weight_qformat="Q2.6", act_qformat="Q4.4"),
    QuantConfig(scale_mode="pot", weight_bits=4, act_bits=4, per_channel=True),
], ids=["pot", "pot-per-channel", "pot-zero-points", "qformat", "pot-w4a4"])
def test_fake_quant_equals_the_engine_on_a_residual_model(config):
    model = _residual_net()
    qmodel = quantize(model, _batches(model.input_shape), config)
    graph = lower(qmodel)
    assert [n.op for n in graph.nodes].count("Add") == 3
    x = torch.cat(_batches(model.input_shape, n=4, seed=7) + [torch.randn(8, 1, 8, 8) * 3])
    with torch.no_grad():
        fake = qmodel(x)
    integer = engine.predict(graph, x)
    assert len(torch.unique(integer.argmax(1))) > 1  # the comparison could fail
    assert torch.equal(fake, integer)  # every logit of every image, bit for bit


@pytest.mark.parametrize("per_channel", [False, True])
def test_every_add_computes_the_graph_s_codes_under_float_scales(per_channel):
    """Float scales: the convs' dyadic requantization may differ from the fake-quant rounding in the last
    code, so compare each add on the graph's own input codes: QuantAdd must give the graph's output codes."""
    model = _residual_net()
    qmodel = quantize(model, _batches(model.input_shape), QuantConfig(per_channel=per_channel))
    graph = lower(qmodel)
    x = torch.randn(32, *model.input_shape) * 2
    codes = engine.run(graph, x, return_all=True)
    adds = [n for n in graph.nodes if n.op == "Add"]
    for add in adds:
        requant = next(n for n in graph.nodes if n.inputs == [add.output])
        module = getattr(qmodel, requant.output)
        assert isinstance(module, QuantAdd)
        inputs = [graph.tensors[name] for name in add.inputs]
        real = [(codes[t.name] - t.zero_point).to(torch.float32) * torch.tensor(t.scale, dtype=torch.float32)
                for t in inputs]
        out = graph.tensors[requant.output]
        with torch.no_grad():
            got = module(*real)
        want = (codes[out.name] - out.zero_point).to(torch.float32) * torch.tensor(out.scale, dtype=torch.float32)
        assert torch.equal(got, want), add.name
        m_a, m_b, k = module.integer_parameters()
        assert graph.params[add.params["multiplier"]].tolist() == [m_a, m_b]
        assert graph.tensors[add.output].scale == math.ldexp(out.scale, -k)
    assert len(adds) == 3


def test_relu_and_relu6_after_an_add_are_its_requant_clamp():
    model = _residual_net()
    qmodel = quantize(model, _batches(model.input_shape), QuantConfig())
    graph = lower(qmodel)
    after = {n.inputs[0]: n for n in graph.nodes if n.op == "Requant"}
    clamps = []  # per add, in graph order: (clamp_min, clamp_max, output spec)
    for add in (n for n in graph.nodes if n.op == "Add"):
        requant = after[add.output]
        clamps.append((requant.attrs["clamp_min"], requant.attrs["clamp_max"], graph.tensors[requant.output]))
    (lo1, hi1, out1), (lo2, hi2, out2), (lo6, hi6, out6) = clamps
    assert (lo1, hi1) == (out1.zero_point, out1.qmax) and (lo2, hi2) == (out2.zero_point, out2.qmax)  # ReLU
    assert lo6 == out6.zero_point and hi6 == min(out6.qmax, out6.zero_point + math.floor(6 / out6.scale + 0.5))
    assert not any(isinstance(m, (nn.ReLU, nn.Hardtanh)) for m in qmodel.modules())  # every clamp fused


class AddForms(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 3, padding=1)
        self.flatten, self.fc = nn.Flatten(), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.form == "operator":
            y = a + b
        elif self.form == "torch.add":
            y = torch.add(a, b)
        elif self.form == "iadd":
            a += b
            y = a
        else:
            y = a.add(b)
        return self.fc(self.flatten(y))


@pytest.mark.parametrize("form", ["operator", "torch.add", "iadd", "method"])
def test_every_form_of_adding_two_tensors_is_an_add(form):
    torch.manual_seed(0)
    model = AddForms(form).eval()
    qmodel = quantize(model, _batches((2, 6, 6)), QuantConfig(scale_mode="pot"))
    graph = lower(qmodel)
    assert [n.op for n in graph.nodes].count("Add") == 1
    x = torch.randn(16, 2, 6, 6)
    with torch.no_grad():
        assert torch.equal(qmodel(x), engine.predict(graph, x))


class Adds(nn.Module):
    def __init__(self, op) -> None:
        super().__init__()
        self.op = op
        self.conv, self.one_channel = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.op(self.conv(x), self.one_channel(x))


@pytest.mark.parametrize("op, needle", [
    (lambda y, z: y + 1, "adds a constant"),
    (lambda y, z: torch.add(y, y, alpha=2), "alpha=1"),
    (lambda y, z: y + z, r"shapes \[2, 4, 4\] and \[1, 4, 4\].*no broadcasting"),
    (lambda y, z: y + y[:, :1], "slices a tensor"),
], ids=["constant", "alpha", "broadcast", "slice"])
def test_adds_the_graph_cannot_compute_are_refused_by_name(op, needle):
    model = Adds(op).eval()
    with pytest.raises(ConfigError, match=needle) as err:
        lower(quantize(model, _batches((1, 6, 6)), QuantConfig()))
    assert "add" in str(err.value) or "slic" in str(err.value)


# -- QAT ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lsq", "pact"])
def test_qat_trains_through_adds_and_lowers_exactly(method):
    from dataclasses import replace

    from bitsmith.data import ArrayDataset, dataset_info

    model = _residual_net()
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (128, 1, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (128,), generator=gen)
    train_set = ArrayDataset(replace(dataset_info("synthetic"), image_shape=(1, 8, 8)), images, labels)
    qmodel = qat_prepare(model, _batches(model.input_shape), QATSpec(method, wbits=4, abits=4))
    adds = [m for m in qmodel.modules() if isinstance(m, QuantAdd)]
    before = [float(m.act_quant.scale) for m in adds]
    qat_train(qmodel, model, train_set, QATTrainConfig(epochs=1, batch_size=32, lr=0.01))
    assert [float(m.act_quant.scale) for m in adds] != before  # the adds' output grids learned
    graph = lower(qmodel)
    x = torch.randn(32, *model.input_shape)
    with torch.no_grad():
        exact = qmodel(x)
        set_exact_eval(qmodel, False)
        float_path = qmodel(x)
        set_exact_eval(qmodel, True)
    integer = engine.predict(graph, x)
    assert torch.equal(exact, integer)
    torch.testing.assert_close(float_path, integer, rtol=0.05, atol=0.05)


def test_a_weight_only_model_adds_in_float_and_cannot_be_lowered():
    from bitsmith.quant.ptq import set_activation_quantization

    model = _residual_net()
    qmodel = quantize(model, _batches(model.input_shape), QuantConfig())
    x = torch.randn(4, *model.input_shape)
    with torch.no_grad():
        quantized = qmodel(x)
        set_activation_quantization(qmodel, False)
        assert not torch.equal(qmodel(x), quantized)
        add = qmodel.q_add
        a, b = torch.randn(2, 3, 16, 4, 4)
        assert torch.equal(add(a, b), F.relu6(a + b))  # the float add with its fused clamp
    with pytest.raises(ConfigError, match="disabled"):
        lower(qmodel)
