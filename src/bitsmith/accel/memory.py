"""The accelerator's `$readmemh` memory files (docs/hardware.md §6), and readers for them.

`build_memory` packs a program (and optionally input codes) into the words of each memory, as
Python ints, element 0 in the low bits; `write_memory` writes them as hex text plus
`program.json`, which records the sha256 of every file it lists; the `read_*` functions check each
file they read against it (a file of another compilation, or a flipped byte, is a DataError
naming the file) and parse the files back, so tests can check that every file round-trips and the
cycle model can decode exactly what was written. ("Images" in this package
means input pictures only; the contents of a memory are its words.)

With `weight_stream=True` the dense layers' weights go to `WS.hex` instead of `W8.hex`: per layer
one record holding its codes in the layer's IR storage format (`bitsmith.integer.sparse`), the
compressed weight stream of docs/hardware.md §6. `read_memory` decodes it back into the W8 words
the dense image would hold, so everything downstream (read_program, simulate) is unchanged.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bitsmith.errors import BitsmithError, BitsmithWarning, ConfigError, DataError
from bitsmith.storage import read_json, sha256_file, write_bytes_atomic, write_json_atomic
from bitsmith.integer import engine
from bitsmith.integer import sparse

from .compiler import (SCHEDULE_BLOCK_BITS, SCHEDULE_CODEBOOK_SHIFT, SCHEDULE_STORAGE, SCHEDULE_STORAGE_SHIFT,
                       SCHEDULE_WORD_BITS,
                       block_words, channel_groups, check_packing, compile_graph, group_channels, storage_bits,
                       term_blocks, words_per_block)
from .config import (ACC_BITS, CODEBOOK_SIZE, CODEBOOK_VALUE_BITS, DESCRIPTOR_WORDS, MAX_ACT_BITS,
                     PARAM_WORD_BITS, PARAM_WORDS_PER_CHANNEL, AccelConfig)
from .program import KINDS, PACKINGS, REQUANT_KINDS, Layer, Program
from .timing import program_cycles

FORMAT = "bitsmith.accel_images"   # the on-disk format name in program.json (unchanged since version 1)
VERSION = 3   # 2: W8 / W2 words block by block (the weight ring) and LS.hex; 3: descriptor word 21 holds
              # in_ch / groups (was groups); older folders are refused
PARAM_BITS = PARAM_WORD_BITS
CODEBOOK_BITS = CODEBOOK_VALUE_BITS
PROGRAM_FILE = "program.json"
SCHEDULE_FILE = "LS.hex"   # the weight loader's schedule (§6)
SHA256_FIELD = "sha256"  # program.json: {file name: sha256 of its bytes} for every file it lists

#: The compressed weight stream (§6): per dense conv layer a record of RECORD_HEADER_BYTES (magic |
#: layer index << 16, then the byte length of the sparse.Encoded bytes), those bytes, zero padding to
#: the next bus word. Bytes are packed into bus words little-endian (byte 0 in bits 0-7).
WEIGHT_STREAM_FILE = "WS.hex"
RECORD_MAGIC = 0x5357          # "WS" as two little-endian bytes
RECORD_HEADER_BYTES = 8
#: program.json's options for the weights: "off" (W8.hex), or a stream whose formats come from the
#: IR ("ir"), each layer's smallest ("best") or one sparse format for every layer (export_memory).
WEIGHT_STREAM_CHOICES = ("off", "ir", "best") + sparse.FORMATS

# Descriptor word 0 flags (§6).
FLAG_CODEBOOK = 1 << 8
FLAG_RAW = 1 << 9
FLAG_IN_SIGNED = 1 << 10
FLAG_OUT_SIGNED = 1 << 11
FLAG_IN2_SIGNED = 1 << 12
FLAG_MAP = 1 << 13
LANE_M_SHIFT = 16   # word 20: m_0 | m_1 << 16


@dataclass
class MemoryImage:
    """The words of every memory (unsigned ints of the file's width) and each layer's base addresses."""

    param: list[int]
    w8: list[int]
    w2: list[int]
    cb8: list[int]
    inputs: list[int] = field(default_factory=list)
    ws: list[int] = field(default_factory=list)   # the compressed weight stream (WS.hex), when written
    schedule: list[int] = field(default_factory=list)   # LS.hex: the weight loader's schedule
    weight_base: list[int] = field(default_factory=list)
    param_base: list[int] = field(default_factory=list)
    codebook_base: list[int] = field(default_factory=list)


# -- packing --------------------------------------------------------------------------------

def pack_elements(values: np.ndarray, elem_bits: int, word_bits: int) -> list[int]:
    """Pack integers (two's complement, `elem_bits` each) into `word_bits` words, element 0 lowest;
    the last word is padded with zeros."""
    per_word = word_bits // elem_bits
    v = np.asarray(values, dtype=np.int64).reshape(-1) & ((1 << elem_bits) - 1)
    n_words = math.ceil(v.size / per_word)
    padded = np.zeros(n_words * per_word, dtype=np.uint8)
    padded[: v.size] = v
    per_byte = 8 // elem_bits
    # Several elements per byte (2-bit indices): element k of a byte sits at bits elem_bits·k.
    shifts = (np.arange(per_byte, dtype=np.uint8) * elem_bits)
    packed = (padded.reshape(-1, per_byte) << shifts).sum(axis=1, dtype=np.uint64).astype(np.uint8)
    data = packed.tobytes()
    step = word_bits // 8
    return [int.from_bytes(data[i : i + step], "little") for i in range(0, len(data), step)]


def unpack_elements(words: list[int], elem_bits: int, word_bits: int, count: int, signed: bool) -> np.ndarray:
    """The inverse of pack_elements: the first `count` elements as int64."""
    step = word_bits // 8
    data = np.frombuffer(b"".join(w.to_bytes(step, "little") for w in words), dtype=np.uint8)
    per_byte = 8 // elem_bits
    mask = (1 << elem_bits) - 1
    v = ((data[:, None] >> (np.arange(per_byte, dtype=np.uint8) * elem_bits)) & mask).reshape(-1)[:count].astype(np.int64)
    if count > v.size:
        raise DataError(f"{len(words)} words of {word_bits} bits hold {v.size} elements, {count} needed")
    if signed:
        v = np.where(v >= 1 << (elem_bits - 1), v - (1 << elem_bits), v)
    return v


def block_weights(layer: Layer, config: AccelConfig) -> np.ndarray:
    """[G, T, R'·C] weight-ring entries of a conv layer (R' = R·channel lanes): term block j of channel
    group g holds weight[g·R' + i][j·C + c] at entry i·C + c (zeros beyond out_ch and K)."""
    R, C, T, G = group_channels(layer, config), config.simd, term_blocks(layer, config), channel_groups(layer, config)
    padded = np.zeros((G * R, T * C), dtype=np.int64)
    padded[: layer.out_ch, : layer.terms] = layer.weights
    return padded.reshape(G, R, T, C).transpose(0, 2, 1, 3).reshape(G, T, R * C)


def layer_weight_words(layer: Layer, config: AccelConfig) -> list[int]:
    """A conv layer's W8 (W2) words (§6): its term blocks in load order (group by group, block by
    block), each at the storage width and padded to `block_words` whole bus words."""
    bits, per_word = storage_bits(layer), config.bus_bits // storage_bits(layer)
    blocks = block_weights(layer, config)
    padded = np.zeros((blocks.shape[0] * blocks.shape[1], block_words(layer, config) * per_word), dtype=np.int64)
    padded[:, : blocks.shape[2]] = blocks.reshape(-1, blocks.shape[2])
    return pack_elements(padded, bits, config.bus_bits)


def schedule_words(program: Program) -> list[int]:
    """LS.hex (§6): per conv layer, in program order, one word for the weight loader: its term blocks
    (G·T), bus words per block, storage width code, codebook flag; then a 0 word (the end)."""
    config = program.config
    words = []
    for layer in program.layers:
        if layer.kind == "conv":
            blocks = channel_groups(layer, config) * term_blocks(layer, config)
            words.append(blocks | block_words(layer, config) << SCHEDULE_BLOCK_BITS
                         | SCHEDULE_STORAGE[storage_bits(layer)] << SCHEDULE_STORAGE_SHIFT
                         | int(layer.is_codebook) << SCHEDULE_CODEBOOK_SHIFT)
    return words + [0]


def _twos(value: int, bits: int = PARAM_BITS) -> int:
    return int(value) & ((1 << bits) - 1)


def descriptor(layer: Layer, weight_base: int, param_base: int, codebook_base: int) -> list[int]:
    """The DESCRIPTOR_WORDS descriptor words of one layer (§6)."""
    word0 = KINDS.index(layer.kind)
    word0 |= FLAG_CODEBOOK if layer.is_codebook else 0
    word0 |= FLAG_RAW if layer.raw_output else 0
    word0 |= FLAG_IN_SIGNED if layer.in_signed else 0
    word0 |= FLAG_OUT_SIGNED if layer.out_signed else 0
    word0 |= FLAG_IN2_SIGNED if layer.in2_signed else 0
    word0 |= FLAG_MAP if layer.has_map else 0
    m0, m1 = layer.lane_multipliers
    words = [
        word0, layer.in_ch, layer.in_h, layer.in_w, layer.out_ch, layer.out_h, layer.out_w,
        layer.kh | layer.kw << 8 | layer.sh << 16 | layer.sw << 24,
        layer.ph | layer.pw << 8 | layer.weight_bits << 16 | layer.packing << 24,
        _twos(layer.z_in), _twos(layer.z_out), _twos(layer.clamp_lo), _twos(layer.clamp_hi),
        weight_base, param_base, codebook_base,
        layer.in_base, layer.in2_base, layer.out_base, _twos(layer.z_in2), m0 | m1 << LANE_M_SHIFT, layer.in_ch // layer.groups,
    ]
    assert len(words) == DESCRIPTOR_WORDS
    return words


def build_memory(program: Program, codes=None) -> MemoryImage:
    """Every memory's words for `program`; `codes` ([N, C, H, W] input codes) fills In8."""
    config = program.config
    w8: list[int] = []
    w2: list[int] = []
    cb8: list[int] = []
    tables: list[int] = []
    table_start = 1 + DESCRIPTOR_WORDS * len(program.layers)
    memory = MemoryImage(param=[], w8=w8, w2=w2, cb8=cb8)
    for layer in program.layers:
        target = w2 if layer.is_codebook else w8
        memory.weight_base.append(len(target) if layer.kind == "conv" else 0)
        memory.codebook_base.append(len(cb8) if layer.is_codebook else 0)
        if layer.kind == "conv":
            target.extend(layer_weight_words(layer, config))
        if layer.is_codebook:
            cb8.extend(_twos(v, CODEBOOK_BITS) for v in layer.codebook)
        if layer.table_words:
            memory.param_base.append(table_start + len(tables))
            for c in range(layer.out_ch):   # per channel: bias, multiplier, shift; then the input address
                if layer.has_table:
                    tables += [_twos(layer.bias[c]), _twos(layer.multiplier[c]), _twos(layer.shift[c])]
                if layer.has_map:
                    tables.append(_twos(layer.channel_map[c]))
        else:
            memory.param_base.append(0)
    memory.param = [len(program.layers)]
    for i, layer in enumerate(program.layers):
        memory.param += descriptor(layer, memory.weight_base[i], memory.param_base[i], memory.codebook_base[i])
    memory.param += tables
    memory.schedule = schedule_words(program)
    if codes is not None:
        memory.inputs = pack_inputs(program, codes)
    return memory


def pack_inputs(program: Program, codes) -> list[int]:
    """In8: each image's codes in CHW order, one byte each, every image starting on a new word (the
    first layer's input map is the graph's input)."""
    first = program.layers[0]
    codes = _as_numpy(codes).reshape(-1, first.in_elems) if np.size(codes) else np.zeros((0, first.in_elems))
    words: list[int] = []
    for image in codes:
        words += pack_elements(image, MAX_ACT_BITS, program.config.bus_bits)
    return words


def _as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy().astype(np.int64) if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.int64)


# -- files ----------------------------------------------------------------------------------

def _hex_text(words: list[int], width_bits: int) -> bytes:
    digits = width_bits // 4
    return "".join(f"{w:0{digits}x}\n" for w in words).encode()


def expected_file(index: int) -> str:
    return f"expected/L{index:02d}.hex"


# -- the compressed weight stream ---------------------------------------------------------------

def stream_layers(program: Program) -> list[Layer]:
    """The layers whose weights the stream holds: every dense (non-codebook) conv layer."""
    return [layer for layer in program.layers if layer.kind == "conv" and not layer.is_codebook]


def encode_weights(layer: Layer) -> sparse.Encoded:
    """A dense conv layer's [out_ch, K] codes in its IR storage format (signed, weight_bits)."""
    try:
        return sparse.encode(layer.weights, layer.weight_storage, layer.weight_bits, signed=True,
                             **layer.storage_fields)
    except BitsmithError as e:
        raise ConfigError(f"layer {layer.name}: its weights cannot be stored as {layer.weight_storage}: {e}") from None


def build_weight_stream(program: Program) -> tuple[list[int], dict[int, dict]]:
    """(WS.hex words, {layer index: its record's entry in program.json})."""
    word_bytes = program.config.bus_bits // 8
    data = bytearray()
    records = {}
    for layer in stream_layers(program):
        enc = encode_weights(layer)
        blob = enc.to_bytes()
        record = (RECORD_MAGIC | layer.index << 16).to_bytes(4, "little") + len(blob).to_bytes(4, "little") + blob
        words = math.ceil(len(record) / word_bytes)
        records[layer.index] = {"base": len(data) // word_bytes, "words": words, "format": enc.format,
                                "field_bits": enc.field_bits, "nnz": enc.nnz,
                                "bits": 8 * RECORD_HEADER_BYTES + enc.total_bits}
        data += record + bytes(words * word_bytes - len(record))
    return [int.from_bytes(data[i : i + word_bytes], "little") for i in range(0, len(data), word_bytes)], records


def decode_weight_record(layer: Layer, words: list[int], base: int, bus_bits: int,
                         n_words: int | None = None) -> np.ndarray:
    """[out_ch, K] codes of `layer` from its WS.hex record at word `base`; a record that is cut
    short, belongs to another layer, or does not hold this layer's codes is a DataError."""
    where = f"{WEIGHT_STREAM_FILE} record of layer {layer.index} ({layer.name}) at word {base}"
    word_bytes = bus_bits // 8
    head_words = math.ceil(RECORD_HEADER_BYTES / word_bytes)
    if base < 0 or base + head_words > len(words):
        raise DataError(f"{where}: the stream has {len(words)} words; the record header does not fit (truncated)")

    def chunk(first: int, count: int) -> bytes:
        return b"".join(w.to_bytes(word_bytes, "little") for w in words[first : first + count])

    head = chunk(base, head_words)
    magic, index, size = (int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little"),
                          int.from_bytes(head[4:8], "little"))
    if magic != RECORD_MAGIC or index != layer.index:
        raise DataError(f"{where}: header {head[:8].hex()} is not a record of layer {layer.index} "
                        f"(magic {RECORD_MAGIC:#06x}, then the layer index)")
    need = math.ceil((RECORD_HEADER_BYTES + size) / word_bytes)
    if n_words is not None and need != n_words:
        raise DataError(f"{where}: the record says {size} bytes ({need} words); program.json says {n_words} words")
    if base + need > len(words):
        raise DataError(f"{where}: the record needs {need} words, the stream ends after {len(words) - base} (truncated)")
    record = chunk(base, need)
    if any(record[RECORD_HEADER_BYTES + size :]):
        raise DataError(f"{where}: the padding after the record's {size} bytes is not zero")
    enc = sparse.Encoded.from_bytes(record[RECORD_HEADER_BYTES : RECORD_HEADER_BYTES + size])
    shape = (layer.out_ch, layer.terms)
    if (enc.format, enc.bits, enc.signed, enc.shape) != (layer.weight_storage, layer.weight_bits, True, shape):
        raise DataError(f"{where}: holds {enc.format} {'signed' if enc.signed else 'unsigned'} {enc.bits}-bit codes "
                        f"of shape {list(enc.shape)}; the layer stores {layer.weight_storage} signed "
                        f"{layer.weight_bits}-bit codes of shape {list(shape)}")
    return sparse.decode(enc)


def write_memory(program: Program, codes, out_dir: str | os.PathLike, expected: dict | None = None, *,
                 weight_stream: bool = False) -> dict:
    """Write the §6 files for `program` and input `codes` [N, C, H, W] into `out_dir`.

    `expected` maps graph tensor names to engine outputs (e.g. `engine.run(graph, x, return_all=True)`);
    when given, `expected/Lii.hex` and `Out8.hex` / `Out32.hex` are written too. `weight_stream`:
    the dense layers' weights go to the compressed WS.hex (each in its `Layer.weight_storage`
    format) instead of W8.hex; the RTL reads W8.hex only. Every file's contents are made before the
    first is written, so a failure leaves `out_dir` as it was. Returns the contents of program.json.
    """
    config = program.config
    out = Path(out_dir)
    codes = _as_numpy(codes)
    n_images = int(codes.shape[0])
    if n_images and codes[0].size != program.layers[0].in_elems:
        raise DataError(f"input codes of shape {list(codes.shape)} do not match the first layer's input "
                        f"{program.layers[0].in_ch}x{program.layers[0].in_h}x{program.layers[0].in_w}")
    memory = build_memory(program, codes)
    files = {"param.hex": (memory.param, PARAM_BITS), "In8.hex": (memory.inputs, config.bus_bits),
             SCHEDULE_FILE: (memory.schedule, SCHEDULE_WORD_BITS)}
    records: dict[int, dict] = {}
    if weight_stream:
        memory.ws, records = build_weight_stream(program)
        if memory.ws:
            files[WEIGHT_STREAM_FILE] = (memory.ws, config.bus_bits)
    elif memory.w8:
        files["W8.hex"] = (memory.w8, config.bus_bits)
    if memory.w2:
        files["W2.hex"] = (memory.w2, config.bus_bits)
    if memory.cb8:
        files["CB8.hex"] = (memory.cb8, CODEBOOK_BITS)
    if expected is not None:
        for layer in program.layers:
            if layer.name not in expected:
                raise DataError(f"expected outputs have no tensor {layer.name!r} (layer {layer.index})")
            values = _as_numpy(expected[layer.name]).reshape(-1)
            bits = layer.stored_out_bits
            files[expected_file(layer.index)] = ([_twos(v, bits) for v in values.tolist()], bits)
        last = program.layers[-1]
        files["Out32.hex" if last.raw_output else "Out8.hex"] = files[expected_file(last.index)]
    digests = {name: write_bytes_atomic(out / name, _hex_text(words, width)) for name, (words, width) in files.items()}
    doc = {
        "format": FORMAT, "version": VERSION,
        "config": config.to_json(),
        "input_name": program.input_name,
        "images": n_images,
        "files": sorted(files),
        SHA256_FIELD: dict(sorted(digests.items())),
        "weight_stream": bool(records),
        "layers": [_layer_json(layer, memory, i) | ({"weight_stream": records[layer.index]}
                                                     if layer.index in records else {})
                   for i, layer in enumerate(program.layers)],
        "cycles": program_cycles(program),
        "metadata": program.metadata,
    }
    write_json_atomic(out / PROGRAM_FILE, doc)
    return doc


def _layer_json(layer: Layer, memory: MemoryImage, i: int) -> dict:
    return {
        "index": layer.index, "name": layer.name, "kind": layer.kind,
        "in": [layer.in_ch, layer.in_h, layer.in_w], "out": [layer.out_ch, layer.out_h, layer.out_w],
        "kernel": [layer.kh, layer.kw], "stride": [layer.sh, layer.sw], "padding": [layer.ph, layer.pw],
        "groups": layer.groups, "in_base": layer.in_base, "in2_base": layer.in2_base, "out_base": layer.out_base,
        "in2_bits": layer.in2_bits, "in2_signed": layer.in2_signed, "z_in2": layer.z_in2,
        "lane_multipliers": list(layer.lane_multipliers),
        "channel_map": None if layer.channel_map is None else [int(v) for v in layer.channel_map],
        "in_bits": layer.in_bits, "in_signed": layer.in_signed, "out_bits": layer.out_bits,
        "out_signed": layer.out_signed, "z_in": layer.z_in, "z_out": layer.z_out,
        "clamp": [layer.clamp_lo, layer.clamp_hi], "raw_output": layer.raw_output,
        "weight_bits": layer.weight_bits, "packing": layer.packing,
        "codebook": None if layer.codebook is None else [int(v) for v in layer.codebook],
        "weight_base": memory.weight_base[i], "param_base": memory.param_base[i],
        "codebook_base": memory.codebook_base[i], "macs": layer.macs,
        "weight_storage": layer.weight_storage, "storage_fields": dict(layer.storage_fields),
    }


def export_memory(graph, x, out_dir: str | os.PathLike, config: AccelConfig | None = None, *,
                  weight_stream: str = "off") -> dict:
    """Quantize float images `x` with the integer engine, compile `graph`, write every memory file
    with the engine's expected outputs. `weight_stream` (WEIGHT_STREAM_CHOICES): "off" writes W8.hex;
    "ir" the compressed stream in each layer's IR storage format; "best" or a format name first
    sets that storage on every dense layer (`bitsmith.integer.sparsity.annotate`).

    Returns the contents of program.json.
    """
    graph = stream_graph(graph, weight_stream)
    program = compile_graph(graph, config or AccelConfig())
    outputs = engine.run(graph, x, return_all=True)
    return write_memory(program, outputs[program.input_name], out_dir, expected=outputs,
                        weight_stream=weight_stream != "off")


def stream_graph(graph, weight_stream: str):
    """The graph whose IR storage the stream writes: itself for "off" / "ir", else annotated."""
    if weight_stream not in WEIGHT_STREAM_CHOICES:
        raise ConfigError(f"weight stream {weight_stream!r}; allowed: {', '.join(WEIGHT_STREAM_CHOICES)}")
    if weight_stream in ("off", "ir"):
        return graph
    from bitsmith.integer.sparsity import annotate

    return annotate(graph, weight_stream)


# -- readers --------------------------------------------------------------------------------

def read_hex(path: str | os.PathLike, width_bits: int) -> list[int]:
    """The words of a `$readmemh` file: one `width_bits/4`-digit hex word per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"memory file {path} not found")
    digits = width_bits // 4
    words = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if len(line) != digits:
            raise DataError(f"{path}:{n}: {line!r} is not a {width_bits}-bit word ({digits} hex digits)")
        try:
            words.append(int(line, 16))
        except ValueError:
            raise DataError(f"{path}:{n}: {line!r} is not hexadecimal") from None
    return words


def _read_program_json(out: Path) -> dict:
    doc = read_json(out / PROGRAM_FILE, "accelerator program")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{out / PROGRAM_FILE}: not a bitsmith accelerator memory folder")
    if doc.get("version") != VERSION:
        raise DataError(f"{out / PROGRAM_FILE}: memory-folder version {doc.get('version')!r}, this bitsmith reads "
                        f"version {VERSION} (its weight words are laid out for the weight ring, its descriptors "
                        "carry in_ch / groups). Re-create the "
                        "folder with bitsmith hw compile.")
    return doc


def check_file(out_dir: str | os.PathLike, doc: dict, name: str) -> None:
    """The file `name` of a memory folder must have the sha256 its program.json records. A
    program.json without digests (written by an older bitsmith) is read unchecked, with a warning."""
    out = Path(out_dir)
    digests = doc.get(SHA256_FIELD)
    if digests is None:
        warnings.warn(f"{out / PROGRAM_FILE} records no sha256 of its files (written by an older bitsmith); "
                      "they are read unchecked. Re-create the folder with bitsmith hw compile.",
                      BitsmithWarning, stacklevel=3)
        return
    if not isinstance(digests, dict):
        raise DataError(f"{out / PROGRAM_FILE}: {SHA256_FIELD!r} must map file names to sha256 digests")
    path = out / name
    if not path.is_file():
        return  # the reader says what is missing
    recorded = digests.get(name)
    if recorded is None:
        raise DataError(f"{path}: {PROGRAM_FILE} lists no sha256 for it, so it does not belong to this "
                        "compilation. Re-create the folder with bitsmith hw compile.")
    actual = sha256_file(path)
    if actual != recorded:
        raise DataError(f"{path} does not match {out / PROGRAM_FILE} (recorded sha256 {str(recorded)[:12]}…, the file "
                        f"has {actual[:12]}…): the folder mixes files of two compilations, or the file changed. "
                        "Re-create the folder with bitsmith hw compile.")


def verify_memory_folder(out_dir: str | os.PathLike) -> dict:
    """Check every file program.json lists against its sha256; returns program.json."""
    out = Path(out_dir)
    doc = _read_program_json(out)
    for name in doc.get("files", []):
        if not (out / name).is_file():
            raise DataError(f"{out / name} is missing; {PROGRAM_FILE} lists it. Re-create the folder with "
                            "bitsmith hw compile.")
        check_file(out, doc, name)
    return doc


def read_memory(out_dir: str | os.PathLike) -> tuple[dict, MemoryImage]:
    """program.json and every memory's words (missing optional files read as empty), each file
    checked against the sha256 program.json records."""
    out = Path(out_dir)
    doc = _read_program_json(out)
    bus = doc["config"]["bus_bits"]

    def optional(name: str, bits: int) -> list[int]:
        if not (out / name).is_file():
            return []
        check_file(out, doc, name)
        return read_hex(out / name, bits)

    check_file(out, doc, "param.hex")
    memory = MemoryImage(param=read_hex(out / "param.hex", PARAM_BITS), w8=optional("W8.hex", bus),
                          w2=optional("W2.hex", bus), cb8=optional("CB8.hex", CODEBOOK_BITS),
                          inputs=optional("In8.hex", bus), ws=optional(WEIGHT_STREAM_FILE, bus),
                          schedule=optional(SCHEDULE_FILE, SCHEDULE_WORD_BITS))
    if doc.get("weight_stream"):
        if memory.w8:
            raise DataError(f"{out}: holds both W8.hex and {WEIGHT_STREAM_FILE}; a folder has one weight memory")
        memory.w8 = dense_words_from_stream(doc, memory.ws)
    return doc, memory


def _conv_layer_from_json(info: dict) -> Layer:
    """The geometry of a conv layer as program.json records it (enough to place its weights)."""
    (in_ch, in_h, in_w), (out_ch, out_h, out_w), (kh, kw) = info["in"], info["out"], info["kernel"]
    return Layer(index=info["index"], name=info["name"], kind="conv", in_ch=in_ch, in_h=in_h, in_w=in_w,
                 out_ch=out_ch, out_h=out_h, out_w=out_w, kh=kh, kw=kw, groups=info["groups"],
                 weight_bits=info["weight_bits"], weight_storage=info.get("weight_storage", "dense"),
                 packing=info.get("packing", 1),
                 storage_fields=info.get("storage_fields", {}))


def dense_words_from_stream(doc: dict, ws: list[int]) -> list[int]:
    """The W8.hex words the dense image would hold, decoded from the WS.hex words `ws`, each layer
    at the weight base its descriptor (and program.json) gives."""
    config = AccelConfig.from_json(doc["config"])
    placed: list[tuple[int, list[int]]] = []
    for info in doc["layers"]:
        if info["kind"] != "conv" or info.get("codebook") is not None:
            continue
        record = info.get("weight_stream")
        if not isinstance(record, dict):
            raise DataError(f"program.json: conv layer {info['index']} ({info['name']}) has no weight_stream record")
        layer = _conv_layer_from_json(info)
        layer.weights = decode_weight_record(layer, ws, record["base"], config.bus_bits, record["words"])
        placed.append((info["weight_base"], layer_weight_words(layer, config)))
    w8 = [0] * max((base + len(words) for base, words in placed), default=0)
    for base, words in placed:
        w8[base : base + len(words)] = words
    return w8


def _signed(word: int, bits: int = PARAM_BITS) -> int:
    return word - (1 << bits) if word >> (bits - 1) else word


def decode_descriptor(words: list[int]) -> dict:
    """The fields of one descriptor (two's-complement fields as signed ints)."""
    w0 = words[0]
    if (w0 & 0xFF) >= len(KINDS):
        raise DataError(f"descriptor kind {w0 & 0xFF} is not one of {KINDS}")
    if (words[8] >> 24 & 0xFF) not in PACKINGS:
        raise DataError(f"descriptor packing mode {words[8] >> 24 & 0xFF} is not one of {sorted(PACKINGS)}")
    if not words[21] or words[1] % words[21]:
        raise DataError(f"descriptor word 21 (input channels per group) {words[21]} does not divide in_ch {words[1]}")
    return {
        "kind": KINDS[w0 & 0xFF], "codebook": bool(w0 & FLAG_CODEBOOK), "raw_output": bool(w0 & FLAG_RAW),
        "in_signed": bool(w0 & FLAG_IN_SIGNED), "out_signed": bool(w0 & FLAG_OUT_SIGNED),
        "in2_signed": bool(w0 & FLAG_IN2_SIGNED), "map": bool(w0 & FLAG_MAP),
        "in_ch": words[1], "in_h": words[2], "in_w": words[3],
        "out_ch": words[4], "out_h": words[5], "out_w": words[6],
        "kh": words[7] & 0xFF, "kw": words[7] >> 8 & 0xFF, "sh": words[7] >> 16 & 0xFF, "sw": words[7] >> 24 & 0xFF,
        "ph": words[8] & 0xFF, "pw": words[8] >> 8 & 0xFF, "weight_bits": words[8] >> 16 & 0xFF,
        "packing": words[8] >> 24 & 0xFF,
        "z_in": _signed(words[9]), "z_out": _signed(words[10]),
        "clamp_lo": _signed(words[11]), "clamp_hi": _signed(words[12]),
        "weight_base": words[13], "param_base": words[14], "codebook_base": words[15],
        "in_base": words[16], "in2_base": words[17], "out_base": words[18], "z_in2": _signed(words[19]),
        "lane_multipliers": (words[20] & 0xFFFF, words[20] >> LANE_M_SHIFT & 0xFFFF),
        "groups": words[1] // words[21],   # word 21: input channels per convolution group (in_ch / groups)
    }


def channel_table(memory_param: list[int], d: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(the [out_ch, 3] bias / multiplier / shift table or None, the [out_ch] input addresses or None)
    of a decoded descriptor, from param.hex words (§6: per channel bias, m, s, then the address)."""
    has_table = d["kind"] in REQUANT_KINDS
    per = PARAM_WORDS_PER_CHANNEL * has_table + d["map"]
    if not per:
        return None, None
    words = np.array([_signed(w) for w in memory_param[d["param_base"] : d["param_base"] + per * d["out_ch"]]],
                     dtype=np.int64).reshape(d["out_ch"], per)
    table = words[:, :PARAM_WORDS_PER_CHANNEL].copy() if has_table else None
    return table, (words[:, -1].copy() if d["map"] else None)


def read_program(out_dir: str | os.PathLike) -> Program:
    """Rebuild the Program from the hex files (names and code widths from program.json)."""
    doc, memory = read_memory(out_dir)
    config = AccelConfig.from_json(doc["config"])
    n_layers = memory.param[0]
    if n_layers != len(doc["layers"]):
        raise DataError(f"{out_dir}: param.hex holds {n_layers} layers, program.json {len(doc['layers'])}")
    layers = []
    for i, info in enumerate(doc["layers"]):
        d = decode_descriptor(memory.param[1 + DESCRIPTOR_WORDS * i : 1 + DESCRIPTOR_WORDS * (i + 1)])
        layer = Layer(index=i, name=info["name"], kind=d["kind"], in_ch=d["in_ch"], in_h=d["in_h"], in_w=d["in_w"],
                      out_ch=d["out_ch"], out_h=d["out_h"], out_w=d["out_w"], kh=d["kh"], kw=d["kw"],
                      sh=d["sh"], sw=d["sw"], ph=d["ph"], pw=d["pw"], in_bits=info["in_bits"],
                      in_signed=d["in_signed"], out_bits=info["out_bits"], out_signed=d["out_signed"],
                      z_in=d["z_in"], z_out=d["z_out"], clamp_lo=d["clamp_lo"], clamp_hi=d["clamp_hi"],
                      raw_output=d["raw_output"], weight_bits=d["weight_bits"], groups=d["groups"],
                      in_base=d["in_base"], in2_base=d["in2_base"], out_base=d["out_base"],
                      in2_bits=info.get("in2_bits", 0), in2_signed=d["in2_signed"], z_in2=d["z_in2"],
                      lane_multipliers=d["lane_multipliers"], weight_storage=info.get("weight_storage", "dense"),
                      packing=d["packing"] if d["kind"] == "conv" else 1,
                      storage_fields=info.get("storage_fields", {}))
        if d["codebook"]:
            cb = memory.cb8[d["codebook_base"] : d["codebook_base"] + CODEBOOK_SIZE]
            layer.codebook = np.array([_signed(v, CODEBOOK_BITS) for v in cb], dtype=np.int64)
        table, layer.channel_map = channel_table(memory.param, d)
        if table is not None:
            layer.bias, layer.multiplier, layer.shift = (table[:, k].copy() for k in range(3))
        if layer.kind == "conv":
            layer.weights = read_layer_weights(layer, config, memory.w2 if layer.is_codebook else memory.w8,
                                               d["weight_base"])
        check_packing(layer)
        layers.append(layer)
    return Program(config=config, layers=layers, input_name=doc["input_name"], metadata=doc.get("metadata", {}))


def read_layer_weights(layer: Layer, config: AccelConfig, words: list[int], base: int, *,
                       stream: bool = False) -> np.ndarray:
    """[out_ch, K] weights (or codebook indices) of a conv layer from its W8/W2 words, or with
    `stream` from its WS.hex record at word `base` (in the layer's weight_storage format)."""
    if stream:
        return decode_weight_record(layer, words, base, config.bus_bits)
    rows = unpack_blocks(words, base, storage_bits(layer), config.bus_bits, channel_groups(layer, config),
                         term_blocks(layer, config), group_channels(layer, config), config.simd,
                         signed=not layer.is_codebook)
    return rows[: layer.out_ch, : layer.terms]


def unpack_blocks(words: list[int], base: int, bits: int, bus_bits: int, groups: int, blocks: int, rows: int,
                  simd: int, signed: bool) -> np.ndarray:
    """[groups·rows, blocks·simd]: a conv layer's weight-ring entries from its words at `base` (§6:
    `groups` channel groups of `blocks` term blocks, each block `rows`·`simd` entries of `bits` on
    whole bus words), back in [channel][term] order, padded rows and terms included."""
    block_bus_words = words_per_block(rows * simd, bits, bus_bits)
    per_block = block_bus_words * (bus_bits // bits)   # entries of a block, its padding included
    n_words = groups * blocks * block_bus_words
    entries = unpack_elements(words[base : base + n_words], bits, bus_bits, groups * blocks * per_block, signed)
    entries = entries.reshape(groups, blocks, per_block)[:, :, : rows * simd]
    return entries.reshape(groups, blocks, rows, simd).transpose(0, 2, 1, 3).reshape(groups * rows, blocks * simd)


def read_input_codes(out_dir: str | os.PathLike) -> np.ndarray:
    """In8.hex as int64 codes [N, C, H, W] of the first layer (signedness from its descriptor)."""
    doc, memory = read_memory(out_dir)
    first = doc["layers"][0]
    c, h, w = first["in"]
    bus = doc["config"]["bus_bits"]
    per_image = math.ceil(c * h * w * MAX_ACT_BITS / bus)
    n = doc["images"]
    out = [unpack_elements(memory.inputs[i * per_image : (i + 1) * per_image], MAX_ACT_BITS, bus, c * h * w, first["in_signed"])
           for i in range(n)]
    return np.stack(out).reshape(n, c, h, w) if out else np.zeros((0, c, h, w), dtype=np.int64)


def read_expected(out_dir: str | os.PathLike, index: int) -> np.ndarray:
    """expected/Lii.hex as int64 [N, out_ch, out_h, out_w] (signedness from program.json)."""
    out = Path(out_dir)
    doc = _read_program_json(out)
    check_file(out, doc, expected_file(index))
    info = doc["layers"][index]
    bits = ACC_BITS if info["raw_output"] else MAX_ACT_BITS
    values = np.array(read_hex(out / expected_file(index), bits), dtype=np.int64)
    if info["out_signed"]:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values.reshape(doc["images"], *info["out"])
