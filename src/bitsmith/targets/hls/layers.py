"""The graph as DeepBurning-MixQ HLS layers: `HlsLayer`, the graph walk, SIMD/PE folding and the
exact mapping of bitsmith's Requant onto the source's requant (docs/hls.md).

The source folds BatchNorm into integers and requantizes with

    out = clip((acc·inc + bias + 2^(T−1)) >> T, 0, 2^obit − 1)            (T = L_SHIFT)

bitsmith's Requant (docs/arithmetic.md §4) is `clamp(z_out + ((acc'·m + 2^(s−1)) >> s), lo, hi)`
with acc' = B + Σ w·(x − z_in), per-channel (m, s). `fold_requant` maps one onto the other
exactly (proof in its docstring): the clip range becomes [lo, hi] (signed outputs allowed), the
input zero point moves into the bias, and a Conv/Linear without a Requant (the last layer's raw
accumulator) is inc = 1, bias = B', T = 0 with the clip switched off (CONV_n_RAW 1).

The graph may be any DAG (`bitsmith.integer.chain.layer_steps`): every layer names the tensors it
reads. Layer kinds (config.h macros):

  CONV_n    Conv2d / Linear (+ Requant), dense, grouped or depthwise (the source's depthwise conv is
            a CONV_n with one input channel per group); AvgPool2d + Requant and a lone Requant of
            codes are depthwise CONV_n whose weights are all 1 (bitsmith extensions, exact: the
            window sum Σ 1·(x − z_in) is the average pool's accumulator, a 1×1 window of one
            weight 1 is x − z_in)
  POOL_n    MaxPool2d
  REORG_n   Reorg (space to depth), CONCAT_n Concat, ADD_n Add + Requant (bitsmith extensions;
            the source wires its reorg/concat bypass by hand in its HLS top function)

Which ops become which layer is the `EMIT` table (bitsmith.integer.ops.Emitters): an op it lacks
is an AcceleratorError naming the back end, the layer and the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from bitsmith.errors import AcceleratorError, ConfigError
from bitsmith.integer.chain import ChainStep, layer_steps
from bitsmith.integer.graph import IntegerGraph, Node, TensorSpec
from bitsmith.integer.ops import Emitters, as_pads, as_pair

# The C++ reference computes acc·inc + bias + 2^(T−1) in int64_t; the export proves it fits.
INT64_MAX = (1 << 63) - 1

#: config.h macro prefix of each layer kind, in the order of the HLS_LAYERS X-macro's parameters.
KINDS = {"conv": "CONV", "pool": "POOL", "reorg": "REORG", "concat": "CONCAT", "add": "ADD"}


@dataclass
class HlsLayer:
    """One entry of config.h: a CONV_n, POOL_n, REORG_n, CONCAT_n or ADD_n (numbered per kind)."""

    kind: str                 # a key of KINDS
    index: int                # n of CONV_n / POOL_n / …
    name: str                 # the graph tensor this layer produces (compared with the engine)
    inputs: tuple[str, ...]   # the tensors it reads: the input codes or earlier layers' outputs
    ifm_ch: int
    ifm_row: int
    ifm_col: int
    ofm_ch: int
    ofm_row: int
    ofm_col: int
    in_bit: int
    in_signed: bool
    out_bit: int
    out_signed: bool
    k: int = 1                # conv, pool: kernel side
    s: int = 1                # conv, pool, reorg: stride
    # conv
    op: str = ""              # the graph op: Conv2d, Linear, AvgPool2d or Requant
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right
    groups: int = 1
    w_bit: int = 0
    simd: int = 1
    pe: int = 1
    raw: bool = False         # no requant: out = acc + bias, no clip (the graph output only)
    pad_val: int = 0          # code written into padded positions (the input zero point, see fold)
    weights: Optional[np.ndarray] = None   # int64 [och, K], terms in [kc, kr, ich/groups] order
    # conv and add: the folded requant
    l_shift: int = 0
    out_lo: int = 0
    out_hi: int = 0
    inc: list[int] = field(default_factory=list)
    bias: list[int] = field(default_factory=list)
    # add: input b's codes and the two multipliers
    b_bit: int = 0
    b_signed: bool = False
    m_a: int = 0
    m_b: int = 0
    # concat: channels of each input
    in_chs: tuple[int, ...] = ()

    @property
    def macro(self) -> str:
        return f"{KINDS[self.kind]}_{self.index}"

    @property
    def p(self) -> int:
        """The source's single padding P, the pad above the map (P_LEFT, P_BOTTOM, P_RIGHT: the others)."""
        return self.pads[0]

    @property
    def terms(self) -> int:
        """Weights per output channel: k·k·(ich/groups)."""
        return self.k * self.k * (self.ifm_ch // self.groups)

    @property
    def w_tiles(self) -> int:
        """Words per PE lane: och/PE rows of K/SIMD words."""
        return (self.ofm_ch // self.pe) * (self.terms // self.simd)

    @property
    def inc_bit(self) -> int:
        return signed_width(self.inc)

    @property
    def bias_bit(self) -> int:
        return signed_width(self.bias)

    @property
    def out_elements(self) -> int:
        return self.ofm_ch * self.ofm_row * self.ofm_col


# -- the requant mapping -------------------------------------------------------------------

def signed_width(values) -> int:
    """The fewest bits of a two's complement integer that hold every value (at least 1)."""
    width = 1
    for v in values:
        v = int(v)
        width = max(width, (v if v >= 0 else -v - 1).bit_length() + 1)
    return width


def fold_requant(bias: list[int], multiplier: list[int], shift: list[int], z_out: int) -> tuple[list[int], list[int], int]:
    """bitsmith's per-channel (B, m, s, z_out) → the source's per-channel (inc, bias) and one T.

    T = max_c s_c, inc_c = m_c·2^(T−s_c), bias_c = B_c·inc_c + z_out·2^T. For every integer acc:

        z_out + ((acc + B)·m + R_s) >> s  ==  (acc·inc + bias + R_T) >> T,   R_x = 2^(x−1) or 0 if x = 0

    Proof (>> s is floor division by 2^s). With d = T − s ≥ 0, multiplying numerator and
    denominator by 2^d leaves a floor quotient unchanged, so the left side is
    z_out + floor(((acc + B)·m·2^d + R_s·2^d) / 2^T). If s > 0, R_s·2^d = 2^(s−1+d) = R_T. If s = 0
    the left side has no rounding term, and adding R_T < 2^T to a multiple of 2^T, which
    (acc + B)·m·2^T is, does not change its floor. Finally z_out + floor(N/2^T) = floor((N +
    z_out·2^T)/2^T), which moves z_out into the bias. Python ints: exact at any size.
    """
    T = max(shift)
    inc = [m << (T - s) for m, s in zip(multiplier, shift)]
    folded = [b * i + (z_out << T) for b, i in zip(bias, inc)]
    return inc, folded, T


# -- graph → layers ---------------------------------------------------------------------------

#: The layer ops the format holds; QuantizeInput, Flatten and a Requant fused after an accumulating
#: op are the walk's own (bitsmith.integer.chain.STRUCTURAL_OPS). "Requant" here is a lone Requant
#: of codes (e.g. a Concat input moved onto the Concat's grid).
EMIT = Emitters("HLS export")
_KIND = {"Conv2d": "conv", "Linear": "conv", "AvgPool2d": "conv", "Requant": "conv", "MaxPool2d": "pool",
         "Reorg": "reorg", "Concat": "concat", "Add": "add"}


def _chw(spec: TensorSpec) -> tuple[int, int, int]:
    """A tensor as (channels, rows, cols): CHW maps as they are, feature vectors as C×1×1."""
    if len(spec.shape) == 3:
        return tuple(spec.shape)
    if len(spec.shape) == 1:
        return spec.shape[0], 1, 1
    raise AcceleratorError(f"HLS export: tensor {spec.name!r} has shape {list(spec.shape)}; layers read CHW maps "
                           "or feature vectors")


def _square(node: Node, what: str, pair: list[int]) -> int:
    if pair[0] != pair[1]:
        raise AcceleratorError(f"HLS export: layer {node.name!r} has {what} {pair}; the DeepBurning-MixQ "
                               f"format has one value for both axes (CONV_n_K / _S, POOL_n_K / _S)")
    return pair[0]


@EMIT.register("Conv2d", "Linear")
def _emit_conv(graph: IntegerGraph, step: ChainStep, index: int) -> HlsLayer:
    node = step.node
    w = graph.weight_codes(node).long().numpy()
    if node.op == "Conv2d":
        a = node.attrs
        if as_pair(a["dilation"]) != [1, 1]:
            raise AcceleratorError(f"HLS export: layer {node.name!r} is dilated (dilation {a['dilation']}); "
                                   "the format holds undilated convolutions")
        k = _square(node, "kernel", [w.shape[2], w.shape[3]])
        s = _square(node, "stride", as_pair(a["stride"]))
        pads, groups = as_pads(a["padding"]), a["groups"]
    else:  # a Linear is a 1×1 convolution over a 1×1 map (features = CHW flatten order)
        w = w.reshape(w.shape[0], w.shape[1], 1, 1)
        k, s, pads, groups = 1, 1, (0, 0, 0, 0), 1
    b = graph.params[node.params["bias"]].long().numpy() if "bias" in node.params else None
    return _conv_layer(graph, step, index, w, k, s, pads, groups, node.attrs["weight_bits"], b, step.requant)


@EMIT.register("AvgPool2d")
def _emit_avgpool(graph: IntegerGraph, step: ChainStep, index: int) -> HlsLayer:
    """The window sum Σ (x − z_in) is a depthwise convolution whose weights are all 1."""
    node = step.node
    k = _square(node, "kernel", as_pair(node.attrs["kernel"]))
    s = _square(node, "stride", as_pair(node.attrs["stride"]))
    ch = _chw(graph.tensors[node.inputs[0]])[0]
    ones = np.ones((ch, 1, k, k), dtype=np.int64)
    return _conv_layer(graph, step, index, ones, k, s, (0, 0, 0, 0), ch, 2, None, step.requant)


@EMIT.register("Requant")
def _emit_requant(graph: IntegerGraph, step: ChainStep, index: int) -> HlsLayer:
    """A lone Requant of codes: x − z_in is a 1×1 depthwise convolution with weight 1."""
    node = step.node
    ch = _chw(graph.tensors[node.inputs[0]])[0]
    ones = np.ones((ch, 1, 1, 1), dtype=np.int64)
    return _conv_layer(graph, step, index, ones, 1, 1, (0, 0, 0, 0), ch, 2, None, node)


def _conv_layer(graph: IntegerGraph, step: ChainStep, index: int, w: np.ndarray, k: int, s: int,
                pads: tuple[int, int, int, int], groups: int, w_bit: int, b: Optional[np.ndarray],
                requant: Optional[Node]) -> HlsLayer:
    """A CONV_n from OIHW weight codes w [och, ich/groups, k, k] and the (optional) Requant after it."""
    node = step.node
    x = graph.tensors[node.inputs[0]]
    out = graph.tensors[requant.output] if requant is not None else graph.tensors[node.output]
    (ich, irow, icol), (och, orow, ocol) = _chw(x), _chw(out)
    weights = np.ascontiguousarray(w.transpose(0, 3, 2, 1).reshape(och, -1))  # [och, kc, kr, ich/groups]
    b = np.zeros(och, dtype=np.int64) if b is None else b
    # Fold the input zero point: Σ w·(x − z_in) = Σ w·x − z_in·Σ w, with padded positions holding
    # the code z_in (so they still contribute 0, as docs/arithmetic.md §3 requires).
    z_in = x.zero_point
    bias_acc = [int(v) for v in b - z_in * weights.sum(axis=1)]
    layer = HlsLayer("conv", index, out.name, step.inputs, ich, irow, icol, och, orow, ocol, x.bits, x.signed,
                     out.bits, out.signed, k=k, s=s, op=node.op, pads=tuple(int(p) for p in pads), groups=groups,
                     w_bit=w_bit, pad_val=z_in, weights=weights)
    if requant is None:
        layer.raw, layer.inc, layer.bias, layer.l_shift = True, [1] * och, bias_acc, 0
        layer.out_lo, layer.out_hi = out.qmin, out.qmax
    else:
        _requant_into(graph, requant, layer, bias_acc)
    acc_bound = [int(v) for v in np.abs(weights).sum(axis=1) * max(abs(x.qmin), abs(x.qmax))]
    _check_int64(layer, acc_bound)
    return layer


def _requant_into(graph: IntegerGraph, requant: Node, layer: HlsLayer, bias_acc: list[int]) -> None:
    """Fold the Requant (per tensor or per channel) and the accumulator bias into inc, bias, T."""
    och = layer.ofm_ch
    m = [int(v) for v in graph.params[requant.params["multiplier"]].tolist()]
    sh = [int(v) for v in graph.params[requant.params["shift"]].tolist()]
    if len(m) == 1:
        m, sh = m * och, sh * och
    layer.inc, layer.bias, layer.l_shift = fold_requant(bias_acc, m, sh, graph.tensors[requant.output].zero_point)
    layer.out_lo, layer.out_hi = requant.attrs["clamp_min"], requant.attrs["clamp_max"]


def _check_int64(layer: HlsLayer, acc_bound: list[int]) -> None:
    """Prove |acc·inc + bias + 2^(T−1)| < 2^63 for every input (acc_bound[c] ≥ |acc| of channel c),
    so the reference's int64 arithmetic is exact."""
    rounding = (1 << (layer.l_shift - 1)) if layer.l_shift else 0
    for c in range(layer.ofm_ch):
        bound = acc_bound[c] * abs(layer.inc[c]) + abs(layer.bias[c]) + rounding
        if bound > INT64_MAX:
            raise AcceleratorError(
                f"HLS export: layer {layer.name!r} ({layer.macro}) channel {c}: |acc·inc + bias + 2^(T-1)| can "
                f"reach {bound} (acc ≤ {acc_bound[c]}, inc {layer.inc[c]}, T {layer.l_shift}), beyond the 64-bit "
                f"limit {INT64_MAX}; the per-channel shifts differ too much for one layer shift T")


@EMIT.register("MaxPool2d")
def _emit_pool(graph: IntegerGraph, step: ChainStep, index: int) -> HlsLayer:
    node = step.node
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    k = _square(node, "kernel", as_pair(node.attrs["kernel"]))
    s = _square(node, "stride", as_pair(node.attrs["stride"]))
    (ch, irow, icol), (_, orow, ocol) = _chw(x), _chw(y)
    return HlsLayer("pool", index, y.name, step.inputs, ch, irow, icol, ch, orow, ocol, x.bits, x.signed,
                    y.bits, y.signed, k=k, s=s)


@EMIT.register("Reorg")
def _emit_reorg(graph: IntegerGraph, step: ChainStep, index: int) -> HlsLayer:
    node = step.node
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    (ich, irow, icol), (och, orow, ocol) = _chw(x), _chw(y)
    return HlsLayer("reorg", index, y.name, step.inputs, ich, irow, icol, och, orow, ocol, x.bits, x.signed,
                    y.bits, y.signed, k=node.attrs["stride"], s=node.attrs["stride"])


@EMIT.register("Concat")
def _emit_concat(graph: IntegerGraph, step: ChainStep, index: int) -> HlsLayer:
    node = step.node
    y = graph.tensors[node.output]
    och, orow, ocol = _chw(y)
    chs = tuple(_chw(graph.tensors[name])[0] for name in node.inputs)
    return HlsLayer("concat", index, y.name, step.inputs, och, orow, ocol, och, orow, ocol, y.bits, y.signed,
                    y.bits, y.signed, in_chs=chs)


@EMIT.register("Add")
def _emit_add(graph: IntegerGraph, step: ChainStep, index: int) -> HlsLayer:
    """acc = (a − z_a)·m_a + (b − z_b)·m_b = a·m_a + b·m_b − (z_a·m_a + z_b·m_b): the raw codes are
    summed and the constant joins the bias, as a conv's input zero point does."""
    node, requant = step.node, step.requant
    a, b = (graph.tensors[name] for name in node.inputs)
    out = graph.tensors[requant.output]
    ch, rows, cols = _chw(out)
    m_a, m_b = (int(v) for v in graph.params[node.params["multiplier"]].tolist())
    layer = HlsLayer("add", index, out.name, step.inputs, ch, rows, cols, ch, rows, cols, a.bits, a.signed,
                     out.bits, out.signed, b_bit=b.bits, b_signed=b.signed, m_a=m_a, m_b=m_b)
    _requant_into(graph, requant, layer, [-(a.zero_point * m_a + b.zero_point * m_b)] * ch)
    acc = max(abs(a.qmin), abs(a.qmax)) * m_a + max(abs(b.qmin), abs(b.qmax)) * m_b
    _check_int64(layer, [acc] * ch)
    return layer


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _folding(layer: HlsLayer, simd_cap: int, pe_cap: int, forced: dict) -> tuple[int, int]:
    """SIMD / PE of a conv: the forced values (checked), else the largest divisors within the caps."""
    simd = forced.get("simd", _largest_divisor(layer.terms, simd_cap))
    pe = forced.get("pe", _largest_divisor(layer.ofm_ch, pe_cap))
    where = f"HLS export: layer {layer.name!r} ({layer.macro})"
    for key, value in (("simd", simd), ("pe", pe)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    if layer.terms % simd:
        raise ConfigError(f"{where}: SIMD {simd} breaks the rule (k*k*ich/groups) % simd == 0 "
                          f"(k*k*ich/groups = {layer.k}*{layer.k}*{layer.ifm_ch // layer.groups} = {layer.terms})")
    if layer.ofm_ch % pe:
        raise ConfigError(f"{where}: PE {pe} breaks the rule och % pe == 0 (och = {layer.ofm_ch})")
    return simd, pe


def hls_layers(graph: IntegerGraph, simd: int = 8, pe: int = 8, layers: Optional[dict] = None) -> list[HlsLayer]:
    """The graph as HLS layers in execution order, with weights, folded requant and SIMD/PE chosen.

    `simd` / `pe` cap the per-layer defaults (largest divisors of k·k·ich/groups / och within the
    cap); `layers` forces values per conv layer, keyed by the layer's output tensor or its node name
    (the Conv2d / Linear / AvgPool2d / lone Requant): {"q_conv1": {"simd": 5, "pe": 3}}. Anything the
    format cannot express is an AcceleratorError naming the layer.
    """
    for key, value in (("simd", simd), ("pe", pe)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"HLS export: {key} cap must be a positive integer, got {value!r}")
    forced = dict(layers or {})
    for key, value in forced.items():
        if not isinstance(value, dict) or set(value) - {"simd", "pe"}:
            raise ConfigError(f"HLS export: per-layer setting for {key!r} must be a dict with keys simd and/or pe, "
                              f"got {value!r}")
    _, steps = layer_steps(graph, EMIT)
    result: list[HlsLayer] = []
    counters = dict.fromkeys(KINDS, 0)
    for step in steps:
        kind = _KIND[step.node.op]
        layer = EMIT.lookup(step.node)(graph, step, counters[kind])
        counters[kind] += 1
        if layer.kind == "conv":
            name_forced = {**forced.pop(step.node.name, {}), **forced.pop(layer.name, {})}
            layer.simd, layer.pe = _folding(layer, simd, pe, name_forced)
        result.append(layer)
    if forced:
        names = [l.name for l in result if l.kind == "conv"]
        raise ConfigError(f"HLS export: per-layer settings for unknown layer(s) {sorted(forced)}; "
                          f"conv layers: {', '.join(names)}")
    return result


def graph_io(graph: IntegerGraph) -> tuple[str, int, str]:
    """(the input codes tensor, its codes per image, the layer output that is the graph output:
    a Flatten of a layer's output is that layer's output, the same bytes)."""
    codes = graph.nodes[0].output
    by_output = {n.output: n for n in graph.nodes}
    out = graph.outputs[0]
    while by_output[out].op == "Flatten":
        out = by_output[out].inputs[0]
    return codes, int(np.prod(graph.tensors[codes].shape)), out
