"""The integer ONNX model: docs/arithmetic.md in ONNX integer operators, bit for bit.

Codes travel between nodes as int64 values carrying the IntegerGraph tensor names. The MACs run
in ConvInteger / MatMulInteger (8-bit codes with zero points, int8 weights, exact int32 sums; any
padding, four-sided included, through ConvInteger's `pads`), the residual Add is its two scaled
code differences in int64, requantization is the spec's `(v·m + R) >> s` in int64 with an exact
floor shift, and nothing is computed in floating point except the input quantization the spec
itself prescribes.
"""

from __future__ import annotations


import numpy as np
from onnx import TensorProto

from bitsmith.errors import ConfigError
from bitsmith.integer.ops import Emitters
from bitsmith.integer.arithmetic import FLOAT32_CLAMP_EXACT, partial_sum_bound
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.integer.ops import as_pads
from bitsmith.integer.ops import as_pair as _pair
from bitsmith.onnx.builder import OnnxBuilder

EMIT = Emitters("ONNX integer export")

#: Widest codes ConvInteger / MatMulInteger take (as int8).
MAC_BITS = 8
#: The offset that makes the requantizer's product non-negative before the unsigned shift.
OFFSET_LOG2 = 62
INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1

#: What unsigned 8-bit codes are moved down by to travel as int8 (`_mac_input`).
UINT8_SHIFT = 128


def build(graph: IntegerGraph, b: OnnxBuilder) -> None:
    """Emit every node of `graph`; each writes the int64 value named after its output tensor."""
    for node in graph.nodes:
        EMIT.lookup(node)(graph, node, b)


def _too_wide(node: Node, what: str, bits: int) -> ConfigError:
    return ConfigError(
        f"layer {node.name!r} ({node.op}): {what} {bits}-bit codes, but ONNX ConvInteger/MatMulInteger take "
        f"at most {MAC_BITS}-bit codes. Export a QDQ model instead (--qdq, export_onnx(..., qdq=True)) or "
        f"quantize with ≤ {MAC_BITS}-bit weights and activations."
    )


def _mac_input(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> tuple[str, str]:
    """The node's input as int8 codes plus its zero point: what ConvInteger/MatMulInteger read.

    Unsigned codes are moved down by 128 (codes and zero point alike, so q − z is unchanged):
    ONNX Runtime multiplies uint8 × int8 on CPUs without VNNI with `vpmaddubsw`, which saturates
    each pair of products at 16 bits (measured: MatMulInteger 255 × −128 summed over 64 terms gives
    −1,048,576 instead of −2,088,960 on an AVX2 EPYC), while its int8 × int8 kernels widen to 16
    bits first and are exact."""
    spec = graph.tensors[node.inputs[0]]
    if spec.bits > MAC_BITS:
        raise _too_wide(node, f"its input {spec.name!r} has", spec.bits)
    codes, zero_point = node.inputs[0], spec.zero_point
    if not spec.signed:
        codes = b.op("Sub", [codes, b.const(f"{node.name}/x_shift", np.array(UINT8_SHIFT, dtype=np.int64))],
                     f"{node.name}/x_shifted")
        zero_point -= UINT8_SHIFT
    x8 = b.op("Cast", [codes], f"{node.name}/x_8bit", to=TensorProto.INT8)  # exact: codes fit 8 bits
    zp = b.const(f"{node.name}/x_zero_point", np.array(zero_point, dtype=np.int8))
    return x8, zp


def _weight(graph: IntegerGraph, node: Node) -> np.ndarray:
    bits = node.attrs["weight_bits"]
    if bits > MAC_BITS:
        raise _too_wide(node, "its weights are", bits)
    w = graph.weight_codes(node)  # a CLIP-Q codebook is expanded to its int8 codes here
    # ConvInteger/MatMulInteger sum in int32; this bound covers every partial sum in any order.
    bound = partial_sum_bound(w, graph.tensors[node.inputs[0]])
    if bound > INT32_MAX:
        raise ConfigError(f"layer {node.name!r} ({node.op}): partial sums can reach {bound}, beyond int32; "
                          "export with --qdq or use fewer input channels per output")
    return w.numpy().astype(np.int8)


def _accumulate(graph: IntegerGraph, node: Node, b: OnnxBuilder, sum32: str, bias_shape: tuple[int, ...]) -> None:
    """int32 MAC result → int64 accumulator, plus the bias (added in int64, as the engine does)."""
    if "bias" not in node.params:
        b.op("Cast", [sum32], node.output, name=f"{node.name}/to_int64", to=TensorProto.INT64)
        return
    wide = b.op("Cast", [sum32], f"{node.name}/sum_int64", to=TensorProto.INT64)
    bias = graph.params[node.params["bias"]].numpy().astype(np.int64).reshape(bias_shape)
    b.op("Add", [wide, b.const(f"{node.name}/bias", bias)], node.output, name=f"{node.name}/add_bias")


def _centered(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> str:
    """v = q − z_in in int64 (the input itself when z_in = 0)."""
    spec = graph.tensors[node.inputs[0]]
    if spec.zero_point == 0:
        return node.inputs[0]
    z = b.const(f"{node.name}/in_zero_point", np.array(spec.zero_point, dtype=np.int64))
    return b.op("Sub", [node.inputs[0], z], f"{node.name}/centered")


# -- ops ----------------------------------------------------------------------------------

@EMIT.register("QuantizeInput")
def _quantize_input(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """§2: q = clamp(round_half_even(x / S) + z, qmin, qmax) with one float32 division.

    ONNX Round is half-to-even. Clamping to [qmin − z, qmax − z] before the cast (like the engine)
    keeps huge inputs from overflowing the cast and equals clamping after adding z; bounds beyond
    2^24 are not all float32 values, so such codes (more than 24 bits) are clamped in float64.
    """
    out = graph.tensors[node.output]
    n = node.name
    div = b.op("Div", [node.inputs[0], b.const(f"{n}/scale", np.array(out.scale, dtype=np.float32))], f"{n}/div")
    rounded = b.op("Round", [div], f"{n}/round")
    lo, hi = out.qmin - out.zero_point, out.qmax - out.zero_point
    bound_type = np.float32
    if max(abs(lo), abs(hi)) >= FLOAT32_CLAMP_EXACT:  # codes of more than 24 bits: clamp in float64 (exact)
        rounded = b.op("Cast", [rounded], f"{n}/to_double", to=TensorProto.DOUBLE)
        bound_type = np.float64
    lo = b.const(f"{n}/min", np.array(lo, dtype=bound_type))
    hi = b.const(f"{n}/max", np.array(hi, dtype=bound_type))
    clipped = b.op("Clip", [rounded, lo, hi], f"{n}/clip")
    if out.zero_point == 0:
        b.op("Cast", [clipped], node.output, name=n, to=TensorProto.INT64)
        return
    codes = b.op("Cast", [clipped], f"{n}/cast", to=TensorProto.INT64)
    b.op("Add", [codes, b.const(f"{n}/zero_point", np.array(out.zero_point, dtype=np.int64))], node.output, name=n)


@EMIT.register("Conv2d")
def _conv2d(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """§3 with ConvInteger: it subtracts the zero point before padding, so a pad contributes 0.

    ONNX `pads` is [x1_begin, x2_begin, x1_end, x2_end] = [top, left, bottom, right], the IR's
    four-sided order (`as_pads`), so symmetric, asymmetric, grouped and depthwise convolutions all
    take the same path (a depthwise conv is `group` = channels)."""
    a = node.attrs
    w = _weight(graph, node)
    x8, zp = _mac_input(graph, node, b)
    sum32 = b.op(
        "ConvInteger",
        [x8, b.const(f"{node.name}/weight", w), zp, b.const(f"{node.name}/w_zero_point", np.array(0, np.int8))],
        f"{node.name}/sum",
        name=node.name,
        strides=_pair(a["stride"]),
        pads=list(as_pads(a["padding"])),
        dilations=_pair(a["dilation"]),
        group=a["groups"],
    )
    _accumulate(graph, node, b, sum32, (1, -1, 1, 1))


@EMIT.register("Linear")
def _linear(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    w = _weight(graph, node)
    x8, zp = _mac_input(graph, node, b)
    wt = b.const(f"{node.name}/weight_t", np.ascontiguousarray(w.T))  # [in, out]: x @ Wᵀ
    w_zp = b.const(f"{node.name}/w_zero_point", np.array(0, np.int8))
    sum32 = b.op("MatMulInteger", [x8, wt, zp, w_zp], f"{node.name}/sum", name=node.name)
    _accumulate(graph, node, b, sum32, (-1,))


@EMIT.register("Requant")
def _requant(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """§4: out = clamp(z_out + ((v·m + R) >> s), lo, hi), R = 2^(s−1) (0 when s = 0), in int64.

    ONNX BitShift is unsigned only, so the arithmetic shift is built from an exact identity. Let
    p = v·m. The exporter checks statically that |p| ≤ max|v| · max(m) < 2^62, hence
      u = p + 2^62           lies in [1, 2^63 − 1]: an int64 add without overflow, and u ≥ 0;
      u + R                  < 2^63 + 2^61 < 2^64 (R ≤ 2^61): exact in uint64 after a lossless Cast;
      (u + R) >> s           = floor((p + R + 2^62) / 2^s) = floor((p + R) / 2^s) + 2^(62−s),
                             because 2^62 / 2^s is an integer for 0 ≤ s ≤ 62. It is < 2^63 (for
                             s = 0, R = 0 and u < 2^63; for s ≥ 1 it is < 2^64 / 2), so the Cast
                             back to int64 is lossless;
      − 2^(62−s) + z_out     leaves floor((p + R) / 2^s) + z_out = the spec's (v·m + R) >> s + z_out.
    """
    x = graph.tensors[node.inputs[0]]
    out = graph.tensors[node.output]
    n = node.name
    m, s = requant_constants(graph, node)
    _check_product_bound(node, x, m)
    rank = len(x.shape) + 1
    rounding = np.where(s > 0, np.left_shift(np.ones_like(s), np.maximum(s - 1, 0)), 0).astype(np.uint64)
    offset = (out.zero_point - np.left_shift(np.ones_like(s), OFFSET_LOG2 - s)).astype(np.int64)

    v = _centered(graph, node, b)
    p = b.op("Mul", [v, b.const(f"{n}/multiplier", channel_shape(m, rank))], f"{n}/product")
    u = b.op("Add", [p, b.const(f"{n}/two_pow_62", np.array(1 << OFFSET_LOG2, dtype=np.int64))], f"{n}/offset_product")
    u = b.op("Cast", [u], f"{n}/as_uint64", to=TensorProto.UINT64)
    u = b.op("Add", [u, b.const(f"{n}/rounding", channel_shape(rounding, rank))], f"{n}/rounded")
    shifted = b.op("BitShift", [u, b.const(f"{n}/shift", channel_shape(s.astype(np.uint64), rank))],
                   f"{n}/shifted", name=n, direction="RIGHT")
    shifted = b.op("Cast", [shifted], f"{n}/as_int64", to=TensorProto.INT64)
    codes = b.op("Add", [shifted, b.const(f"{n}/zero_point_minus_offset", channel_shape(offset, rank))],
                 f"{n}/unclamped")
    _clamp(b, n, codes, node.attrs["clamp_min"], node.attrs["clamp_max"], node.output)


def _clamp(b: OnnxBuilder, n: str, x: str, lo: int, hi: int, output: str) -> None:
    """clamp(x, lo, hi) on int64 with Less/Greater + Where.

    Not Clip/Min/Max: onnxruntime's int64 kernels of those return wrong results for some values
    beyond the int32 range (an Eigen bug; microsoft/onnxruntime PR #25280), which a requantizer's
    unclamped value can reach. tests/onnx/test_onnx.py checks values around ±2^31.
    """
    lo_c = b.const(f"{n}/clamp_min", np.array(lo, dtype=np.int64))
    hi_c = b.const(f"{n}/clamp_max", np.array(hi, dtype=np.int64))
    below = b.op("Less", [x, lo_c], f"{n}/below_min")
    x = b.op("Where", [below, lo_c, x], f"{n}/clamped_low")
    above = b.op("Greater", [x, hi_c], f"{n}/above_max")
    b.op("Where", [above, hi_c, x], output, name=f"{n}/clamp")


def requant_constants(graph: IntegerGraph, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """A Requant node's (multiplier, shift) as int64 arrays (one value, or one per channel)."""
    m = graph.params[node.params["multiplier"]].numpy().astype(np.int64).reshape(-1)
    s = graph.params[node.params["shift"]].numpy().astype(np.int64).reshape(-1)
    return m, s


def _check_product_bound(node: Node, x: TensorSpec, m: np.ndarray) -> None:
    v_max = max(x.qmax - x.zero_point, x.zero_point - x.qmin)
    if v_max * int(m.max(initial=0)) >= 1 << OFFSET_LOG2:
        raise ConfigError(f"layer {node.name!r} (Requant): |v·m| can reach 2^62 ({x.bits}-bit input, multiplier "
                          f"{int(m.max())}); the int64 requantizer of the ONNX export cannot represent it")


@EMIT.register("MaxPool2d")
def _maxpool(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """Max of each window on codes cast to a type that holds them exactly (a max does no arithmetic)."""
    spec = graph.tensors[node.inputs[0]]
    if spec.bits <= MAC_BITS:
        onnx_type = TensorProto.INT8 if spec.signed else TensorProto.UINT8
    else:  # every integer below 2^24 (2^53) is a float32 (float64) value
        onnx_type = TensorProto.FLOAT if spec.bits <= 24 else TensorProto.DOUBLE
    x = b.op("Cast", [node.inputs[0]], f"{node.name}/cast_in", to=onnx_type)
    y = b.op("MaxPool", [x], f"{node.name}/pooled", name=node.name,
             kernel_shape=_pair(node.attrs["kernel"]), strides=_pair(node.attrs["stride"]))
    b.op("Cast", [y], node.output, name=f"{node.name}/cast_out", to=TensorProto.INT64)


@EMIT.register("AvgPool2d")
def _avgpool(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """§5: the window sum of q − z_in, as a depthwise ConvInteger with an all-ones kernel (exact int32)."""
    spec = graph.tensors[node.inputs[0]]
    kh, kw = _pair(node.attrs["kernel"])
    x8, zp = _mac_input(graph, node, b)
    bound = kh * kw * max(spec.qmax - spec.zero_point, spec.zero_point - spec.qmin)
    if bound > INT32_MAX:  # ConvInteger sums in int32
        raise ConfigError(f"layer {node.name!r} (AvgPool2d): window sums can reach {bound}, beyond int32; "
                          "export with --qdq or use a smaller window")
    ones = b.const(f"{node.name}/ones", np.ones((spec.shape[0], 1, kh, kw), dtype=np.int8))
    sum32 = b.op("ConvInteger", [x8, ones, zp, b.const(f"{node.name}/w_zero_point", np.array(0, np.int8))],
                 f"{node.name}/sum", name=node.name, strides=_pair(node.attrs["stride"]), group=spec.shape[0])
    b.op("Cast", [sum32], node.output, name=f"{node.name}/to_int64", to=TensorProto.INT64)


@EMIT.register("Flatten")
def _flatten(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    b.op("Flatten", node.inputs, node.output, name=node.name, axis=1)  # row-major C·H·W, as PyTorch


@EMIT.register("Reorg")
def emit_reorg(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """§5: out[c·r² + i·r + j, y, x] = in[c, y·r + i, x·r + j] (pixel_unshuffle order).

    [N, C, H, W] → [N, C, H/r, r, W/r, r] (index c, y, i, x, j) → transpose to (c, i, j, y, x) →
    merge (c, i, j) into c·r² + i·r + j. ONNX SpaceToDepth orders channels (i·r + j)·C + c instead,
    so it is not used. A 0 in a Reshape target copies that dimension: the batch stays dynamic.
    """
    c, h, w = graph.tensors[node.inputs[0]].shape
    r = node.attrs["stride"]
    split = b.const(f"{node.name}/split_shape", np.array([0, c, h // r, r, w // r, r], dtype=np.int64))
    merged = b.const(f"{node.name}/merged_shape", np.array([0, c * r * r, h // r, w // r], dtype=np.int64))
    t = b.op("Reshape", [node.inputs[0], split], f"{node.name}/split")
    t = b.op("Transpose", [t], f"{node.name}/transposed", name=node.name, perm=[0, 1, 3, 5, 2, 4])
    b.op("Reshape", [t, merged], node.output, name=f"{node.name}/merge")


@EMIT.register("Concat")
def _concat(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    b.op("Concat", node.inputs, node.output, name=node.name, axis=1)


@EMIT.register("Add")
def _add(graph: IntegerGraph, node: Node, b: OnnxBuilder) -> None:
    """§5a: acc = (a − z_a)·m_a + (b − z_b)·m_b, in int64: Sub, Mul, Add on the int64 codes.

    Exact: with V_i = max|q_i − z_i| over input i's declared code range (at most 2^32), the
    exporter checks V_a·m_a + V_b·m_b ≤ 2^63 − 1, which bounds every intermediate: each difference
    (≤ V_i), each product (≤ V_i·m_i) and the sum. So no int64 Sub, Mul or Add wraps, and each
    computes the integer result exactly. (The declared accumulator width is the engine's overflow
    check, as for Conv2d; ONNX computes the same value and does not check it.) A zero point of 0
    skips the Sub, a multiplier of 1 the Mul.
    """
    m = graph.params[node.params["multiplier"]].numpy().astype(np.int64).reshape(-1).tolist()
    specs = [graph.tensors[i] for i in node.inputs]
    spans = [max(s.qmax - s.zero_point, s.zero_point - s.qmin) for s in specs]
    bound = sum(v * mi for v, mi in zip(spans, m))
    if bound > INT64_MAX:
        raise ConfigError(f"layer {node.name!r} (Add): (a − z_a)·m_a + (b − z_b)·m_b can reach {bound}, beyond "
                          f"int64 (inputs of {specs[0].bits} and {specs[1].bits} bits, multipliers {m}); no ONNX "
                          "integer operator can compute it exactly")
    terms = []
    for k, (name, spec, mi) in enumerate(zip(node.inputs, specs, m)):
        v = name
        if spec.zero_point != 0:
            v = b.op("Sub", [v, b.const(f"{node.name}/zero_point_{k}", np.array(spec.zero_point, dtype=np.int64))],
                     f"{node.name}/centred_{k}")
        if mi != 1:
            v = b.op("Mul", [v, b.const(f"{node.name}/multiplier_{k}", np.array(mi, dtype=np.int64))],
                     f"{node.name}/scaled_{k}")
        terms.append(v)
    b.op("Add", terms, node.output, name=node.name)


def channel_shape(values: np.ndarray, rank: int) -> np.ndarray:
    """One value per tensor → a scalar; one per channel → shape [1, C, 1, …] (channel axis 1)."""
    if values.size == 1:
        return values.reshape(())
    return values.reshape((1, -1) + (1,) * (rank - 2))
