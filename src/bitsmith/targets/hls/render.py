"""The three DeepBurning-MixQ files as text: config.h, weights.hpp, config_simd_pe.txt (docs/hls.md).

Weights: OIHW codes transposed to [och, kc, kr, ich/groups] and flattened per output channel to
K = k·k·ich/groups terms; channel o lives in PE lane o % PE, row o / PE; each lane holds
och/PE · K/SIMD words of SIMD W_BIT-bit two's complement fields, element 0 in the low bits,
written as the hex string literals Vivado's `ap_uint` accepts.
"""

from __future__ import annotations

from .layers import KINDS, HlsLayer

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

#: The defines of each layer kind, in file order (NAME comes first, always). Strings: NAME, INPUT,
#: OP; lists: INPUTS (strings), IN_CH (integers).
FIELDS = {
    "conv": ("OP", "INPUT", "K", "S", "P", "P_LEFT", "P_BOTTOM", "P_RIGHT", "GROUPS", "IFM_CH", "IFM_ROW", "IFM_COL",
             "OFM_CH", "OFM_ROW", "OFM_COL", "IN_BIT", "IN_SIGNED", "OUT_BIT", "OUT_SIGNED", "W_BIT", "INC_BIT",
             "BIAS_BIT", "SIMD", "PE", "W_TILES", "L_SHIFT", "RAW", "PAD_VAL", "OUT_LO", "OUT_HI"),
    "pool": ("INPUT", "K", "S", "IFM_CH", "IFM_ROW", "IFM_COL", "OFM_CH", "OFM_ROW", "OFM_COL", "IN_BIT", "IN_SIGNED"),
    "reorg": ("INPUT", "S", "IFM_CH", "IFM_ROW", "IFM_COL", "OFM_CH", "OFM_ROW", "OFM_COL", "IN_BIT", "IN_SIGNED"),
    "concat": ("INPUTS", "IN_CH", "OFM_CH", "OFM_ROW", "OFM_COL", "IN_BIT", "IN_SIGNED"),
    "add": ("INPUTS", "IFM_CH", "IFM_ROW", "IFM_COL", "OFM_CH", "OFM_ROW", "OFM_COL", "A_BIT", "A_SIGNED", "B_BIT",
            "B_SIGNED", "OUT_BIT", "OUT_SIGNED", "M_A", "M_B", "INC_BIT", "BIAS_BIT", "L_SHIFT", "OUT_LO", "OUT_HI"),
}


def _c_int(v: int) -> str:
    """An integer literal for C++: long long beyond 32 bits (fits: the export checked int64)."""
    return f"{v}LL" if not -(1 << 31) <= v < (1 << 31) else str(v)


def _value(layer: HlsLayer, key: str) -> str:
    """The text of one define: a string, a comma-separated list, or an integer literal."""
    top, left, bottom, right = layer.pads
    special = {"INPUT": f'"{layer.inputs[0]}"', "OP": f'"{layer.op}"',
               "INPUTS": ", ".join(f'"{name}"' for name in layer.inputs),
               "IN_CH": ", ".join(str(c) for c in layer.in_chs)}
    if key in special:
        return special[key]
    value = {"P": top, "P_LEFT": left, "P_BOTTOM": bottom, "P_RIGHT": right, "W_TILES": layer.w_tiles,
             "INC_BIT": layer.inc_bit, "BIAS_BIT": layer.bias_bit, "A_BIT": layer.in_bit,
             "A_SIGNED": layer.in_signed}.get(key)
    return _c_int(int(getattr(layer, key.lower()) if value is None else value))


def render_config(layers: list[HlsLayer], input_name: str, input_size: int, output_name: str,
                  source: str = "") -> str:
    lines = ["// DeepBurning-MixQ style layer configuration, written by bitsmith (docs/hls.md).",
             f"// source graph: {source}" if source else "// source graph: (in memory)",
             "// Activations are CHW code arrays named after the graph's tensors; every layer names what it",
             "// reads (INPUT / INPUTS). Conv terms are ordered [kc][kr][ich/groups] (weights.hpp).",
             "// Requant: y = (acc*inc + bias + 2^(L_SHIFT-1)) >> L_SHIFT, then clip to [OUT_LO, OUT_HI]",
             "// unless RAW (no requant: y = acc + bias). Padded positions hold the code PAD_VAL.",
             "#ifndef BITSMITH_HLS_CONFIG_H", "#define BITSMITH_HLS_CONFIG_H", ""]
    for layer in layers:
        what = f" ({layer.op}{' as a depthwise conv of ones' if layer.op in ('AvgPool2d', 'Requant') else ''})" \
            if layer.kind == "conv" else ""
        lines.append(f"// {layer.macro.lower()}: {layer.name}{what}")
        lines.append(f'#define {layer.macro}_NAME "{layer.name}"')
        lines += [f"#define {layer.macro}_{key} {_value(layer, key)}" for key in FIELDS[layer.kind]]
        lines.append("")
    lines += [f"#define HLS_NUM_LAYERS {len(layers)}",
              f'#define HLS_INPUT "{input_name}"',
              f"#define HLS_IN_SIZE {input_size}",
              f'#define HLS_OUTPUT "{output_name}"',
              "// Layer order: X-macro, expanded by the program with its own CONV(n) / POOL(n) / ….",
              f"#define HLS_LAYERS({', '.join(KINDS.values())}) \\"]
    lines += [f"    {KINDS[l.kind]}({l.index}) \\" for l in layers]
    lines += ["", "#endif", ""]
    return "\n".join(lines)


def render_weights(layers: list[HlsLayer]) -> str:
    out = ["// DeepBurning-MixQ style weights, written by bitsmith (docs/hls.md).",
           "// conv_n_w[PE][W_TILES]: SIMD fields of W_BIT bits per word, element 0 in the low bits;",
           "// channel o is lane o % PE, words (o / PE)*K/SIMD ... ; terms [kc][kr][ich/groups].",
           "// Include ap_int.h (Vivado) or hls_shim.h (bitsmith's stand-in) before this file.",
           "#ifndef BITSMITH_HLS_WEIGHTS_HPP", "#define BITSMITH_HLS_WEIGHTS_HPP", ""]
    for layer in layers:
        if layer.kind not in ("conv", "add"):
            continue
        prefix, lanes = f"{layer.kind}_{layer.index}", (layer.pe if layer.kind == "conv" else 1)
        out.append(f"// {layer.macro}: {layer.name}")
        if layer.kind == "conv":
            bits = layer.w_bit * layer.simd
            digits = -(-bits // 4)
            out.append(f"const ap_uint<{bits}> {prefix}_w[{layer.pe}][{layer.w_tiles}] = {{")
            for words in pack_lanes(layer):
                out.append("{" + ",".join(f'"0x{w:0{digits}x}"' for w in words) + "},")
            out.append("};")
        rows = layer.ofm_ch // lanes
        for arr, values, width in (("inc", layer.inc, layer.inc_bit), ("bias", layer.bias, layer.bias_bit)):
            out.append(f"const ap_int<{width}> {prefix}_{arr}[{lanes}][{rows}] = {{")
            for lane in range(lanes):
                out.append("{" + ",".join(_c_int(values[r * lanes + lane]) for r in range(rows)) + "},")
            out.append("};")
        out.append("")
    out += ["#endif", ""]
    return "\n".join(out)


def render_simd_pe(layers: list[HlsLayer]) -> str:
    return "simd pe\n" + "".join(f"{l.simd} {l.pe}\n" for l in layers if l.kind == "conv")
