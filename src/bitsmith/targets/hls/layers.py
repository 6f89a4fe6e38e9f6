"""The graph as DeepBurning-MixQ HLS layers: `HlsLayer`, the graph walk, SIMD/PE folding and the
exact mapping of bitsmith's Requant onto the source's requant (docs/hls.md).

The source folds BatchNorm into integers and requantizes with

    out = clip((acc·inc + bias + 2^(T−1)) >> T, 0, 2^obit − 1)            (T = L_SHIFT)

bitsmith's Requant (docs/arithmetic.md §4) is `clamp(z_out + ((acc'·m + 2^(s−1)) >> s), lo, hi)`
with acc' = B + Σ w·(x − z_in), per-channel (m, s). `fold_requant` maps one onto the other
exactly (proof in its docstring): the clip range becomes [lo, hi] (signed outputs allowed), the
input zero point moves into the bias, and a Conv/Linear without a Requant (the last layer's raw
accumulator) is inc = 1, bias = B', T = 0 with the clip switched off (CONV_n_RAW 1).

Which ops become which layer is the `EMIT` table (bitsmith.integer.ops.Emitters): an op it lacks
is an AcceleratorError naming the back end, the layer and the op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from bitsmith.integer.chain import ChainStep, layer_chain
from bitsmith.errors import AcceleratorError, ConfigError
from bitsmith.integer.graph import IntegerGraph, Node
from bitsmith.integer.ops import as_pair
from bitsmith.integer.ops import Emitters

# The C++ reference computes acc·inc + bias + 2^(T−1) in int64_t; the export proves it fits.
INT64_MAX = (1 << 63) - 1


@dataclass
class HlsLayer:
    """One entry of config.h: a CONV_n (Conv2d/Linear [+ Requant]) or a POOL_n (MaxPool2d)."""

    kind: str                 # "conv" or "pool"
    index: int                # n of CONV_n / POOL_n (convs and pools are numbered separately)
    name: str                 # the graph tensor this layer produces (compared with the engine)
    k: int
    s: int
    p: int
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
    # conv only
    w_bit: int = 0
    simd: int = 1
    pe: int = 1
    l_shift: int = 0
    raw: bool = False         # no requant: out = acc + bias, no clip (last layer only)
    pad_val: int = 0          # code written into padded positions (the input zero point, see fold)
    out_lo: int = 0
    out_hi: int = 0
    weights: Optional[np.ndarray] = None   # int64 [och, K], terms in [kc, kr, ich] order
    inc: list[int] = field(default_factory=list)
    bias: list[int] = field(default_factory=list)

    @property
    def macro(self) -> str:
        return f"{'CONV' if self.kind == 'conv' else 'POOL'}_{self.index}"

    @property
    def terms(self) -> int:
        return self.k * self.k * self.ifm_ch

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

#: The layer ops the format holds (CONV_n, POOL_n); QuantizeInput, Requant and Flatten are the
#: chain walk's (bitsmith.integer.chain.STRUCTURAL_OPS).
EMIT = Emitters("HLS export")
_KIND = {"Conv2d": "conv", "Linear": "conv", "MaxPool2d": "pool"}


@EMIT.register("Conv2d", "Linear")
def _emit_conv(graph: IntegerGraph, step: ChainStep, index: int) -> "HlsLayer":
    return _conv_layer(graph, step.node, step.requant, index)


@EMIT.register("MaxPool2d")
def _emit_pool(graph: IntegerGraph, step: ChainStep, index: int) -> "HlsLayer":
    return _pool_layer(graph, step.node, index)


def _square(node: Node, what: str, pair: list[int]) -> int:
    if pair[0] != pair[1]:
        raise AcceleratorError(f"HLS export: layer {node.name!r} has {what} {pair}; the DeepBurning-MixQ "
                               f"format has one value for both axes (CONV_n_K / _S / _P)")
    return pair[0]


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
        raise ConfigError(f"{where}: SIMD {simd} breaks the rule (k*k*ich) % simd == 0 "
                          f"(k*k*ich = {layer.k}*{layer.k}*{layer.ifm_ch} = {layer.terms})")
    if layer.ofm_ch % pe:
        raise ConfigError(f"{where}: PE {pe} breaks the rule och % pe == 0 (och = {layer.ofm_ch})")
    return simd, pe


def hls_layers(graph: IntegerGraph, simd: int = 8, pe: int = 8, layers: Optional[dict] = None) -> list[HlsLayer]:
    """The graph as a chain of HLS layers, with weights, folded requant and SIMD/PE chosen.

    `simd` / `pe` cap the per-layer defaults (largest divisors of k·k·ich / och within the cap);
    `layers` forces values per layer, keyed by the layer's output tensor or its Conv/Linear node
    name: {"q_conv1": {"simd": 5, "pe": 3}}. Anything the format cannot express is an
    AcceleratorError naming the layer.
    """
    for key, value in (("simd", simd), ("pe", pe)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"HLS export: {key} cap must be a positive integer, got {value!r}")
    forced = dict(layers or {})
    for key, value in forced.items():
        if not isinstance(value, dict) or set(value) - {"simd", "pe"}:
            raise ConfigError(f"HLS export: per-layer setting for {key!r} must be a dict with keys simd and/or pe, "
                              f"got {value!r}")
    _, steps = layer_chain(graph, EMIT)
    result: list[HlsLayer] = []
    counters = {"conv": 0, "pool": 0}
    for step in steps:
        layer = EMIT.lookup(step.node)(graph, step, counters[_KIND[step.node.op]])
        counters[layer.kind] += 1
        if layer.kind == "conv":
            node = step.node
            name_forced = {**forced.pop(node.name, {}), **forced.pop(layer.name, {})}
            layer.simd, layer.pe = _folding(layer, simd, pe, name_forced)
        result.append(layer)
    if forced:
        names = [l.name for l in result if l.kind == "conv"]
        raise ConfigError(f"HLS export: per-layer settings for unknown layer(s) {sorted(forced)}; "
                          f"conv layers: {', '.join(names)}")
    return result


def _conv_layer(graph: IntegerGraph, node: Node, requant: Optional[Node], index: int) -> HlsLayer:
    x, acc = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    w = graph.weight_codes(node).long().numpy()
    if node.op == "Conv2d":
        a = node.attrs
        if a["groups"] != 1 or as_pair(a["dilation"]) != [1, 1]:
            raise AcceleratorError(f"HLS export: layer {node.name!r} is grouped or dilated (groups {a['groups']}, "
                                   f"dilation {a['dilation']}); the format holds plain convolutions")
        k = _square(node, "kernel", [w.shape[2], w.shape[3]])
        s = _square(node, "stride", as_pair(a["stride"]))
        p = _square(node, "padding", as_pair(a["padding"]))
        (ich, irow, icol), (och, orow, ocol) = x.shape, acc.shape
    else:  # a Linear is a 1×1 convolution over a 1×1 map (features = CHW flatten order)
        w = w.reshape(w.shape[0], w.shape[1], 1, 1)
        k, s, p = 1, 1, 0
        (ich,), (och,) = x.shape, acc.shape
        irow = icol = orow = ocol = 1
    weights = np.ascontiguousarray(w.transpose(0, 3, 2, 1).reshape(och, -1))  # [och, kc, kr, ich]
    b = graph.params[node.params["bias"]].long().numpy() if "bias" in node.params else np.zeros(och, dtype=np.int64)
    # Fold the input zero point: Σ w·(x − z_in) = Σ w·x − z_in·Σ w, with padded positions holding
    # the code z_in (so they still contribute 0, as docs/arithmetic.md §3 requires).
    z_in = x.zero_point
    bias_acc = [int(v) for v in b - z_in * weights.sum(axis=1)]
    out = graph.tensors[requant.output] if requant else acc
    layer = HlsLayer("conv", index, out.name, k, s, p, ich, irow, icol, och, orow, ocol, x.bits, x.signed,
                     out.bits, out.signed, w_bit=node.attrs["weight_bits"], pad_val=z_in, weights=weights)
    if requant is None:
        layer.raw, layer.inc, layer.bias, layer.l_shift = True, [1] * och, bias_acc, 0
        layer.out_lo, layer.out_hi = out.qmin, out.qmax
    else:
        m = [int(v) for v in graph.params[requant.params["multiplier"]].tolist()]
        sh = [int(v) for v in graph.params[requant.params["shift"]].tolist()]
        if len(m) == 1:
            m, sh = m * och, sh * och
        layer.inc, layer.bias, layer.l_shift = fold_requant(bias_acc, m, sh, out.zero_point)
        layer.out_lo, layer.out_hi = requant.attrs["clamp_min"], requant.attrs["clamp_max"]
    _check_int64(layer, x.qmin, x.qmax)
    return layer


def _check_int64(layer: HlsLayer, xmin: int, xmax: int) -> None:
    """Prove |acc·inc + bias + 2^(T−1)| < 2^63 for every input, so int64 arithmetic is exact."""
    x_abs = max(abs(xmin), abs(xmax))
    rounding = (1 << (layer.l_shift - 1)) if layer.l_shift else 0
    for c in range(layer.ofm_ch):
        acc_bound = int(np.abs(layer.weights[c]).sum()) * x_abs
        bound = acc_bound * abs(layer.inc[c]) + abs(layer.bias[c]) + rounding
        if bound > INT64_MAX:
            raise AcceleratorError(
                f"HLS export: layer {layer.name!r} ({layer.macro}) channel {c}: |acc·inc + bias + 2^(T-1)| can "
                f"reach {bound} (acc ≤ {acc_bound}, inc {layer.inc[c]}, T {layer.l_shift}), beyond the 64-bit "
                f"limit {INT64_MAX}; the per-channel shifts differ too much for one layer shift T")


def _pool_layer(graph: IntegerGraph, node: Node, index: int) -> HlsLayer:
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    k = _square(node, "kernel", as_pair(node.attrs["kernel"]))
    s = _square(node, "stride", as_pair(node.attrs["stride"]))
    (ch, irow, icol), (_, orow, ocol) = x.shape, y.shape
    return HlsLayer("pool", index, y.name, k, s, 0, ch, irow, icol, ch, orow, ocol,
                    x.bits, x.signed, y.bits, y.signed)
