"""Read config.h, weights.hpp and config_simd_pe.txt back into integer `HlsLayer`s (checked)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from bitsmith.errors import DataError

from .layers import HlsLayer, signed_width
from .render import CONFIG_FILE, SIMD_PE_FILE, WEIGHTS_FILE


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
