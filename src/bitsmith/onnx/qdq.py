"""The QDQ interchange model: float operators between QuantizeLinear/DequantizeLinear pairs.

Every IntegerGraph tensor becomes the float value of its real numbers, S · (q − z), under the
tensor's own name. Activations pass through QuantizeLinear → DequantizeLinear on the graph's
grids (uint8/int8, or 16-bit types for wider codes), weights are uint8 (zero point 128, see
`UINT8_WEIGHT_ZERO`) or int16 (zero point 0) codes behind a DequantizeLinear (per tensor or per
output channel) and biases int32 codes at
scale S_w · S_in. A residual Add dequantizes each input's codes at S_acc · m (its integer
multiplier) and adds the floats. Runtimes that understand QDQ (onnxruntime, …) turn this
into their own integer kernels; their rounding differs from docs/arithmetic.md, so this model is
close to the integer graph, not bit-exact.
"""

from __future__ import annotations


import numpy as np
from onnx import TensorProto

from bitsmith.errors import ConfigError
from bitsmith.integer.ops import Emitters
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.integer.ops import as_pads
from bitsmith.integer.ops import as_pair as _pair
from bitsmith.onnx.builder import OnnxBuilder
from bitsmith.onnx.integer import emit_reorg

EMIT = Emitters("ONNX QDQ export")

# (signed, storage bits) → ONNX element type, numpy dtype
_Q_TYPES = {
    (True, 8): (TensorProto.INT8, np.int8),
    (False, 8): (TensorProto.UINT8, np.uint8),
    (True, 16): (TensorProto.INT16, np.int16),
    (False, 16): (TensorProto.UINT16, np.uint16),
}


#: 8-bit weight codes travel as uint8 with this zero point (the same real values). On CPUs without
#: VNNI, ONNX Runtime's kernels for int8 weights saturate pairs of products at 16 bits
#: (`vpmaddubsw`): on an AVX2 EPYC, the QDQ model of tests/golden/lenet5_bias_w8a8 was off by 7% of
#: its output range with int8 weights. uint8 weights only where the activations are uint8 left the
#: same error; uint8 weights on every layer (the first one's activations are int8) removed it, so
#: int8 × int8 saturates there as well as uint8 × int8. Moving the activations to int8 instead
#: would trip ORT's QDQ propagation around MaxPool (`export._check_onnxruntime_loads`).
UINT8_WEIGHT_ZERO = 128


def build(graph: IntegerGraph, b: OnnxBuilder) -> None:
    """Emit every node of `graph`; each writes the float value named after its output tensor."""
    for node in graph.nodes:
        EMIT.lookup(node)(graph, node, b)


def _storage(node: Node, bits: int, signed: bool, what: str) -> tuple[int, type]:
    for width in (8, 16):
        if bits <= width:
            return _Q_TYPES[(signed, width)]
    raise ConfigError(f"layer {node.name!r} ({node.op}): {what} {bits}-bit codes; "
                      "QuantizeLinear/DequantizeLinear take at most 16 bits")


def _quantize(b: OnnxBuilder, node: Node, x: str, out: TensorSpec, lo: int, hi: int) -> None:
    """Q/DQ the real value `x` onto `out`'s grid with codes clamped to [lo, hi] → value `out.name`."""
    n = node.name
    onnx_type, np_type = _storage(node, out.bits, out.signed, "output has")
    info = np.iinfo(np_type)
    scale = np.float32(out.scale)
    if (lo, hi) != (info.min, info.max):
        # A narrower range (fewer bits, or a fused ReLU's clamp at the zero point) is a clip of
        # the real value before QuantizeLinear, which itself saturates only to its storage type.
        if lo == out.zero_point and hi == info.max:
            x = b.op("Relu", [x], f"{n}/relu")
        else:
            x = b.op("Clip", [x, b.const(f"{n}/clip_min", np.array(scale * np.float32(lo - out.zero_point))),
                              b.const(f"{n}/clip_max", np.array(scale * np.float32(hi - out.zero_point)))], f"{n}/clip")
    s = b.const(f"{n}/scale", np.array(scale, dtype=np.float32))
    z = b.const(f"{n}/zero_point", np.array(out.zero_point, dtype=np_type))
    q = b.op("QuantizeLinear", [x, s, z], f"{n}/codes", name=f"{n}/quantize")
    b.op("DequantizeLinear", [q, s, z], out.name, name=n)


# -- ops ----------------------------------------------------------------------------------

@EMIT.register("QuantizeInput")
def _quantize_input(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    out = graph.tensors[node.output]
    _quantize(b, node, node.inputs[0], out, out.qmin, out.qmax)


@EMIT.register("Requant")
def _requant(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    out = graph.tensors[node.output]
    _quantize(b, node, node.inputs[0], out, node.attrs["clamp_min"], node.attrs["clamp_max"])


def _weight_and_bias(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> list[str]:
    """DequantizeLinear of the weight codes (scale S_w = S_acc / S_in) and of the int32 bias (S_acc)."""
    n = node.name
    x, acc = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    per_axis = acc.per_channel
    s_acc = np.array(acc.scale, dtype=np.float64)
    # S_acc = S_w · S_in was formed in float64 from two float32 numbers, so this division is exact.
    s_w = (s_acc / x.scale).astype(np.float32)
    w_type = _storage(node, node.attrs["weight_bits"], True, "weights are")[1]
    codes, zero = graph.weight_codes(node).numpy().astype(np.int64), 0  # codebooks expanded
    if w_type is np.int8:   # see UINT8_WEIGHT_ZERO
        w_type, zero = np.uint8, UINT8_WEIGHT_ZERO
    codes = (codes + zero).astype(w_type)
    axis = {"axis": 0} if per_axis else {}
    w = b.op("DequantizeLinear", [b.const(f"{n}/weight_codes", codes), b.const(f"{n}/weight_scale", s_w),
                                  b.const(f"{n}/weight_zero_point", np.full(s_w.shape, zero, dtype=w_type))],
             f"{n}/weight", name=f"{n}/dequantize_weight", **axis)
    if "bias" not in node.params:
        return [w]
    bias = graph.params[node.params["bias"]].numpy().astype(np.int32)
    bias_f = b.op("DequantizeLinear", [b.const(f"{n}/bias_codes", bias),
                                       b.const(f"{n}/bias_scale", s_acc.astype(np.float32)),
                                       b.const(f"{n}/bias_zero_point", np.zeros(s_acc.shape, dtype=np.int32))],
                  f"{n}/bias", name=f"{n}/dequantize_bias", **axis)
    return [w, bias_f]


@EMIT.register("Conv2d")
def _conv2d(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    a = node.attrs  # ONNX pads: [top, left, bottom, right], the IR's four-sided order
    b.op("Conv", [node.inputs[0], *_weight_and_bias(graph, node, b)], node.output, name=node.name,
         strides=_pair(a["stride"]), pads=list(as_pads(a["padding"])), dilations=_pair(a["dilation"]),
         group=a["groups"])


@EMIT.register("Linear")
def _linear(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    b.op("Gemm", [node.inputs[0], *_weight_and_bias(graph, node, b)], node.output, name=node.name, transB=1)


@EMIT.register("MaxPool2d")
def _maxpool(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    b.op("MaxPool", node.inputs, node.output, name=node.name,
         kernel_shape=_pair(node.attrs["kernel"]), strides=_pair(node.attrs["stride"]))


@EMIT.register("AvgPool2d")
def _avgpool(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    # The window sum at scale S_in / (kh·kw) is, as a real number, the window mean.
    b.op("AveragePool", node.inputs, node.output, name=node.name,
         kernel_shape=_pair(node.attrs["kernel"]), strides=_pair(node.attrs["stride"]))


@EMIT.register("Add")
def _add(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """§5a as QDQ: the accumulator's real value S_acc·acc = Σ (q_i − z_i)·(S_acc·m_i).

    Each input's real value is quantized on its own grid (QuantizeLinear gives back exactly the
    codes it stands for) and dequantized at scale S_acc·m_i, the integer multiplier the graph
    carries (≈ S_i: lowering picks m_i = round(S_i / S_acc)); a float Add sums the two. That is
    the DequantizeLinear → Add → QuantizeLinear pattern (the Requant after it quantizes) that QDQ
    runtimes run as an integer add. An input whose multiplier is 0 contributes nothing."""
    n = node.name
    acc = graph.tensors[node.output]
    multipliers = graph.params[node.params["multiplier"]].numpy().astype(np.int64).reshape(-1).tolist()
    terms = []
    for k, (name, m) in enumerate(zip(node.inputs, multipliers)):
        if m == 0:
            continue
        x = graph.tensors[name]
        np_type = _storage(node, x.bits, x.signed, f"its input {name!r} has")[1]
        scale = np.float32(float(acc.scale) * m)
        if not 0 < scale < np.inf:
            raise ConfigError(f"layer {n!r} (Add): the scale S_acc·m of input {name!r} ({float(acc.scale)}·{m}) is "
                              "0 or infinite as a float32; DequantizeLinear cannot carry it")
        z = b.const(f"{n}/zero_point_{k}", np.array(x.zero_point, dtype=np_type))
        q = b.op("QuantizeLinear", [name, b.const(f"{n}/input_scale_{k}", np.array(np.float32(x.scale))), z],
                 f"{n}/codes_{k}", name=f"{n}/quantize_{k}")
        terms.append((q, b.const(f"{n}/scale_{k}", np.array(scale)), z))
    if not terms:  # both multipliers 0: the accumulator is 0
        b.op("Mul", [node.inputs[0], b.const(f"{n}/zero", np.array(0, dtype=np.float32))], node.output, name=n)
        return
    if len(terms) == 1:
        b.op("DequantizeLinear", list(terms[0]), node.output, name=n)
        return
    values = [b.op("DequantizeLinear", list(t), f"{n}/term_{k}", name=f"{n}/dequantize_{k}")
              for k, t in enumerate(terms)]
    b.op("Add", values, node.output, name=n)


@EMIT.register("Flatten")
def _flatten(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    b.op("Flatten", node.inputs, node.output, name=node.name, axis=1)


@EMIT.register("Concat")
def _concat(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    b.op("Concat", node.inputs, node.output, name=node.name, axis=1)


EMIT.register("Reorg")(emit_reorg)  # the same ONNX ops as the integer export
