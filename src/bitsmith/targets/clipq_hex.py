"""W2.hex / W8.hex: CLIP-Q 2-bit weight images in the source accelerator's format.

Layout (docs/clipq-hex.md is the contract): per 2-bit codebook layer a folder
`<index>_<node name>/` with

* `W8.hex` — one line, 8 hex digits: the 4 codebook values as 8-bit two's complement, the value
  of code c in bits [8c+7 : 8c] (code 00 in the low byte);
* `W2.hex` — one 32-bit line (8 hex digits) per kernel position of each 4×4 (output × input)
  channel group, groups in order (output group, input group), kernel positions row-major
  inside a group; the code of output o = 4·og + i, input c = 4·ig + j sits in bits
  [2(4i+j)+1 : 2(4i+j)] (byte i holds output i's four input channels, input 0 lowest).
  Channels beyond the layer's (padding to a multiple of 4) hold the zero code 10;
* `layer.json` — name, op, out_ch, in_ch, kh, kw, scale, the codebook as integers.

`manifest.json` at the top lists the layers in graph order. `read_clipq_hex` reads it back to
the graph's exact `weight_index` and `codebook` tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bitsmith.errors import BitsmithError, ConfigError, DataError
from bitsmith.integer.graph import IntegerGraph, Node, weight_format
from bitsmith.storage import read_json, write_bytes_atomic, write_json_atomic

GROUP = 4  # channels per group on both axes: four arrays of four PEs' inputs
ZERO_CODE = 0b10
MANIFEST = "manifest.json"


def clipq_layers(graph: IntegerGraph) -> list[Node]:
    """The Conv2d / Linear nodes stored as a 2-bit codebook (what W2.hex can hold)."""
    return [n for n in graph.nodes if n.op in ("Conv2d", "Linear") and weight_format(n) == "codebook"
            and n.attrs["index_bits"] == 2]


def _as_oihw(index: torch.Tensor) -> np.ndarray:
    a = index.numpy().astype(np.uint32)
    return a.reshape(a.shape + (1, 1)) if a.ndim == 2 else a  # a Linear is a 1×1 convolution


def pack_w2(index: np.ndarray) -> list[int]:
    """OIHW 2-bit codes → the 32-bit W2 words, in file order (vectorised)."""
    o, c, kh, kw = index.shape
    og, ig = -(-o // GROUP), -(-c // GROUP)
    padded = np.full((og * GROUP, ig * GROUP, kh, kw), ZERO_CODE, dtype=np.uint32)
    padded[:o, :c] = index
    # [og, i, ig, j, kh, kw] → [og, ig, kh, kw, i, j]: one word per (og, ig, kh, kw), 16 codes in it.
    blocks = padded.reshape(og, GROUP, ig, GROUP, kh, kw).transpose(0, 2, 4, 5, 1, 3).reshape(-1, GROUP * GROUP)
    shifts = (2 * np.arange(GROUP * GROUP, dtype=np.uint32))
    return (blocks << shifts).sum(axis=1, dtype=np.uint64).tolist()


def unpack_w2(words: list[int], shape: tuple[int, int, int, int]) -> np.ndarray:
    """The inverse of pack_w2 (padding dropped); checks that padding holds the zero code."""
    o, c, kh, kw = shape
    og, ig = -(-o // GROUP), -(-c // GROUP)
    w = np.asarray(words, dtype=np.uint64).reshape(-1, 1)
    codes = ((w >> (2 * np.arange(GROUP * GROUP, dtype=np.uint64))) & 3).astype(np.uint8)
    padded = codes.reshape(og, ig, kh, kw, GROUP, GROUP).transpose(0, 4, 1, 5, 2, 3).reshape(og * GROUP, ig * GROUP, kh, kw)
    pad = padded.copy()
    pad[:o, :c] = ZERO_CODE
    if (pad != ZERO_CODE).any():
        raise DataError("W2.hex: a padding channel holds a non-zero code; the file does not match its layer.json shape")
    return padded[:o, :c]


def write_clipq_hex(graph: IntegerGraph, out_dir: str | os.PathLike) -> dict:
    """Write W2.hex / W8.hex / layer.json for every 2-bit codebook layer; returns the manifest."""
    layers = clipq_layers(graph)
    if not layers:
        raise ConfigError("clipq-hex export: the graph has no 2-bit CLIP-Q codebook layer (weight_format "
                          "'codebook', index_bits 2); quantize with CLIP-Q bits=2 first")
    out = Path(out_dir)
    entries = []
    for i, node in enumerate(layers):
        if node.op == "Conv2d" and node.attrs["groups"] != 1:
            raise ConfigError(f"clipq-hex export: layer {node.name!r} is a grouped convolution; W2.hex holds groups=1 only")
        index = _as_oihw(graph.params[node.params["weight_index"]])
        codebook = graph.params[node.params["codebook"]].to(torch.int64)
        if codebook.numel() != 4 or int(codebook.min()) < -128 or int(codebook.max()) > 127:
            raise ConfigError(f"clipq-hex export: layer {node.name!r} needs 4 codebook values in 8 bits, "
                              f"has {codebook.tolist()}")
        folder = out / f"{i:02d}_{node.name}"
        folder.mkdir(parents=True, exist_ok=True)
        w8 = sum((int(v) & 0xFF) << (8 * c) for c, v in enumerate(codebook.tolist()))
        write_bytes_atomic(folder / "W8.hex", f"{w8:08x}\n".encode())
        write_bytes_atomic(folder / "W2.hex", "".join(f"{w:08x}\n" for w in pack_w2(index)).encode())
        acc, x = graph.tensors[node.output], graph.tensors[node.inputs[0]]
        o, c, kh, kw = index.shape
        layer = {"name": node.name, "op": node.op, "out_ch": o, "in_ch": c, "kh": kh, "kw": kw,
                 "weight_scale": (acc.scale[0] if acc.per_channel else acc.scale) / x.scale,
                 "codebook": codebook.tolist(), "lines": (-(-o // GROUP)) * (-(-c // GROUP)) * kh * kw}
        write_json_atomic(folder / "layer.json", layer)
        entries.append({"folder": folder.name, **layer})
    manifest = {"format": "bitsmith.clipq_hex", "version": 1, "layers": entries}
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _read_words(path: Path, count: int | None) -> list[int]:
    if not path.is_file():
        raise DataError(f"{path} not found; write it with write_clipq_hex")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    words = []
    for n, ln in enumerate(lines, 1):
        if len(ln) != 8 or any(ch not in "0123456789abcdefABCDEF" for ch in ln):
            raise DataError(f"{path}:{n}: {ln!r} is not a 32-bit hex word (8 hex digits)")
        words.append(int(ln, 16))
    if count is not None and len(words) != count:
        raise DataError(f"{path}: {len(words)} lines, expected {count} for the layer shape in layer.json")
    return words


def read_clipq_hex(directory: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """Read a write_clipq_hex folder: {node name: {"weight_index": uint8, "codebook": int16}}.

    The index tensor has the graph's shape (OIHW, or [out, in] for a Linear).
    """
    directory = Path(directory)
    try:
        manifest = read_json(directory / MANIFEST, "CLIP-Q hex manifest")
    except BitsmithError as e:
        raise DataError(str(e)) from None
    result = {}
    for entry in manifest["layers"]:
        folder = directory / entry["folder"]
        o, c, kh, kw = entry["out_ch"], entry["in_ch"], entry["kh"], entry["kw"]
        w8 = _read_words(folder / "W8.hex", 1)[0]
        codebook = [((w8 >> (8 * k)) & 0xFF) - (256 if (w8 >> (8 * k)) & 0x80 else 0) for k in range(4)]
        lines = (-(-o // GROUP)) * (-(-c // GROUP)) * kh * kw
        try:
            index = unpack_w2(_read_words(folder / "W2.hex", lines), (o, c, kh, kw))
        except DataError as e:
            raise DataError(f"{folder}: {e}") from None
        index_t = torch.from_numpy(np.ascontiguousarray(index))
        if entry["op"] == "Linear":
            index_t = index_t.reshape(o, c)
        result[entry["name"]] = {"weight_index": index_t, "codebook": torch.tensor(codebook, dtype=torch.int16)}
    return result
