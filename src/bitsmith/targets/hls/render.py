"""The three DeepBurning-MixQ files as text: config.h, weights.hpp, config_simd_pe.txt (docs/hls.md).

Weights: OIHW codes transposed to [och, kc, kr, ich] and flattened per output channel to K =
k·k·ich terms; channel o lives in PE lane o % PE, row o / PE; each lane holds och/PE · K/SIMD
words of SIMD W_BIT-bit two's complement fields, element 0 in the low bits, written as the hex
string literals Vivado's `ap_uint` accepts.
"""

from __future__ import annotations

from .layers import HlsLayer

CONFIG_FILE = "config.h"
WEIGHTS_FILE = "weights.hpp"
SIMD_PE_FILE = "config_simd_pe.txt"


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
