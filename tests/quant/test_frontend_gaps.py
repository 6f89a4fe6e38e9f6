"""Front-end cases that used to end in a raw traceback: each works, or is a ConfigError that says
what is wrong (float64 models, input shapes, reused modules, BatchNorm without running statistics,
non-zero padding, padding folded into a conv)."""

import warnings

import pytest
import torch
from torch import nn

from bitsmith.errors import BitsmithWarning, ConfigError
from bitsmith.integer import engine
from bitsmith.models import build_model
from bitsmith.quant import QuantConfig, lower, quantize
from bitsmith.quant.modules import QuantConv2d


def _calib(shape, n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, *shape, generator=gen) for _ in range(n)]


def test_a_float64_model_is_quantized_as_a_float32_copy():
    torch.manual_seed(0)
    model = build_model("lenet5").double().eval()
    with pytest.warns(BitsmithWarning, match="float64 parameters or buffers; bitsmith quantizes a float32 copy"):
        qmodel = quantize(model, [x.double() for x in _calib((1, 32, 32))], QuantConfig(scale_mode="pot"))
    assert next(model.parameters()).dtype == torch.float64  # the float model is left as it was
    graph = lower(qmodel)
    x = torch.randn(16, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(qmodel(x), engine.predict(graph, x))
        assert torch.equal(model(x.double()).argmax(1), qmodel(x).argmax(1))


def test_a_float32_model_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize(build_model("lenet5").eval(), _calib((1, 32, 32)), QuantConfig())


def test_calibration_batches_of_another_shape_than_the_model_s_are_refused():
    model = build_model("lenet5").eval()
    with pytest.raises(ConfigError, match=r"LeNet5 expects input shape \(1, 32, 32\).*batches have shape \(1, 28, 28\)"):
        quantize(model, _calib((1, 28, 28)), QuantConfig())


def test_an_input_shape_the_model_does_not_run_on_is_refused_before_calibration():
    model = build_model("lenet5").eval()
    model.input_shape = (1, 28, 28)  # wrong: the Linear after the convs expects a 32 x 32 input
    with pytest.raises(ConfigError, match=r"LeNet5 does not run on input shape \(1, 28, 28\)"):
        quantize(model, _calib((1, 28, 28)), QuantConfig())


def test_lower_refuses_a_shape_other_than_the_quantized_one():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    qmodel = quantize(model, [torch.randn(4, 1, 6, 6)])  # no input_shape attribute: the batches' shape
    assert tuple(qmodel.input_shape) == (1, 6, 6)
    assert lower(qmodel).input_spec.shape == (1, 6, 6)
    with pytest.raises(ConfigError, match=r"lower\(input_shape=\(1, 8, 8\)\).*quantized for input shape \(1, 6, 6\)"):
        lower(qmodel, input_shape=(1, 8, 8))


class ReusedReLU(nn.Module):
    """torchvision style: one ReLU and one pool module, called after several layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu, self.pool = nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.flatten, self.fc = nn.Flatten(), nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(self.flatten(x))


def test_stateless_modules_may_be_called_many_times():
    torch.manual_seed(0)
    model = ReusedReLU().eval()
    qmodel = quantize(model, _calib((1, 8, 8)), QuantConfig(scale_mode="pot"))
    graph = lower(qmodel)
    assert [n.op for n in graph.nodes].count("MaxPool2d") == 2
    assert all(m.clamp is not None for m in qmodel.modules() if isinstance(m, QuantConv2d))  # both ReLUs fused
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(qmodel(x), engine.predict(graph, x))


@pytest.mark.parametrize("padding, pads", [
    ((1, 2, 3, 4), [3, 1, 4, 2]),  # ZeroPad2d is (left, right, top, bottom); the IR (top, left, bottom, right)
    (1, [1, 1]),
])
def test_zero_padding_before_a_conv_joins_its_padding(padding, pads):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ZeroPad2d(padding), nn.Conv2d(1, 2, 3), nn.Flatten()).eval()
    out = model(torch.zeros(1, 1, 6, 6)).shape[1]
    model = nn.Sequential(*model, nn.Linear(out, 3)).eval()
    qmodel = quantize(model, _calib((1, 6, 6)), QuantConfig(scale_mode="pot"))
    graph = lower(qmodel)
    conv = next(n for n in graph.nodes if n.op == "Conv2d")
    assert conv.attrs["padding"] == pads
    x = torch.randn(8, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(qmodel(x), engine.predict(graph, x))


@pytest.mark.parametrize("layers, needle", [
    (lambda: [nn.ZeroPad2d(1), nn.MaxPool2d(2)], r"layer '0' \(ZeroPad2d\) does not feed a single Conv2d"),
    (lambda: [nn.ConstantPad2d(1, 0.5), nn.Conv2d(1, 2, 3)], r"layer '0' \(ConstantPad2d\): only zero padding"),
    (lambda: [nn.Conv2d(1, 2, 3), nn.ReLU6(), nn.ReLU()], r"layer '2' \(ReLU\) does not directly follow"),
    (lambda: [nn.MaxPool2d(2), nn.BatchNorm2d(1)], r"layer '1' \(BatchNorm2d\) does not directly follow"),
    (lambda: [nn.Conv2d(1, 2, 3), nn.Flatten(0)], r"layer '1' \(Flatten\): only start_dim=1"),
], ids=["pad-before-pool", "constant-pad", "relu-after-relu6", "bn-after-pool", "flatten-batch"])
def test_what_cannot_be_folded_or_lowered_is_named(layers, needle):
    model = nn.Sequential(*layers()).eval()
    with pytest.raises(ConfigError, match=needle):
        quantize(model, _calib((1, 6, 6)), QuantConfig())
