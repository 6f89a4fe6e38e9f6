"""HLS export in the DeepBurning-MixQ format: config.h, weights.hpp, config_simd_pe.txt.

docs/hls.md is the contract. The source folds BatchNorm into integers and requantizes with

    out = clip((acc·inc + bias + 2^(T−1)) >> T, 0, 2^obit − 1)            (T = L_SHIFT)

bitsmith's Requant (docs/arithmetic.md §4) is `clamp(z_out + ((acc'·m + 2^(s−1)) >> s), lo, hi)`
with acc' = B + Σ w·(x − z_in), per-channel (m, s). `fold_requant` maps one onto the other
exactly (proof in its docstring): the clip range becomes [lo, hi] (signed outputs allowed), the
input zero point moves into the bias, and a Conv/Linear without a Requant (the last layer's raw
accumulator) is inc = 1, bias = B', T = 0 with the clip switched off (CONV_n_RAW 1).

Weights: OIHW codes transposed to [och, kc, kr, ich] and flattened per output channel to K =
k·k·ich terms; channel o lives in PE lane o % PE, row o / PE; each lane holds och/PE · K/SIMD
words of SIMD W_BIT-bit two's complement fields, element 0 in the low bits, written as the hex
string literals Vivado's `ap_uint` accepts. `read_hls` parses the three files back to integers
and `run_hls_layers` computes every layer from them alone (numpy, int64); the C++ program
`hls_reference.cpp` (with `hls_shim.h`, no vendor headers) does the same from the headers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from bitsmith.errors import AcceleratorError, ConfigError, DataError
from bitsmith.integer.graph import IntegerGraph, Node, as_pair
from bitsmith.storage import write_bytes_atomic

from .chain import layer_chain

CONFIG_FILE = "config.h"
WEIGHTS_FILE = "weights.hpp"
SIMD_PE_FILE = "config_simd_pe.txt"
REFERENCE_SOURCES = ("hls_reference.cpp", "hls_shim.h")
REFERENCE_BINARY = "hls_reference"
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


def hls_requant(acc: np.ndarray, inc: np.ndarray, bias: np.ndarray, T: int, lo: int, hi: int,
                clip: bool = True) -> np.ndarray:
    """The source's requant `clip((acc·inc + bias + 2^(T−1)) >> T, lo, hi)` (floor shift).

    `inc` / `bias` broadcast against `acc` (one per channel along dimension 1). Works on int64
    arrays (the exporter proves no overflow) and on object arrays of Python ints (exact always).
    """
    rounding = (1 << (T - 1)) if T > 0 else 0
    y = (acc * inc + bias + rounding) >> T
    return np.minimum(np.maximum(y, lo), hi) if clip else y


# -- graph → layers ---------------------------------------------------------------------------

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
    _, steps = layer_chain(graph, ("Conv2d", "Linear", "MaxPool2d"), who="HLS export: ")
    result: list[HlsLayer] = []
    counters = {"conv": 0, "pool": 0}
    for step in steps:
        node = step.node
        if node.op == "MaxPool2d":
            result.append(_pool_layer(graph, node, counters["pool"]))
            counters["pool"] += 1
            continue
        layer = _conv_layer(graph, node, step.requant, counters["conv"])
        counters["conv"] += 1
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


# -- packing ----------------------------------------------------------------------------------

def pack_lanes(layer: HlsLayer) -> list[list[int]]:
    """weights [och, K] → per PE lane, och/PE · K/SIMD words of SIMD fields, element 0 lowest."""
    mask = (1 << layer.w_bit) - 1
    tiles = layer.terms // layer.simd
    lanes = []
    for lane in range(layer.pe):
        words = []
        for o in range(lane, layer.ofm_ch, layer.pe):  # row o // PE of this lane
            fields = (layer.weights[o].reshape(tiles, layer.simd) & mask).tolist()
            for chunk in fields:
                word = 0
                for v in reversed(chunk):
                    word = (word << layer.w_bit) | v
                words.append(word)
        lanes.append(words)
    return lanes


def unpack_lanes(lanes: list[list[int]], och: int, terms: int, simd: int, w_bit: int) -> np.ndarray:
    """The inverse of pack_lanes: int64 [och, K] signed codes."""
    pe, tiles = len(lanes), terms // simd
    mask, sign = (1 << w_bit) - 1, 1 << (w_bit - 1)
    out = np.zeros((och, terms), dtype=np.int64)
    for o in range(och):
        words = lanes[o % pe][(o // pe) * tiles:(o // pe + 1) * tiles]
        for j, word in enumerate(words):
            for s in range(simd):
                v = (word >> (s * w_bit)) & mask
                out[o, j * simd + s] = v - (1 << w_bit) if v & sign else v
    return out


# -- writing ----------------------------------------------------------------------------------

_CONV_FIELDS = ("K", "S", "P", "IFM_CH", "IFM_ROW", "IFM_COL", "OFM_CH", "OFM_ROW", "OFM_COL", "IN_BIT",
                "IN_SIGNED", "OUT_BIT", "OUT_SIGNED", "W_BIT", "INC_BIT", "BIAS_BIT", "SIMD", "PE", "W_TILES",
                "L_SHIFT", "RAW", "PAD_VAL", "OUT_LO", "OUT_HI")
_POOL_FIELDS = ("K", "S", "IFM_CH", "IFM_ROW", "IFM_COL", "OFM_CH", "OFM_ROW", "OFM_COL", "IN_BIT", "IN_SIGNED")


def _field(layer: HlsLayer, key: str) -> int:
    value = {"K": layer.k, "S": layer.s, "P": layer.p, "W_TILES": layer.w_tiles if layer.kind == "conv" else 0,
             "INC_BIT": layer.inc_bit, "BIAS_BIT": layer.bias_bit}.get(key)
    return int(getattr(layer, key.lower()) if value is None else value)


def _c_int(v: int) -> str:
    """An integer literal for C++: long long beyond 32 bits (fits: the export checked int64)."""
    return f"{v}LL" if not -(1 << 31) <= v < (1 << 31) else str(v)


def render_config(layers: list[HlsLayer], source: str = "") -> str:
    lines = ["// DeepBurning-MixQ style layer configuration, written by bitsmith (docs/hls.md).",
             f"// source graph: {source}" if source else "// source graph: (in memory)",
             "// Activations are CHW code arrays; conv terms are ordered [kc][kr][ich] (weights.hpp).",
             "// Requant: y = (acc*inc + bias + 2^(L_SHIFT-1)) >> L_SHIFT, then clip to [OUT_LO, OUT_HI]",
             "// unless RAW (no requant: y = acc + bias). Padded positions hold the code PAD_VAL.",
             "#ifndef BITSMITH_HLS_CONFIG_H", "#define BITSMITH_HLS_CONFIG_H", ""]
    for layer in layers:
        lines.append(f"// {layer.macro.lower()}: {layer.name}")
        lines.append(f'#define {layer.macro}_NAME "{layer.name}"')
        for key in _CONV_FIELDS if layer.kind == "conv" else _POOL_FIELDS:
            value = _field(layer, key)
            lines.append(f"#define {layer.macro}_{key} {_c_int(value) if key.startswith('OUT_') or key == 'PAD_VAL' else value}")
        lines.append("")
    first = layers[0]
    lines += [f"#define HLS_NUM_LAYERS {len(layers)}",
              f"#define HLS_IN_SIZE {first.ifm_ch * first.ifm_row * first.ifm_col}",
              "// Layer order: X-macro, expanded by the program with its own CONV(n) / POOL(n).",
              "#define HLS_LAYERS(CONV, POOL) \\"]
    lines += [f"    {'CONV' if l.kind == 'conv' else 'POOL'}({l.index}) \\" for l in layers]
    lines += ["", "#endif", ""]
    return "\n".join(lines)


def render_weights(layers: list[HlsLayer]) -> str:
    out = ["// DeepBurning-MixQ style weights, written by bitsmith (docs/hls.md).",
           "// conv_n_w[PE][W_TILES]: SIMD fields of W_BIT bits per word, element 0 in the low bits;",
           "// channel o is lane o % PE, words (o / PE)*K/SIMD ... ; terms [kc][kr][ich].",
           "// Include ap_int.h (Vivado) or hls_shim.h (bitsmith's stand-in) before this file.",
           "#ifndef BITSMITH_HLS_WEIGHTS_HPP", "#define BITSMITH_HLS_WEIGHTS_HPP", ""]
    for layer in layers:
        if layer.kind != "conv":
            continue
        n, bits = layer.index, layer.w_bit * layer.simd
        digits = -(-bits // 4)
        out.append(f"// {layer.macro}: {layer.name}")
        out.append(f"const ap_uint<{bits}> conv_{n}_w[{layer.pe}][{layer.w_tiles}] = {{")
        for words in pack_lanes(layer):
            out.append("{" + ",".join(f'"0x{w:0{digits}x}"' for w in words) + "},")
        out.append("};")
        rows = layer.ofm_ch // layer.pe
        for arr, values, width in (("inc", layer.inc, layer.inc_bit), ("bias", layer.bias, layer.bias_bit)):
            out.append(f"const ap_int<{width}> conv_{n}_{arr}[{layer.pe}][{rows}] = {{")
            for lane in range(layer.pe):
                out.append("{" + ",".join(_c_int(values[r * layer.pe + lane]) for r in range(rows)) + "},")
            out.append("};")
        out.append("")
    out += ["#endif", ""]
    return "\n".join(out)


def render_simd_pe(layers: list[HlsLayer]) -> str:
    return "simd pe\n" + "".join(f"{l.simd} {l.pe}\n" for l in layers if l.kind == "conv")


def export_hls(graph: IntegerGraph, out_dir: str | os.PathLike, simd: int = 8, pe: int = 8,
               layers: Optional[dict] = None, source: str = "") -> list[HlsLayer]:
    """Write config.h, weights.hpp, config_simd_pe.txt and the C++ reference into `out_dir`."""
    hls = hls_layers(graph, simd, pe, layers)
    out = Path(out_dir)
    write_bytes_atomic(out / WEIGHTS_FILE, render_weights(hls).encode())
    write_bytes_atomic(out / SIMD_PE_FILE, render_simd_pe(hls).encode())
    write_bytes_atomic(out / CONFIG_FILE, render_config(hls, source).encode())
    here = Path(__file__).parent
    for name in REFERENCE_SOURCES:  # the folder compiles on its own: g++ -std=c++17 hls_reference.cpp
        write_bytes_atomic(out / name, (here / name).read_bytes())
    return hls


# -- reading ----------------------------------------------------------------------------------

_DEFINE = re.compile(r'^\s*#define\s+(\w+)\s+("[^"]*"|-?\d+)(?:LL)?\s*$', re.M)
_ARRAY = re.compile(r"const\s+ap_(u?int)<(\d+)>\s+(\w+)\[(\d+)\]\[(\d+)\]\s*=\s*\{(.*?)\};", re.S)


def _read(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path} not found; write it with `bitsmith hw hls GRAPH --out {path.parent}`")
    return path.read_text()


def read_hls(out_dir: str | os.PathLike) -> list[HlsLayer]:
    """Read config.h, weights.hpp and config_simd_pe.txt back into integer layers (checked)."""
    out = Path(out_dir)
    config = _read(out / CONFIG_FILE)
    defines = {k: (v[1:-1] if v.startswith('"') else int(v)) for k, v in _DEFINE.findall(config)}
    order = re.search(r"#define HLS_LAYERS\(CONV, POOL\)((?:[^\n]*\\\n)+)", config)
    if order is None:
        raise DataError(f"{out / CONFIG_FILE}: no HLS_LAYERS(CONV, POOL) list")
    arrays = {}
    for kind, bits, name, d0, d1, body in _ARRAY.findall(_read(out / WEIGHTS_FILE)):
        tokens = re.findall(r'"0x([0-9a-fA-F]+)"|(-?\d+)(?:LL)?', body)
        values = [int(h, 16) if h else int(d) for h, d in tokens]
        if len(values) != int(d0) * int(d1):
            raise DataError(f"{out / WEIGHTS_FILE}: {name} holds {len(values)} values, declared [{d0}][{d1}]")
        if any(v.bit_length() > int(bits) for v in values if kind == "uint") or \
                any(signed_width([v]) > int(bits) for v in values if kind == "int"):
            raise DataError(f"{out / WEIGHTS_FILE}: {name} has a value wider than its {bits} bits")
        arrays[name] = (int(bits), [values[r * int(d1):(r + 1) * int(d1)] for r in range(int(d0))])
    simd_pe = _read(out / SIMD_PE_FILE).split("\n")
    if not simd_pe or simd_pe[0].split() != ["simd", "pe"]:
        raise DataError(f"{out / SIMD_PE_FILE}: the first line must be 'simd pe'")
    rows = [tuple(int(v) for v in ln.split()) for ln in simd_pe[1:] if ln.strip()]
    layers = []
    for kind, n in re.findall(r"(CONV|POOL)\((\d+)\)", order.group(1)):
        layers.append(_parse_layer(out, defines, arrays, kind, int(n)))
    convs = [l for l in layers if l.kind == "conv"]
    if [(l.simd, l.pe) for l in convs] != rows:
        raise DataError(f"{out / SIMD_PE_FILE}: rows {rows} differ from config.h SIMD/PE "
                        f"{[(l.simd, l.pe) for l in convs]}")
    return layers


def _parse_layer(out: Path, d: dict, arrays: dict, kind: str, n: int) -> HlsLayer:
    m = f"{kind}_{n}"

    def get(key: str):
        if f"{m}_{key}" not in d:
            raise DataError(f"{out / CONFIG_FILE}: #define {m}_{key} missing")
        return d[f"{m}_{key}"]

    if kind == "POOL":
        return HlsLayer("pool", n, get("NAME"), get("K"), get("S"), 0, get("IFM_CH"), get("IFM_ROW"),
                        get("IFM_COL"), get("OFM_CH"), get("OFM_ROW"), get("OFM_COL"), get("IN_BIT"),
                        bool(get("IN_SIGNED")), get("IN_BIT"), bool(get("IN_SIGNED")))
    layer = HlsLayer("conv", n, get("NAME"), get("K"), get("S"), get("P"), get("IFM_CH"), get("IFM_ROW"),
                     get("IFM_COL"), get("OFM_CH"), get("OFM_ROW"), get("OFM_COL"), get("IN_BIT"),
                     bool(get("IN_SIGNED")), get("OUT_BIT"), bool(get("OUT_SIGNED")), w_bit=get("W_BIT"),
                     simd=get("SIMD"), pe=get("PE"), l_shift=get("L_SHIFT"), raw=bool(get("RAW")),
                     pad_val=get("PAD_VAL"), out_lo=get("OUT_LO"), out_hi=get("OUT_HI"))
    where = f"{out / WEIGHTS_FILE}: conv_{n}"
    names = (f"conv_{n}_w", f"conv_{n}_inc", f"conv_{n}_bias")
    if any(a not in arrays for a in names):
        raise DataError(f"{where}: arrays {', '.join(names)} expected")
    (wbits, lanes), (ibits, inc), (bbits, bias) = (arrays[a] for a in names)
    rows = layer.ofm_ch // layer.pe
    if wbits != layer.w_bit * layer.simd or len(lanes) != layer.pe or any(len(l) != layer.w_tiles for l in lanes):
        raise DataError(f"{where}_w: expected ap_uint<{layer.w_bit * layer.simd}>[{layer.pe}][{layer.w_tiles}]")
    if (ibits, bbits) != (get("INC_BIT"), get("BIAS_BIT")) or len(inc) != layer.pe or any(len(r) != rows for r in inc):
        raise DataError(f"{where}_inc / _bias: expected ap_int<INC_BIT / BIAS_BIT>[{layer.pe}][{rows}]")
    layer.weights = unpack_lanes(lanes, layer.ofm_ch, layer.terms, layer.simd, layer.w_bit)
    layer.inc = [inc[o % layer.pe][o // layer.pe] for o in range(layer.ofm_ch)]
    layer.bias = [bias[o % layer.pe][o // layer.pe] for o in range(layer.ofm_ch)]
    return layer


# -- the numpy model of the layers -------------------------------------------------------------

def _conv(layer: HlsLayer, x: np.ndarray) -> np.ndarray:
    k, s, p = layer.k, layer.s, layer.p
    x = x.reshape(-1, layer.ifm_ch, layer.ifm_row, layer.ifm_col)
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=layer.pad_val)
    rows, cols = s * (layer.ofm_row - 1) + 1, s * (layer.ofm_col - 1) + 1
    # im2col with the terms in the weights' [kc][kr][ich] order.
    patches = [x[:, :, kr:kr + rows:s, kc:kc + cols:s] for kc in range(k) for kr in range(k)]
    columns = np.stack(patches, axis=1).reshape(x.shape[0], layer.terms, -1)   # [N, K, pixels]
    acc = np.matmul(layer.weights, columns)                                      # [N, och, pixels]
    inc = np.asarray(layer.inc, dtype=np.int64).reshape(1, -1, 1)
    bias = np.asarray(layer.bias, dtype=np.int64).reshape(1, -1, 1)
    y = hls_requant(acc, inc, bias, layer.l_shift, layer.out_lo, layer.out_hi, clip=not layer.raw)
    return y.reshape(x.shape[0], layer.ofm_ch, layer.ofm_row, layer.ofm_col)


def _maxpool(layer: HlsLayer, x: np.ndarray) -> np.ndarray:
    k, s = layer.k, layer.s
    x = x.reshape(-1, layer.ifm_ch, layer.ifm_row, layer.ifm_col)
    rows, cols = s * (layer.ofm_row - 1) + 1, s * (layer.ofm_col - 1) + 1
    windows = [x[:, :, ky:ky + rows:s, kx:kx + cols:s] for ky in range(k) for kx in range(k)]
    return np.max(np.stack(windows), axis=0)


def run_hls_layers(parsed: list[HlsLayer], input_codes) -> list[np.ndarray]:
    """Every layer's output, [N, C, H, W] int64, computed from the parsed files only."""
    x = np.asarray(input_codes, dtype=np.int64)
    outputs = []
    for layer in parsed:
        x = _conv(layer, x) if layer.kind == "conv" else _maxpool(layer, x)
        outputs.append(x)
    return outputs


# -- the C++ reference ---------------------------------------------------------------------------

def compile_reference(out_dir: str | os.PathLike) -> Path:
    """g++ -O2 -std=c++17 the folder's hls_reference.cpp against its config.h / weights.hpp."""
    out = Path(out_dir)
    gxx = shutil.which("g++")
    if gxx is None:
        raise ConfigError("HLS check: g++ not found on PATH; install g++ (Debian: apt-get install g++) "
                          "or run without --check")
    binary = out / REFERENCE_BINARY
    cmd = [gxx, "-O2", "-std=c++17", "-Wall", "-I", str(out), "-o", str(binary), str(out / REFERENCE_SOURCES[0])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AcceleratorError(f"HLS check: g++ failed on {out / REFERENCE_SOURCES[0]} (exit {done.returncode}):\n"
                               + done.stderr[-3000:])
    return binary


def run_reference(binary: str | os.PathLike, out_dir: str | os.PathLike, input_codes,
                  layers: list[HlsLayer]) -> list[np.ndarray]:
    """Run the compiled reference on images (codes, CHW per image); every layer's [N, ...] outputs."""
    out = Path(out_dir)
    codes = np.asarray(input_codes, dtype=np.int64)
    n = codes.shape[0]
    run_dir = out / "reference_run"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(run_dir / "input.txt", ("\n".join(str(v) for v in codes.reshape(-1).tolist()) + "\n").encode())
    done = subprocess.run([str(binary), str(run_dir / "input.txt"), str(run_dir)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AcceleratorError(f"HLS check: {binary} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    results = []
    for i, layer in enumerate(layers):
        path = run_dir / f"L{i:02d}.txt"
        values = np.array(path.read_text().split(), dtype=np.int64)
        expected = n * layer.ofm_ch * layer.ofm_row * layer.ofm_col
        if values.size != expected:
            raise AcceleratorError(f"HLS check: {path} holds {values.size} values, expected {expected}")
        results.append(values.reshape(n, layer.ofm_ch, layer.ofm_row, layer.ofm_col))
    return results


def compare_layers(graph_outputs: dict, layers: list[HlsLayer], got: list[np.ndarray]) -> list[dict]:
    """Per layer: element count and mismatches against the engine's tensors (flattened per image)."""
    rows = []
    for layer, values in zip(layers, got):
        want = np.asarray(graph_outputs[layer.name]).reshape(values.shape[0], -1)
        diff = np.argwhere(values.reshape(values.shape[0], -1) != want)
        rows.append({"layer": layer.macro, "name": layer.name, "elements": int(want.size),
                     "mismatches": int(len(diff)),
                     "first_mismatch": None if not len(diff) else [int(i) for i in diff[0]]})
    return rows


def check_hls(graph: IntegerGraph, out_dir: str | os.PathLike, images: int = 8, seed: int = 0) -> dict:
    """Compile and run the C++ reference, run the numpy model of the parsed files, and compare
    every layer of both with the integer engine on `images` random inputs."""
    import torch

    parsed = read_hls(out_dir)
    binary = compile_reference(out_dir)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((images,) + tuple(graph.input_spec.shape), generator=gen)
    engine = {k: v.numpy() for k, v in graph.run(x, return_all=True).items()}
    codes = engine[graph.nodes[0].output]
    cpp = compare_layers(engine, parsed, run_reference(binary, out_dir, codes, parsed))
    model = compare_layers(engine, parsed, run_hls_layers(parsed, codes))
    total = sum(r["mismatches"] for r in cpp) + sum(r["mismatches"] for r in model)
    return {"images": images, "layers": [{**c, "model_mismatches": m["mismatches"]} for c, m in zip(cpp, model)],
            "mismatched_elements": total, "matches_engine": total == 0}
