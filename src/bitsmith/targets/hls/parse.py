"""Read config.h, weights.hpp and config_simd_pe.txt back into integer `HlsLayer`s (checked)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bitsmith.errors import DataError

from .layers import KINDS, HlsLayer, signed_width
from .render import CONFIG_FILE, FIELDS, SIMD_PE_FILE, WEIGHTS_FILE


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



# -- reading ----------------------------------------------------------------------------------

_DEFINE = re.compile(r'^\s*#define\s+(\w+)[ \t]+(.+?)\s*$', re.M)
_TOKEN = re.compile(r'\s*(?:"([^"]*)"|(-?\d+)(?:LL)?)\s*(?:,|$)')
_ARRAY = re.compile(r"const\s+ap_(u?int)<(\d+)>\s+(\w+)\[(\d+)\]\[(\d+)\]\s*=\s*\{(.*?)\};", re.S)
_ORDER = re.compile(r"#define HLS_LAYERS\(" + re.escape(", ".join(KINDS.values())) + r"\)((?:[^\n]*\\\n)+)")


def _define_value(text: str):
    """A define's value: a string, an integer, or a list of them (comma-separated); None otherwise."""
    values, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            return None
        values.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return values[0] if len(values) == 1 else values


def _read(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path} not found; write it with `bitsmith hw hls GRAPH --out {path.parent}`")
    return path.read_text()


def read_hls(out_dir: str | os.PathLike) -> list[HlsLayer]:
    """Read config.h, weights.hpp and config_simd_pe.txt back into integer layers (checked), in
    execution order. Every layer must read the input codes (HLS_INPUT) or an earlier layer's output."""
    out = Path(out_dir)
    config = _read(out / CONFIG_FILE)
    defines = {k: _define_value(v) for k, v in _DEFINE.findall(config)}
    order = _ORDER.search(config)
    if order is None:
        raise DataError(f"{out / CONFIG_FILE}: no HLS_LAYERS({', '.join(KINDS.values())}) list")
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
    kind_of = {macro: kind for kind, macro in KINDS.items()}
    layers = []
    known = {defines.get("HLS_INPUT")}
    for macro, n in re.findall(r"(" + "|".join(KINDS.values()) + r")\((\d+)\)", order.group(1)):
        layer = _parse_layer(out, defines, arrays, kind_of[macro], int(n))
        missing = [name for name in layer.inputs if name not in known]
        if missing:
            raise DataError(f"{out / CONFIG_FILE}: {layer.macro} reads {missing}, which is neither HLS_INPUT nor "
                            "an earlier layer's output")
        known.add(layer.name)
        layers.append(layer)
    convs = [l for l in layers if l.kind == "conv"]
    if [(l.simd, l.pe) for l in convs] != rows:
        raise DataError(f"{out / SIMD_PE_FILE}: rows {rows} differ from config.h SIMD/PE "
                        f"{[(l.simd, l.pe) for l in convs]}")
    return layers


def _parse_layer(out: Path, d: dict, arrays: dict, kind: str, n: int) -> HlsLayer:
    m = f"{KINDS[kind]}_{n}"

    def get(key: str, want=int):
        value = d.get(f"{m}_{key}")
        if value is None:
            raise DataError(f"{out / CONFIG_FILE}: #define {m}_{key} missing or not a value")
        items = value if isinstance(value, list) else [value]
        if want is list:
            return items
        if isinstance(value, list) or not isinstance(value, want):
            what = "a string" if want is str else "an integer"
            raise DataError(f"{out / CONFIG_FILE}: #define {m}_{key} must be {what}")
        return value

    for key in FIELDS[kind]:  # every define of the kind is present
        get(key, list)
    inputs = tuple(get("INPUTS", list)) if "INPUTS" in FIELDS[kind] else (get("INPUT", str),)
    if not all(isinstance(name, str) for name in inputs):
        raise DataError(f"{out / CONFIG_FILE}: #define {m}_INPUTS must list tensor names (strings)")
    common = dict(kind=kind, index=n, name=get("NAME", str), inputs=inputs, ofm_ch=get("OFM_CH"),
                  ofm_row=get("OFM_ROW"), ofm_col=get("OFM_COL"))
    if kind == "concat":
        chs = tuple(get("IN_CH", list))
        if not all(isinstance(c, int) for c in chs) or len(chs) != len(inputs) or sum(chs) != common["ofm_ch"]:
            raise DataError(f"{out / CONFIG_FILE}: {m}_IN_CH must give one channel count per input, "
                            f"summing to OFM_CH {common['ofm_ch']}")
        bits, signed = get("IN_BIT"), bool(get("IN_SIGNED"))
        return HlsLayer(**common, ifm_ch=common["ofm_ch"], ifm_row=common["ofm_row"], ifm_col=common["ofm_col"],
                        in_bit=bits, in_signed=signed, out_bit=bits, out_signed=signed, in_chs=chs)
    common.update(ifm_ch=get("IFM_CH"), ifm_row=get("IFM_ROW"), ifm_col=get("IFM_COL"))
    if kind in ("pool", "reorg"):
        bits, signed = get("IN_BIT"), bool(get("IN_SIGNED"))
        s = get("S")
        return HlsLayer(**common, in_bit=bits, in_signed=signed, out_bit=bits, out_signed=signed,
                        k=get("K") if kind == "pool" else s, s=s)
    requant = dict(out_bit=get("OUT_BIT"), out_signed=bool(get("OUT_SIGNED")), l_shift=get("L_SHIFT"),
                   out_lo=get("OUT_LO"), out_hi=get("OUT_HI"))
    if kind == "add":
        layer = HlsLayer(**common, **requant, in_bit=get("A_BIT"), in_signed=bool(get("A_SIGNED")),
                         b_bit=get("B_BIT"), b_signed=bool(get("B_SIGNED")), m_a=get("M_A"), m_b=get("M_B"))
        if len(inputs) != 2:
            raise DataError(f"{out / CONFIG_FILE}: {m}_INPUTS must name two tensors")
        _read_inc_bias(out, d, arrays, layer, m, 1)
        return layer
    layer = HlsLayer(**common, **requant, in_bit=get("IN_BIT"), in_signed=bool(get("IN_SIGNED")), k=get("K"),
                     s=get("S"), op=get("OP", str), pads=(get("P"), get("P_LEFT"), get("P_BOTTOM"), get("P_RIGHT")),
                     groups=get("GROUPS"), w_bit=get("W_BIT"), simd=get("SIMD"), pe=get("PE"), raw=bool(get("RAW")),
                     pad_val=get("PAD_VAL"))
    if layer.groups < 1 or layer.ifm_ch % layer.groups or layer.ofm_ch % layer.groups:
        raise DataError(f"{out / CONFIG_FILE}: {m}_GROUPS {layer.groups} must divide IFM_CH and OFM_CH")
    where = f"{out / WEIGHTS_FILE}: conv_{n}"
    if "conv_%d_w" % n not in arrays:
        raise DataError(f"{where}: array conv_{n}_w expected")
    wbits, lanes = arrays[f"conv_{n}_w"]
    if wbits != layer.w_bit * layer.simd or len(lanes) != layer.pe or any(len(l) != layer.w_tiles for l in lanes):
        raise DataError(f"{where}_w: expected ap_uint<{layer.w_bit * layer.simd}>[{layer.pe}][{layer.w_tiles}]")
    _read_inc_bias(out, d, arrays, layer, m, layer.pe)
    layer.weights = unpack_lanes(lanes, layer.ofm_ch, layer.terms, layer.simd, layer.w_bit)
    return layer


def _read_inc_bias(out: Path, d: dict, arrays: dict, layer: HlsLayer, m: str, lanes: int) -> None:
    """`<kind>_n_inc` / `_bias` [lanes][OFM_CH/lanes] → per channel (channel r·lanes + p is [p][r])."""
    where = f"{out / WEIGHTS_FILE}: {layer.kind}_{layer.index}"
    names = (f"{layer.kind}_{layer.index}_inc", f"{layer.kind}_{layer.index}_bias")
    if any(a not in arrays for a in names):
        raise DataError(f"{where}: arrays {', '.join(names)} expected")
    (ibits, inc), (bbits, bias) = (arrays[a] for a in names)
    rows = layer.ofm_ch // lanes
    if (ibits, bbits) != (d.get(f"{m}_INC_BIT"), d.get(f"{m}_BIAS_BIT")) or len(inc) != lanes or \
            any(len(r) != rows for r in inc) or len(bias) != lanes or any(len(r) != rows for r in bias):
        raise DataError(f"{where}_inc / _bias: expected ap_int<INC_BIT / BIAS_BIT>[{lanes}][{rows}]")
    layer.inc = [inc[o % lanes][o // lanes] for o in range(layer.ofm_ch)]
    layer.bias = [bias[o % lanes][o // lanes] for o in range(layer.ofm_ch)]
