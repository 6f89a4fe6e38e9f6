"""ONNX export: the integer model gives exactly the engine's codes in onnxruntime; the QDQ model is close.

Every comparison is element by element on int64, for the graph output and for every intermediate
tensor (the integer model names its values after the IntegerGraph tensors).
"""

import re
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bitsmith.errors import CheckpointError, ConfigError, GraphError
from bitsmith.integer import IntegerGraph, Node, TensorSpec, engine
from bitsmith.onnx import export_onnx, run_onnx
from bitsmith.onnx import integer as integer_export
from tests.helpers import golden
from tests.random_graphs import GraphMaker, random_graph


def probe_inputs(g: IntegerGraph, n: int = 4) -> torch.Tensor:
    """Calibrated-range images, images far outside it (saturation) and exact rounding ties."""
    gen = torch.Generator().manual_seed(2)
    shape = g.input_spec.shape
    scale = float(g.tensors[g.nodes[0].output].scale)
    ties = (torch.randint(-300, 300, (1, *shape), generator=gen) + 0.5) * scale
    return torch.cat([torch.randn(n, *shape, generator=gen) * 1.3,
                      torch.randn(2, *shape, generator=gen) * 20.0,
                      ties.to(torch.float32)])


def run_every_tensor(path, names: list[str], x: torch.Tensor) -> dict[str, np.ndarray]:
    """Run the exported model with every IntegerGraph tensor exposed as an extra output."""
    model = onnx.load(path)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, None)
                              for n in names if n not in known)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(None, {"input": x.numpy()})))


def assert_bit_exact(g: IntegerGraph, path, x: torch.Tensor) -> None:
    want = engine.run(g, x, return_all=True)
    names = [n.output for n in g.nodes]
    got = run_every_tensor(path, names, x)
    for name in names:  # in execution order: the first mismatch is where the export is wrong
        np.testing.assert_array_equal(got[name].astype(np.int64), want[name].numpy(), err_msg=f"tensor {name}")
    out = run_onnx(path, x)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, want[g.outputs[0]].numpy())


# -- the integer model: bit for bit ---------------------------------------------------------

# Golden graphs (tests/golden/README.md): zoo models with random weights (and random BN
# statistics), calibrated on random images.
CASES = {
    "lenet5": "lenet5_w8a8",
    "lenet5_bias": "lenet5_bias_w8a8",
    "vgg_tiny": "vgg_tiny_bn",
    "nin": "nin_bn",
    "lenet5_w4a4_per_channel": "lenet5_w4a4_pc",
    "lenet5_mixed_precision": "lenet5_mixed",
    "lenet5_w4a4_requantize_output": "lenet5_w4a4_pc_requant_output",
    "ultranet_bypass": "ultranet_bypass_32x64",
}


@pytest.mark.parametrize("case", list(CASES))
def test_integer_model_equals_engine(case, tmp_path):
    g = golden(CASES[case])
    path = export_onnx(g, tmp_path / f"{case}.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    x = probe_inputs(g)
    assert_bit_exact(g, path, x)
    codes = engine.run(g, x, return_all=True)
    q_in, spec = codes[g.nodes[0].output], g.tensors[g.nodes[0].output]
    assert q_in.min() == spec.qmin and q_in.max() == spec.qmax  # the input quantizer saturated both ways
    assert len(np.unique(codes[g.outputs[0]].numpy())) > 1  # a constant output would prove nothing



@pytest.mark.parametrize("op", ["conv", "linear"])
@pytest.mark.parametrize("signed", [False, True])
def test_integer_model_is_exact_at_the_extreme_codes(op, signed, tmp_path):
    """Codes at both ends of their range times weights of −128 and 127 over 64 terms: a pair of
    products 255·(−128) + 255·(−128) is below −2^15, where ONNX Runtime's uint8 × int8 kernels
    saturate on CPUs without VNNI (the export moves unsigned codes to int8; see
    `bitsmith.onnx.integer._mac_input`). Every accumulator must equal the engine's on any CPU."""
    gm = GraphMaker(3)
    x = gm.input((16, 2, 2), bits=8)
    x.signed, x.zero_point = signed, 0
    if op == "conv":
        out = gm.conv(x, 4, 2, pads=[0, 0], bias=False, requant=False)
    else:
        out = gm.linear(gm.flatten(x), 4, requant=False)
    g = gm.graph(out)
    node = g.nodes[-1]
    weight = g.params[node.params["weight"]]
    weight.view(weight.shape[0], -1)[:] = torch.tensor([[-128], [127], [-128], [127]], dtype=torch.int8)
    weight.view(weight.shape[0], -1)[2, 1::2] = 127     # mixed signs within a pair
    images = torch.tensor([1e6, -1e6, 0.0]).reshape(3, 1, 1, 1).expand(3, 16, 2, 2).contiguous()
    path = export_onnx(g, tmp_path / "m.onnx")
    assert_bit_exact(g, path, images)
    codes = engine.run(g, images, return_all=True)[g.nodes[0].output]
    assert int(codes.max()) == x.qmax and int(codes.min()) == x.qmin     # the extremes were reached

# Zoo models calibrate activations symmetrically (zero point 0; vgg_tiny_bn's input aside, it is
# asymmetric); these graphs move zero points off 0 (or elsewhere) so that ConvInteger's zero-point padding, the AvgPool sum of q − z and the requantizer's
# input/output zero points are exercised. The engine defines what the changed graph computes.
ZERO_POINTS = {
    "vgg_tiny": ("vgg_tiny_bn", {"input_quant": (False, 100), "q_conv1": (False, 3)}),
    "nin": ("nin_bn", {"q_conv6": (False, 4), "q_conv9": (True, -2)}),
    "ultranet_bypass": ("ultranet_bypass_32x64", {"q_body_conv7": (False, 5)}),
}


@pytest.mark.parametrize("case", list(ZERO_POINTS))
def test_integer_model_with_nonzero_zero_points(case, tmp_path):
    name, changes = ZERO_POINTS[case]
    g = golden(name)
    for tensor, (signed, zp) in changes.items():
        g.tensors[tensor] = replace(g.tensors[tensor], signed=signed, zero_point=zp)
        producer = g.node_producing(tensor)
        if producer.op == "Requant":
            spec = g.tensors[tensor]
            producer.attrs.update(clamp_min=max(spec.qmin, zp), clamp_max=spec.qmax)
    g.validate()
    assert_bit_exact(g, export_onnx(g, tmp_path / "zp.onnx"), probe_inputs(g))


def hand_graph(tensors: list[TensorSpec], nodes: list[Node], params: dict) -> IntegerGraph:
    g = IntegerGraph({t.name: t for t in tensors}, nodes, params, ["input"], [nodes[-1].output])
    g.validate()
    return g


def test_requantizer_at_its_extremes(tmp_path):
    """|v| up to 2^31, m up to 2^31 − 1, every shift from 0 to 62, results beyond ±2^31 before the clamp."""
    low, high = -(2**31) + 127 * 128, 2**31 - 1 - 127 * 128  # with w·q these reach −2^31 and 2^31 − 1
    m = [2**31 - 1, 2**31 - 1, 2**30, 1, 12345, 2**31 - 1, 3]
    s = [62, 61, 31, 0, 17, 1, 1]
    w = [127, -128, 1, -1, 100, -100, 3]
    bias = [low, high - 128, low, high, low, high, low]
    gen = torch.Generator().manual_seed(4)
    m += torch.randint(0, 2**31, (57,), generator=gen).tolist()
    s += torch.randint(0, 63, (57,), generator=gen).tolist()
    w += torch.randint(-128, 128, (57,), generator=gen).tolist()
    bias += torch.randint(low, high, (57,), generator=gen).tolist()
    c = len(m)
    g = hand_graph(
        [TensorSpec("input", (1,), "float32"),
         TensorSpec("q", (1,), "int", 8, True, 1.0, 0),
         TensorSpec("acc", (c,), "int", 32, True, 1.0, 0),
         TensorSpec("out", (c,), "int", 32, True, 1.0, 7)],
        [Node("QuantizeInput", "q", ["input"], "q"),
         Node("Linear", "acc", ["q"], "acc", {"weight_bits": 8}, {"weight": "acc.weight", "bias": "acc.bias"}),
         Node("Requant", "out", ["acc"], "out", {"clamp_min": -(2**31), "clamp_max": 2**31 - 1, "multiplier_bits": 32},
              {"multiplier": "out.multiplier", "shift": "out.shift"})],
        {"acc.weight": torch.tensor(w, dtype=torch.int8).reshape(c, 1),
         "acc.bias": torch.tensor(bias, dtype=torch.int32),
         "out.multiplier": torch.tensor(m, dtype=torch.int64), "out.shift": torch.tensor(s, dtype=torch.int64)},
    )
    x = torch.arange(-130, 131, dtype=torch.float32).reshape(-1, 1)  # every input code
    path = export_onnx(g, tmp_path / "requant.onnx")
    assert_bit_exact(g, path, x)
    out = engine.run(g, x)
    assert out.min() == -(2**31) and out.max() == 2**31 - 1  # the clamp was reached both ways


@pytest.mark.parametrize("r, h, w", [(2, 4, 6), (3, 6, 3)])
def test_reorg_is_pixel_unshuffle_order(r, h, w, tmp_path):
    g = hand_graph(
        [TensorSpec("input", (2, h, w), "float32"),
         TensorSpec("q", (2, h, w), "int", 8, True, 1.0, 0),
         TensorSpec("reorg", (2 * r * r, h // r, w // r), "int", 8, True, 1.0, 0)],
        [Node("QuantizeInput", "q", ["input"], "q"), Node("Reorg", "reorg", ["q"], "reorg", {"stride": r})],
        {},
    )
    x = torch.arange(2 * 2 * h * w, dtype=torch.float32).reshape(2, 2, h, w) - 40
    got = run_onnx(export_onnx(g, tmp_path / "reorg.onnx"), x)
    np.testing.assert_array_equal(got, torch.nn.functional.pixel_unshuffle(x.clamp(-128, 127).long(), r).numpy())


# -- residual Add, four-sided padding, depthwise convolution (docs/arithmetic.md §3, §5a) ----------

def mac(gm: GraphMaker, x: TensorSpec, out: TensorSpec, kernel: int, *, pads, groups: int = 1, stride: int = 1,
        clamp: str = "relu") -> TensorSpec:
    """A Conv2d onto the grid `out` whose scales are consistent (S_acc = M · S_out for the Requant's
    multiplier M), so that the QDQ model, which reads scales, computes what the integer graph does."""
    acc = gm.conv(x, out.shape[0], kernel, stride=stride, pads=pads, groups=groups, requant=False)
    assert acc.shape == out.shape, (acc.shape, out.shape)
    gain = gm._gain((x.shape[0] // groups) * kernel * kernel, 127, x, out)
    acc.scale = gain * out.scale
    return gm.requant(acc, out, gain, clamp)


def unsigned_input(gm: GraphMaker, shape, zero_point: int) -> TensorSpec:
    """The input quantized to unsigned 8-bit codes with the given zero point (real 0 is that code)."""
    x = gm.input(shape)
    x.bits, x.signed, x.scale, x.zero_point = 8, False, 6.0 / 255, zero_point
    return x


def residual_graph(clamp: str = "relu") -> IntegerGraph:
    """relu(a + b) on two different grids: a unsigned 8-bit (zero point 23, ReLU), b signed 6-bit
    (zero point −5, no clamp), the sum unsigned 8-bit (zero point 9); multipliers as lowering picks
    them (S_acc = S_out · 2^−12, m_i = round(S_i / S_acc))."""
    gm = GraphMaker(21)
    x = gm.input((3, 7, 6))
    a = mac(gm, x, TensorSpec("a", (4, 7, 6), "int", 8, False, 0.04, 23), 3, pads=[1, 1])
    b = mac(gm, x, TensorSpec("b", (4, 7, 6), "int", 6, True, 0.11, -5), 1, pads=[0, 0], clamp="none")
    out = TensorSpec("sum", (4, 7, 6), "int", 8, False, 0.07, 9)
    k = 12
    m = [round(s.scale * 2**k / out.scale) for s in (a, b)]
    acc = gm._node("Add", [a, b], TensorSpec("sum_acc", out.shape, "int", 32, True, out.scale * 2.0**-k, 0), {},
                   {"multiplier": torch.tensor(m, dtype=torch.int64)})
    return gm.graph(gm.requant(acc, out, 2.0**-k, clamp))


def onnx_nodes_of(path, layer: str) -> list:
    return [n for n in onnx.load(path).graph.node if n.name == layer or n.name.startswith(layer + "/")]


@pytest.mark.parametrize("clamp", ["relu", "none"])
def test_residual_add_is_exact(clamp, tmp_path):
    g = residual_graph(clamp)
    path = export_onnx(g, tmp_path / "residual.onnx")
    x = probe_inputs(g)
    assert_bit_exact(g, path, x)
    # (a − 23)·m_a + (b + 5)·m_b in int64: Sub, Mul and Add, nothing in floating point
    add = onnx_nodes_of(path, "sum_acc")
    assert sorted(n.op_type for n in add) == ["Add", "Mul", "Mul", "Sub", "Sub"]
    consts = {t.name: t for t in onnx.load(path).graph.initializer if t.name.startswith("sum_acc/")}
    assert consts and all(t.data_type == onnx.TensorProto.INT64 for t in consts.values())
    v = engine.run(g, x, return_all=True)
    assert v["a"].min() == 23 and v["b"].min() < -5 < v["b"].max()  # ReLU at a's zero point; b both signs
    if clamp == "relu":
        assert v["sum"].min() == 9 and (v["sum_acc"] < 0).any()  # the fused ReLU clamps negative sums


@pytest.mark.parametrize("multipliers", [(0, 3000), (1, 0), (0, 0), (1, 1)])
def test_add_with_multipliers_of_zero_and_one(multipliers, tmp_path):
    """A multiplier of 0 drops its input, 1 needs no Mul: exact in the integer model; the QDQ model
    drops the input too (a DequantizeLinear at scale 0 is not written) and stays close."""
    g = residual_graph("none")
    g.params["sum_acc.multiplier"] = torch.tensor(multipliers, dtype=torch.int64)
    x = probe_inputs(g)
    assert_bit_exact(g, export_onnx(g, tmp_path / "m.onnx"), x)
    qdq = export_onnx(g, tmp_path / "qdq.onnx", qdq=True)
    want = g.dequantize(engine.run(g, x)).numpy()
    assert np.abs(run_onnx(qdq, x) - want).max() <= 2.01 * g.tensors["sum"].scale


def test_add_at_the_edge_of_int64_is_exact_and_beyond_it_refused(tmp_path):
    """32-bit codes (unsigned; signed with zero point −2^31 + 1) and multipliers 2^30 − 1: sums within
    2^40 of 2^63, exact in int64; with multipliers 2^31 − 1 they could reach 2^64: the export refuses
    the layer by name (and the engine's int64 proof refuses the graph)."""
    def graph(m):
        return hand_graph(
            [TensorSpec("input", (4,), "float32"),
             TensorSpec("qa", (4,), "int", 32, False, 1.0, 0),
             TensorSpec("qb", (4,), "int", 32, True, 1.0, -(2**31) + 1),
             TensorSpec("sum", (4,), "int", 32, True, 1.0, 0)],
            [Node("QuantizeInput", "qa", ["input"], "qa"), Node("QuantizeInput", "qb", ["input"], "qb"),
             Node("Add", "sum", ["qa", "qb"], "sum", {}, {"multiplier": "sum.multiplier"})],
            {"sum.multiplier": torch.tensor(m, dtype=torch.int64)})

    g = graph([2**30 - 1, 2**30 - 1])
    path = export_onnx(g, tmp_path / "edge.onnx")
    x = torch.tensor([[0.0, 1.0, -3e9, 3e9], [4294967040.0, -2147483648.0, 12345.0, -1.0]])
    want = engine.run(g, x, check_overflow=False)  # far beyond the declared 32 bits: unchecked
    np.testing.assert_array_equal(run_onnx(path, x), want.numpy())
    # 4294967040, the largest float32 below 2^32, is q − z = 2^32 − 256 on both grids: within 2^40 of 2^63
    assert int(want.max()) == 2 * (2**32 - 256) * (2**30 - 1) > 2**63 - 2**40
    assert int(want.min()) == -(2**30 - 1)

    beyond = graph([2**31 - 1, 2**31 - 1])
    with pytest.raises(ConfigError, match=r"layer 'sum' \(Add\).*beyond int64"):
        export_onnx(beyond, tmp_path / "beyond.onnx")
    assert not (tmp_path / "beyond.onnx").exists()
    with pytest.raises(GraphError, match=r"layer 'sum' \(Add\)"):
        engine.run(beyond, x, check_overflow=False)


PADS = {"int": 1, "pair": [1, 0], "same_even_kernel": [0, 0, 1, 1], "four_sides": [2, 0, 1, 3],
        "left_only": [0, 3, 0, 0]}


@pytest.mark.parametrize("case", list(PADS))
@pytest.mark.parametrize("groups", ["dense", "depthwise"])
def test_conv_padding_of_every_form_is_exact(case, groups, tmp_path):
    """ONNX pads are [top, left, bottom, right], the IR's order; a non-square map, stride 2 and a
    non-zero input zero point (a pad is the real value 0, not the code 0) make every side count."""
    pads = PADS[case]
    gm = GraphMaker(8)
    x = unsigned_input(gm, (3, 9, 7), 121)
    top, left, bottom, right = (pads,) * 4 if isinstance(pads, int) else \
        (pads * 2 if len(pads) == 2 else pads)
    shape = ((9 + top + bottom - 3) // 2 + 1, (7 + left + right - 3) // 2 + 1)
    channels, g_count = (3, 3) if groups == "depthwise" else (5, 1)
    out = TensorSpec("y", (channels, *shape), "int", 8, True, 0.05, -3)
    y = mac(gm, x, out, 3, pads=[pads, pads] if isinstance(pads, int) else pads, groups=g_count, stride=2)
    g = gm.graph(y)
    conv = next(n for n in g.nodes if n.op == "Conv2d")
    conv.attrs["padding"] = pads  # the int form as such
    g.validate()
    path = export_onnx(g, tmp_path / "pads.onnx")
    (onnx_conv,) = [n for n in onnx_nodes_of(path, conv.name) if n.op_type == "ConvInteger"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in onnx_conv.attribute}
    assert attrs["pads"] == [top, left, bottom, right] and attrs["group"] == g_count
    assert_bit_exact(g, path, probe_inputs(g))

    qdq = export_onnx(g, tmp_path / "pads_qdq.onnx", qdq=True)
    (qdq_conv,) = [n for n in onnx.load(qdq).graph.node if n.op_type == "Conv"]
    assert [a.ints for a in qdq_conv.attribute if a.name == "pads"] == [[top, left, bottom, right]]
    x = probe_inputs(g)
    want = g.dequantize(engine.run(g, x)).numpy()
    assert np.abs(run_onnx(qdq, x) - want).max() <= 0.05 * np.abs(want).max()


def test_qdq_residual_add_is_close(tmp_path):
    """The QDQ contract: float operators between Q/DQ, close to the integer graph and with its
    predictions, not bit-exact. Add becomes each input's codes dequantized at S_acc·m_i, a float Add."""
    g = residual_graph()
    path = export_onnx(g, tmp_path / "residual_qdq.onnx", qdq=True)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    add = onnx_nodes_of(path, "sum_acc")
    assert sorted(n.op_type for n in add) == ["Add", "DequantizeLinear", "DequantizeLinear",
                                              "QuantizeLinear", "QuantizeLinear"]
    scales = {t.name: float(onnx.numpy_helper.to_array(t)) for t in model.graph.initializer
              if t.name.startswith("sum_acc/scale_")}
    m = g.params["sum_acc.multiplier"].tolist()
    assert scales == {f"sum_acc/scale_{k}": pytest.approx(g.tensors["sum_acc"].scale * m[k], rel=1e-7)
                      for k in (0, 1)}
    x = torch.randn(200, *g.input_spec.shape, generator=torch.Generator().manual_seed(5))
    codes = engine.run(g, x)
    want = g.dequantize(codes).numpy()
    got = run_onnx(path, x)
    step = g.tensors["sum"].scale
    assert np.abs(got - want).max() <= 2.01 * step  # a code or two where roundings differ
    assert (np.abs(got - want) <= 1e-6).mean() >= 0.95  # and the same code almost everywhere


def test_qdq_export_of_random_graphs_runs_or_names_the_refused_layer(tmp_path):
    """tests/random_graphs.py's graphs (Add, grouped / depthwise / four-sided-padded Conv2d, Concat,
    pools, Reorg) as QDQ models: each loads and runs in onnxruntime, or the export refuses it with a
    ConfigError naming the layer (onnxruntime 1.31 rejects some MaxPool2d / Reorg of signed codes).
    Their scales are random, not those of a quantizer, so closeness is tested on the graphs above."""
    ran, ops = 0, set()
    for seed in range(20):
        g = random_graph(seed)
        x = torch.randn(2, *g.input_spec.shape, generator=torch.Generator().manual_seed(seed))
        try:
            path = export_onnx(g, tmp_path / f"{seed}.onnx", qdq=True)
        except ConfigError as e:
            assert re.search(r"\(layer '[^']+', (MaxPool2d|Reorg)\), so no file was written", str(e)), str(e)
            continue
        out = run_onnx(path, x)
        assert out.shape == (2, *g.output_spec.shape) and np.isfinite(out).all()
        ran += 1
        ops |= {n.op for n in g.nodes}
    assert ran >= 15 and "Add" in ops


def test_a_refusal_by_onnxruntime_names_the_layer(tmp_path, monkeypatch):
    """An ONNX operator onnxruntime has no kernel for (Max on int16) is refused at export, naming the
    graph layer the ONNX node implements; nothing is written."""
    def int16_max(graph, node, b):
        a16 = b.op("Cast", [node.inputs[0]], f"{node.name}/a16", to=onnx.TensorProto.INT16)
        b16 = b.op("Cast", [node.inputs[1]], f"{node.name}/b16", to=onnx.TensorProto.INT16)
        y = b.op("Max", [a16, b16], f"{node.name}/max")
        b.op("Cast", [y], node.output, name=node.name, to=onnx.TensorProto.INT64)

    monkeypatch.setitem(integer_export.EMIT._table, "Add", int16_max)
    with pytest.raises(ConfigError, match=r"refuses the model at its default settings \(layer 'sum_acc', Add\), "
                                          r"so no file was written: .*NOT_IMPLEMENTED.*sum_acc/max"):
        export_onnx(residual_graph(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_export_is_caught(tmp_path, monkeypatch):
    """Shifting one bit too far must make the comparison fail: the check can fail."""
    g = golden("lenet5_w8a8")
    original = integer_export.requant_constants

    def off_by_one(graph, node):
        m, s = original(graph, node)
        return m, np.minimum(s + 1, 62)

    monkeypatch.setattr(integer_export, "requant_constants", off_by_one)
    path = export_onnx(g, tmp_path / "wrong.onnx")
    x = probe_inputs(g)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(run_onnx(path, x), engine.run(g, x).numpy())


def test_codes_wider_than_8_bits_are_refused(tmp_path):
    g = golden("lenet5_w12a10")   # 12-bit weights, 10-bit activations, 16-bit multipliers
    with pytest.raises(ConfigError, match=r"'q_conv1_acc'.*--qdq"):
        export_onnx(g, tmp_path / "wide.onnx")
    assert not (tmp_path / "wide.onnx").exists()
    # The QDQ model carries them as int16/uint16 codes.
    path = export_onnx(g, tmp_path / "wide_qdq.onnx", qdq=True)
    x = probe_inputs(g)
    close = np.abs(run_onnx(path, x) - g.dequantize(engine.run(g, x)).numpy())
    assert close.max() <= 0.05 * float(g.dequantize(engine.run(g, x)).abs().max())


def test_model_file_names_metadata_and_batch(tmp_path):
    g = golden("lenet5_bias_w8a8")
    g.metadata.update(model={"name": "lenet5", "input_shape": [1, 32, 32]}, dataset="fashion_mnist")
    path = export_onnx(g, tmp_path / "sub" / "m.onnx")
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["dataset"] == "fashion_mnist" and '"lenet5"' in props["model"] and "quant_config" in props
    assert props["bitsmith.export"] == "integer"
    graph_nodes = {n.name for n in g.nodes}
    assert {n.name.split("/")[0] for n in model.graph.node} <= graph_nodes  # every ONNX node traces to one
    assert [i.name for i in model.graph.input] == ["input"]
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind
    x = probe_inputs(g)
    np.testing.assert_array_equal(run_onnx(path, x[:1]), engine.run(g, x[:1]).numpy())  # dynamic batch
    np.testing.assert_array_equal(run_onnx(path, x[0].numpy()), engine.run(g, x[0]).numpy())  # one image, numpy


def test_run_onnx_errors(tmp_path):
    g = golden("lenet5_w8a8")
    path = export_onnx(g, tmp_path / "m.onnx")
    with pytest.raises(GraphError, match="NaN"):
        run_onnx(path, torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(GraphError, match="does not fit"):
        run_onnx(path, torch.zeros(1, 3, 32, 32))
    with pytest.raises(CheckpointError, match="not found"):
        run_onnx(tmp_path / "missing.onnx", torch.zeros(1, 1, 32, 32))
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot load"):
        run_onnx(bad, torch.zeros(1, 1, 32, 32))


# -- codebook layers (CLIP-Q) -------------------------------------------------------------

@pytest.mark.parametrize("qdq", [False, True])
def test_onnx_export_expands_the_codebook(tmp_path, qdq):
    g = golden("lenet5_clipq_3bit")   # 2- and 3-bit codebook layers, a dense fc2
    shape = g.input_spec.shape
    x = torch.randn(16, *shape)
    path = export_onnx(g, tmp_path / "m.onnx", qdq=qdq)
    out = np.asarray(run_onnx(path, x))
    if qdq:  # float QDQ model: its argmax, not its bits
        assert np.array_equal(out.argmax(1), engine.predict(g, x).argmax(1).numpy())
    else:
        np.testing.assert_array_equal(out.astype(np.int64), engine.run(g, x).numpy())


# -- the QDQ model: close, same predictions ------------------------------------------------

def test_qdq_lenet_predicts_like_the_engine(tmp_path):
    g = golden("lenet5_bias_w8a8")
    path = export_onnx(g, tmp_path / "qdq.onnx", qdq=True)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops and "ConvInteger" not in ops
    x = torch.randn(500, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    got = run_onnx(path, x)
    want = g.dequantize(engine.run(g, x)).numpy()
    assert got.dtype == np.float32
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


@pytest.mark.parametrize("case", ["nin", "ultranet_bypass", "lenet5_w4a4_requantize_output"])
def test_qdq_model_runs_and_is_close(case, tmp_path):
    g = golden(CASES[case])
    path = export_onnx(g, tmp_path / "qdq.onnx", qdq=True)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    x = probe_inputs(g)
    want = g.dequantize(engine.run(g, x)).numpy()
    assert np.abs(run_onnx(path, x) - want).max() <= 0.05 * np.abs(want).max()


def test_a_model_onnxruntime_refuses_is_never_written(tmp_path):
    """onnx.checker accepts the QDQ model of a Q-format graph, but onnxruntime's default QDQ
    optimisations reject it (a MaxPool between Q/DQ pairs): export refuses, writes nothing, and
    leaves an existing file alone; the integer export of the same graph is exact."""
    g = golden("lenet5_qformat")
    target = tmp_path / "model.onnx"
    target.write_bytes(b"an earlier export")
    with pytest.raises(ConfigError, match=r"onnxruntime .* refuses the model .*\(layer 'pool1', MaxPool2d\), "
                                          "so no file was written"):
        export_onnx(g, target, qdq=True)
    assert target.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    x = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    path = export_onnx(g, tmp_path / "integer.onnx")
    np.testing.assert_array_equal(run_onnx(path, x), engine.run(g, x).numpy())
