"""Every row of the table of PyTorch modules and functions in docs/user-guide.md ("Bring your own
model"): a tiny model using a supported row quantizes, lowers to the ops the table says, and its
fake-quant outputs equal the integer engine's element by element (power-of-two scales, where both
round the same real numbers); an unsupported row is a ConfigError that names the module."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.integer import engine
from bitsmith.models import Reorg
from bitsmith.quant import QuantConfig, lower, quantize
from tests.quantized import randomised

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"
POT = QuantConfig(scale_mode="pot")


class Lambda(nn.Module):
    """forward = `fn(self, x)`: a model written with functions rather than modules."""

    def __init__(self, fn, **modules) -> None:
        super().__init__()
        self.fn = fn
        for name, m in modules.items():
            setattr(self, name, m)

    def forward(self, x):
        return self.fn(self, x)


def seq(*layers):
    return nn.Sequential(*layers)


def conv(cin=2, cout=4, k=3, **kw):
    return nn.Conv2d(cin, cout, k, **kw)


def head(features):
    """Flatten + Linear to 3 logits."""
    return [nn.Flatten(), nn.Linear(features, 3)]


#: table row (its first cell in the guide) → (models using it, input shape, graph ops it must produce)
SUPPORTED = {
    "`nn.Conv2d`": ([
        seq(conv(padding=1), nn.ReLU(), *head(4 * 8 * 8)),
        seq(conv(2, 4, 3, stride=2, dilation=2, padding=2), *head(4 * 4 * 4)),
        seq(conv(2, 2, 3, groups=2, padding=1, bias=False), nn.ReLU(), *head(2 * 8 * 8)),  # depthwise
        seq(conv(2, 4, 4, padding="same"), nn.ReLU(), *head(4 * 8 * 8)),  # even kernel: asymmetric pads
        seq(conv(2, 4, (3, 1), padding="valid"), *head(4 * 6 * 8)),
    ], (2, 8, 8), {"Conv2d"}),
    "`nn.Linear`": ([seq(nn.Flatten(), nn.Linear(2 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))], (2, 8, 8),
                    {"Linear"}),
    "`nn.BatchNorm2d`, `nn.BatchNorm1d`": ([
        seq(conv(bias=False), nn.BatchNorm2d(4), nn.ReLU(), *head(4 * 6 * 6)),
        seq(nn.Flatten(), nn.Linear(2 * 8 * 8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
    ], (2, 8, 8), {"Requant"}),  # folded: no op of its own
    "`nn.ReLU`, `F.relu`, `torch.relu`, `x.relu()`": ([
        seq(conv(), nn.ReLU(), *head(4 * 6 * 6)),
        Lambda(lambda s, x: s.fc(s.flat(F.relu(s.c(x)))), c=conv(), flat=nn.Flatten(), fc=nn.Linear(144, 3)),
        Lambda(lambda s, x: s.fc(s.flat(torch.relu(s.c(x)))), c=conv(), flat=nn.Flatten(), fc=nn.Linear(144, 3)),
        Lambda(lambda s, x: s.fc(s.flat(s.c(x).relu())), c=conv(), flat=nn.Flatten(), fc=nn.Linear(144, 3)),
    ], (2, 8, 8), {"Requant"}),
    "`nn.ReLU6`, `F.relu6`": ([
        seq(conv(), nn.ReLU6(), *head(4 * 6 * 6)),
        Lambda(lambda s, x: s.fc(s.flat(F.relu6(s.c(x)))), c=conv(), flat=nn.Flatten(), fc=nn.Linear(144, 3)),
    ], (2, 8, 8), {"Requant"}),
    "`nn.Hardtanh`, `F.hardtanh`": ([
        seq(conv(), nn.Hardtanh(-0.5, 0.75), *head(4 * 6 * 6)),
        Lambda(lambda s, x: s.fc(s.flat(F.hardtanh(s.c(x), 0.0, 1.5))), c=conv(), flat=nn.Flatten(),
               fc=nn.Linear(144, 3)),
    ], (2, 8, 8), {"Requant"}),
    "`nn.MaxPool2d`": ([seq(conv(padding=1), nn.ReLU(), nn.MaxPool2d(2), *head(4 * 4 * 4))], (2, 8, 8),
                       {"MaxPool2d"}),
    "`nn.AvgPool2d`": ([seq(conv(padding=1), nn.ReLU(), nn.AvgPool2d(2), *head(4 * 4 * 4))], (2, 8, 8),
                       {"AvgPool2d"}),
    "`nn.AdaptiveAvgPool2d`, `F.adaptive_avg_pool2d`": ([
        seq(conv(padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), *head(4)),
        seq(conv(padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 4)), *head(4 * 2 * 4)),
        Lambda(lambda s, x: s.fc(s.flat(F.adaptive_avg_pool2d(s.c(x), 2))), c=conv(padding=1), flat=nn.Flatten(),
               fc=nn.Linear(16, 3)),
    ], (2, 8, 8), {"AvgPool2d"}),
    "`nn.Flatten`, `torch.flatten(x, 1)`, `x.flatten(1)`": ([
        seq(conv(), *head(144)),
        Lambda(lambda s, x: s.fc(torch.flatten(s.c(x), 1)), c=conv(), fc=nn.Linear(144, 3)),
        Lambda(lambda s, x: s.fc(s.c(x).flatten(1)), c=conv(), fc=nn.Linear(144, 3)),
    ], (2, 8, 8), {"Flatten"}),
    "`nn.Dropout`, `nn.Dropout2d`, `nn.Identity`": ([
        seq(conv(), nn.Dropout2d(0.3), nn.ReLU(), nn.Identity(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(144, 3)),
    ], (2, 8, 8), {"Conv2d"}),
    "`torch.cat(…, dim=1)`": ([
        Lambda(lambda s, x: s.fc(s.flat(torch.cat([s.a(x), s.b(x)], 1))), a=conv(), b=conv(2, 2),
               flat=nn.Flatten(), fc=nn.Linear(6 * 36, 3)),
    ], (2, 8, 8), {"Concat"}),
    "`a + b`, `torch.add(a, b)`, `a += b`, `a.add(b)`": ([
        Lambda(lambda s, x: s.fc(s.flat(s.relu(s.a(x) + s.b(x)))), a=conv(), b=conv(), relu=nn.ReLU(),
               flat=nn.Flatten(), fc=nn.Linear(144, 3)),
        Lambda(lambda s, x: s.fc(s.flat(torch.add(s.a(x), x))), a=conv(2, 2, padding=1), flat=nn.Flatten(),
               fc=nn.Linear(128, 3)),
    ], (2, 8, 8), {"Add"}),
    "`nn.ZeroPad2d`, `nn.ConstantPad2d(…, 0)`": ([
        seq(nn.ZeroPad2d((1, 0, 2, 1)), conv(), nn.ReLU(), *head(4 * 9 * 7)),
        seq(nn.ConstantPad2d(1, 0.0), conv(padding=1), *head(4 * 10 * 10)),
    ], (2, 8, 8), {"Conv2d"}),
    "`bitsmith.models.Reorg`": ([seq(conv(padding=1), nn.ReLU(), Reorg(2), *head(16 * 4 * 4))], (2, 8, 8),
                                {"Reorg"}),
}


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = conv(2, 2, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x))


#: unsupported row → (a model using it, input shape, what the ConfigError must say)
UNSUPPORTED = {
    "`nn.LeakyReLU`, `nn.PReLU`": (seq(conv(), nn.LeakyReLU(0.1)), (2, 8, 8),
                                   r"layer '1' \(LeakyReLU\).*second requantization multiplier"),
    "`nn.Sigmoid`, `nn.Tanh`, `nn.GELU`, `nn.SiLU`, `nn.Hardswish`, …": (
        seq(conv(), nn.SiLU()), (2, 8, 8), r"layer '1' \(SiLU\).*not a clamp"),
    "`nn.Conv2d(padding_mode='reflect')` (or 'replicate', 'circular')": (
        seq(conv(padding=1, padding_mode="reflect")), (2, 8, 8), r"layer '0' \(Conv2d\).*padding_mode='reflect'"),
    "`nn.BatchNorm2d(track_running_stats=False)`": (
        seq(conv(bias=False), nn.BatchNorm2d(4, track_running_stats=False)), (2, 8, 8),
        r"layer '1' \(BatchNorm2d\).*track_running_stats=False"),
    "`nn.AdaptiveAvgPool2d` to a size that does not divide the input": (
        seq(conv(), nn.AdaptiveAvgPool2d(4)), (2, 8, 8), r"layer '1' \(AdaptiveAvgPool2d\).*6 x 6 input to 4 x 4"),
    "a Conv2d, Linear or BatchNorm called twice": (Twice(), (2, 8, 8), r"layer 'conv' \(Conv2d\) is called 2 times"),
    "any other module (`nn.Upsample`, `nn.ConvTranspose2d`, `nn.LSTM`, …)": (
        seq(conv(), nn.Upsample(scale_factor=2)), (2, 8, 8), r"layer '1' \(Upsample\)"),
    "other functions and tensor methods (`x.view`, `torch.sigmoid`, …)": (
        Lambda(lambda s, x: torch.sigmoid(s.c(x)), c=conv()), (2, 8, 8), r"operation 'sigmoid'"),
}


def _calibration(shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(16, *shape, generator=gen) for _ in range(2)]


def _rows_in_the_guide() -> list[str]:
    text = GUIDE.read_text()
    section = text[text.index("### Supported modules and functions"):]
    section = section[:section.index("\n## ", 1) if "\n## " in section[1:] else len(section)]
    return [line.split("|")[1].strip() for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| PyTorch") and not re.match(r"\|\s*-", line)]


def test_the_guide_s_table_is_the_table_tested_here():
    assert _rows_in_the_guide() == list(SUPPORTED) + list(UNSUPPORTED)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
@pytest.mark.parametrize("row", list(SUPPORTED))
def test_a_supported_row_lowers_and_fake_quant_equals_the_engine(row):
    models, shape, ops = SUPPORTED[row]
    for index, model in enumerate(models):
        torch.manual_seed(index)
        for p in model.parameters():
            nn.init.uniform_(p, -0.5, 0.5)
        model = randomised(model)
        qmodel = quantize(model, _calibration(shape), POT)
        graph = lower(qmodel)
        assert ops <= {n.op for n in graph.nodes}, (row, index, [n.op for n in graph.nodes])
        x = torch.cat([torch.randn(32, *shape), torch.randn(8, *shape) * 4])
        with torch.no_grad():
            fake = qmodel(x)
            float_out = model(x)
        integer = engine.predict(graph, x)
        assert torch.equal(fake, integer), (row, index)
        # and the quantized model still computes what the float one does, on inputs like the calibration's
        error = float((integer[:32] - float_out[:32]).abs().max())
        assert error < 0.1 * float(float_out[:32].abs().max()), (row, index, error)


@pytest.mark.parametrize("row", list(UNSUPPORTED))
def test_an_unsupported_row_is_a_config_error_naming_the_module(row):
    model, shape, needle = UNSUPPORTED[row]
    with pytest.raises(ConfigError, match=needle):
        lower(quantize(model.eval(), _calibration(shape), POT))


def test_clamps_bound_the_codes_as_the_table_says():
    """ReLU6 / Hardtanh(a, b): clamp [max(qmin, z + round(a/S)), min(qmax, z + round(b/S))]; the fake-quant
    model clamps the same codes (its outputs never leave the clamp's real range)."""
    torch.manual_seed(0)
    model = seq(conv(), nn.Hardtanh(-0.5, 0.75), *head(4 * 6 * 6)).eval()
    qmodel = quantize(model, [torch.randn(16, 2, 8, 8) * 4], QuantConfig())
    graph = lower(qmodel)
    requant = next(n for n in graph.nodes if n.op == "Requant" and n.name.startswith("q_0"))
    out = graph.tensors[requant.output]
    assert out.signed and out.zero_point == 0
    assert requant.attrs["clamp_min"] == math.floor(-0.5 / out.scale + 0.5)
    assert requant.attrs["clamp_max"] == math.floor(0.75 / out.scale + 0.5)
    codes = engine.run(graph, torch.randn(64, 2, 8, 8) * 4, return_all=True)[requant.output]
    assert int(codes.min()) == requant.attrs["clamp_min"] and int(codes.max()) == requant.attrs["clamp_max"]
