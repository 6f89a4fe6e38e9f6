"""Model zoo: shapes, fx tracing, the lowering rules, spec round trips, summary figures, errors."""

import json
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from bitsmith.errors import ConfigError
from bitsmith.models import MODEL_NAMES, Reorg, build_model, format_summary, model_summary

# Small inputs keep the suite fast; the 160 x 320 defaults run with batch 1.
EXPECTED_DEFAULT_OUTPUT = {
    "lenet5": (10,),
    "nin": (10,),
    "vgg7": (10,),
    "vgg_tiny": (10,),
    "ultranet": (36, 10, 20),
    "ultranet_bypass": (36, 10, 20),
    "skynet": (36, 20, 40),
    "resnet20": (10,),
    "mobilenetv2_tiny": (10,),
}
ALLOWED_MODULES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.BatchNorm1d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Linear,
    nn.Dropout,
    Reorg,
    nn.ReLU6,
    nn.AdaptiveAvgPool2d,
)
#: Functions the zoo may call: the two the quantizer lowers (channel concatenation, residual add).
ALLOWED_FUNCTIONS = (torch.cat, operator.add)


class ReorgLeafTracer(fx.Tracer):
    """What the quantizer must do: keep Reorg as one call_module node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Reorg) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, ReorgLeafTracer().trace(model))


def batch_for(model: nn.Module) -> int:
    return 1 if model.input_shape[1] >= 160 else 2


@pytest.fixture(scope="module", params=MODEL_NAMES)
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    return request.param, build_model(request.param).eval()


def test_model_names_are_the_public_list() -> None:
    assert MODEL_NAMES == (
        "lenet5", "nin", "vgg7", "vgg_tiny", "ultranet", "ultranet_bypass", "skynet", "resnet20",
        "mobilenetv2_tiny"
    )


def test_default_forward_shape(built: tuple[str, nn.Module]) -> None:
    name, model = built
    n = batch_for(model)
    out = model(torch.randn(n, *model.input_shape))
    assert tuple(out.shape) == (n, *EXPECTED_DEFAULT_OUTPUT[name])


def test_fx_trace_matches_eager(built: tuple[str, nn.Module]) -> None:
    _, model = built
    traced = trace(model)
    x = torch.randn(batch_for(model), *model.input_shape)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_models_obey_the_lowering_rules(built: tuple[str, nn.Module]) -> None:
    name, model = built
    for qualname, module in model.named_modules():
        if next(module.children(), None) is None:
            assert isinstance(module, ALLOWED_MODULES), f"{name}.{qualname}: {type(module)}"
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            assert not module.inplace, f"{name}.{qualname} is inplace"
    traced = trace(model)
    modules = dict(traced.named_modules())
    for node in traced.graph.nodes:
        if node.op == "call_function":
            assert node.target in ALLOWED_FUNCTIONS, f"{name}: functional call {node.target}"
        if node.op in ("call_method", "get_attr"):
            pytest.fail(f"{name}: unexpected {node.op} {node.target}")
        if node.op != "call_module":
            continue
        module = modules[node.target]
        producer = node.args[0]
        if isinstance(module, (nn.ReLU, nn.ReLU6)):  # fused into the layer or add before it
            if producer.op == "call_function":
                assert producer.target is operator.add, f"{name}: ReLU {node.target} after {producer}"
                continue
            assert producer.op == "call_module", f"{name}: ReLU {node.target} after {producer}"
            assert isinstance(
                modules[producer.target], (nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.Linear)
            ), f"{name}: ReLU {node.target} after {producer.target}"
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            conv = modules[producer.target]
            assert isinstance(conv, (nn.Conv2d, nn.Linear)), f"{name}: BN {node.target}"
            assert conv.bias is None, f"{name}: {producer.target} feeds BN but has a bias"


def test_spec_round_trip(built: tuple[str, nn.Module]) -> None:
    name, model = built
    spec = json.loads(json.dumps(model.spec))  # must be JSON-ready
    assert spec["name"] == name
    rebuilt = build_model(
        spec["name"], spec["num_classes"], tuple(spec["input_shape"]), **spec["kwargs"]
    )
    assert rebuilt.spec == model.spec
    assert rebuilt.input_shape == model.input_shape
    assert rebuilt.num_classes == model.num_classes
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == ours
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.randn(1, *model.input_shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_spec_records_non_default_options() -> None:
    model = build_model("nin", 100, (3, 32, 32), dropout=0.5)
    assert model.spec == {
        "name": "nin",
        "num_classes": 100,
        "input_shape": [3, 32, 32],
        "kwargs": {"dropout": 0.5},
    }
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in build_model("nin").modules())


def totals(model: nn.Module) -> tuple[int, int]:
    rows = model_summary(model)
    return sum(r.params for r in rows), sum(r.macs for r in rows)


def test_lenet5_reference_figures() -> None:
    model = build_model("lenet5")
    assert totals(model) == (61_470, 416_520)
    assert all(p.dim() > 1 for p in model.parameters()), "base LeNet-5 has no bias"
    assert sum(p.numel() for p in model.parameters()) == 61_470
    with_bias = build_model("lenet5", bias=True)
    assert totals(with_bias) == (61_470 + 236, 416_520)


def test_summary_rows_and_table() -> None:
    model = build_model("lenet5")
    model.train()
    rows = model_summary(model)
    assert model.training, "summary must restore the training mode"
    assert [r.name for r in rows][:3] == ["conv1", "conv1_relu", "pool1"]
    conv2 = next(r for r in rows if r.name == "conv2")
    assert (conv2.kind, conv2.output_shape, conv2.params, conv2.macs) == (
        "Conv2d", (16, 10, 10), 2400, 240_000
    )
    table = format_summary(rows, "lenet5")
    assert table.row_count == len(rows) + 1
    assert list(table.columns[3].cells)[-1] == "61,470"
    assert list(table.columns[4].cells)[-1] == "416,520"


def test_summary_counts_grouped_convs_and_batchnorm() -> None:
    rows = {r.name: r for r in model_summary(build_model("skynet", 10, (3, 32, 32)))}
    assert rows["dw2"].macs == 48 * 16 * 16 * 9  # depthwise: one input channel per output
    assert rows["dw2"].params == 48 * 9
    assert rows["dw2_bn"].params == 2 * 48 and rows["dw2_bn"].macs == 0


def test_summary_needs_a_shape() -> None:
    with pytest.raises(ConfigError, match="input_shape"):
        model_summary(nn.Sequential(nn.Linear(2, 2)))
    rows = model_summary(nn.Sequential(nn.Linear(2, 3)), input_shape=(4, 2))
    assert rows[0].output_shape == (4, 3) and rows[0].macs == 4 * 2 * 3


@pytest.mark.parametrize("name", ["nin", "vgg7", "vgg_tiny"])
@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_models_at_32x32(name: str, classes: int) -> None:
    model = build_model(name, classes, (3, 32, 32)).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, classes)


def test_vgg_fc_widths() -> None:
    assert build_model("vgg7").fc1.in_features == 8192
    assert build_model("vgg_tiny").fc.in_features == 4096
    assert build_model("vgg_tiny", input_shape=(3, 64, 64)).fc.in_features == 4 * 4096


@pytest.mark.parametrize("name", ["ultranet", "ultranet_bypass", "skynet"])
def test_classify_on_small_inputs(name: str) -> None:
    model = build_model(name, 10, (3, 32, 32), classify=True).eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    traced = trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_ultranet_bypass_concatenates_reorg_then_main() -> None:
    model = build_model("ultranet_bypass", 5, (3, 32, 64))
    assert model.fuse.conv8.in_channels == 320
    traced = trace(model)
    cat = next(n for n in traced.graph.nodes if n.target is torch.cat)
    first, second = cat.args[0]
    assert first.op == "call_module" and first.target == "reorg"
    assert second.target.startswith("body.")
    assert model(torch.randn(1, 3, 32, 64)).shape == (1, 5, 2, 4)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_reorg_matches_pixel_unshuffle(stride: int) -> None:
    x = torch.randn(2, 5, 6 * stride, 4 * stride)
    assert torch.equal(Reorg(stride)(x), F.pixel_unshuffle(x, stride))


def test_reorg_channel_order_as_documented() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    y = Reorg(2)(x)
    assert y.shape == (1, 8, 2, 3)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, c * 4 + i * 2 + j], x[0, c, i::2, j::2])


def test_reorg_traces_through_by_default() -> None:
    # Without the leaf tracer fx records the reshape/permute; the result must still be right.
    gm = fx.symbolic_trace(Reorg(2))
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(gm(x), F.pixel_unshuffle(x, 2))
    with pytest.raises(ConfigError):
        Reorg(0)


def test_unknown_model_lists_the_names() -> None:
    with pytest.raises(ConfigError, match="ultranet_bypass") as info:
        build_model("resnet50")
    assert "resnet50" in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("lenet5", {"bais": True}, "bais.*allowed: bias"),
        ("vgg7", {"dropout": 0.1}, "dropout.*allowed: width"),
        ("resnet20", {"dropout": 0.1}, "allowed: none"),
        ("vgg7", {"width": 0}, "vgg7: width must be a number in \\(0, 4\\]"),
        ("ultranet", {"classify": "yes"}, "classify must be true or false"),
        ("lenet5", {"bias": 1}, "bias must be true or false"),
        ("nin", {"dropout": "0.5"}, "dropout must be a number"),
        ("nin", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_options(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "classes", "shape", "message"),
    [
        ("lenet5", None, (1, 28, 28), "must be 32 x 32"),
        ("nin", None, (3, 30, 30), "multiples of 4"),
        ("vgg7", None, (3, 36, 32), "multiples of 8"),
        ("ultranet", None, (3, 160, 328), "multiples of 16"),
        ("skynet", None, (3, 20, 16), "multiples of 8"),
        ("vgg_tiny", None, (32, 32), "three positive integers"),
        ("vgg_tiny", None, (3, 0, 32), "three positive integers"),
        ("vgg_tiny", 0, None, "num_classes must be a positive integer"),
        ("vgg_tiny", True, None, "num_classes must be a positive integer"),
    ],
)
def test_bad_shapes_and_classes(name: str, classes: object, shape: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, classes, shape)


def test_lenet5_accepts_other_channel_counts() -> None:
    model = build_model("lenet5", 4, (3, 32, 32), bias=True)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert model.spec["kwargs"] == {"bias": True}


# -- residual models -------------------------------------------------------------------------------


def _adds(model: nn.Module) -> list[fx.Node]:
    return [n for n in trace(model).graph.nodes if n.op == "call_function" and n.target is operator.add]


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_resnet20_is_the_cifar_resnet(shape) -> None:
    model = build_model("resnet20", input_shape=shape).eval()
    params, macs = totals(model)
    assert params == 272_474 - (3 - shape[0]) * 16 * 9  # 0.27 M; the stem conv follows the channels
    assert macs == {3: 40_813_184, 1: 31_021_952}[shape[0]]
    assert len(_adds(model)) == 9  # one per BasicBlock
    shortcuts = [m for name, m in model.named_modules() if name.endswith("shortcut.conv")]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in shortcuts] == [
        (16, 32, (1, 1), (2, 2)), (32, 64, (1, 1), (2, 2))]  # option B: projections where the shape changes
    rows = {r.name: r for r in model_summary(model)}
    assert rows["layer3.2.conv2"].output_shape == (64, shape[1] // 4, shape[2] // 4)
    assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_mobilenetv2_tiny_blocks(shape) -> None:
    model = build_model("mobilenetv2_tiny", input_shape=shape).eval()
    assert len(_adds(model)) == 3  # the blocks that keep stride and channels
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in depthwise] == [16, 64, 96, 96, 128, 128]
    # stem, one per depthwise and expand conv (1 + 2·5), head; none after the projections
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 1 + 1 + 2 * 5 + 1
    params, _ = totals(model)
    assert params < 50_000
    assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_tiny"])
def test_residual_models_take_multiples_of_4(name: str) -> None:
    with pytest.raises(ConfigError, match="multiples of 4"):
        build_model(name, input_shape=(1, 30, 30))
