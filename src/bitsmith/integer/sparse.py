"""Storage formats for sparse integer weight codes (docs/sparse-formats.md): an encoder to a bit stream,
an exact decoder and a size formula for each, so the cost of storing a pruned layer can be read off
its statistics without encoding it.

The input is a 1-D array of n codes or a 2-D array [rows, cols] (rows = output channels, e.g. a conv
weight flattened to [O, K]) of integer codes of width b: signed b in 2..16 (codes in
[−2^(b−1), 2^(b−1) − 1]) or unsigned b in 1..16 ([0, 2^b − 1]). An entry is *pruned* when its code
is 0 (a weight's zero point is 0, docs/arithmetic.md §3). nnz = number of non-zero codes.
"Row-major" is numpy's C order; the 1-D and row-major formats flatten a 2-D array that way.

**Bit order.** The payload is a sequence of bits s_0, s_1, …; bit s_i is bit (i mod 8) (value
2^(i mod 8)) of byte ⌊i/8⌋ (LSB first). A w-bit field holding the unsigned value u occupies w
consecutive bits, least significant first; a signed code v is written as u = v mod 2^b (two's
complement). Equivalently: read the payload as one little-endian integer P; the field at bit offset
o of width w is (P >> o) mod 2^w. Bits of the last byte past `length_bits` are 0.

**Formats** (z_i = number of zeros before the i-th non-zero in row-major order, counted from the
previous non-zero or from the start; zeros after the last non-zero are *not* counted):

- dense: every code, row-major, b bits each.
      size = n·b
- bitmask: n mask bits (row-major, 1 = non-zero), then the nnz non-zero codes, b bits each.
      size = n + nnz·b
- run-length (zero runs, run field r = `run_bits` bits, R = 2^r − 1): pairs (run: r bits, code: b bits).
  A pair means "skip `run` zeros, then the next position holds `code`". For each non-zero, while
  more than R zeros precede it, a *filler zero* (R, 0) is emitted first: it stands for R zeros plus
  one explicit zero code, i.e. R + 1 = 2^r positions (Deep Compression's filler zero); then
  (remaining zeros, code). Trailing zeros after the last non-zero are implied by the known n, so an
  all-zero array is an empty stream. A pair with code 0 is only ever a filler, and never the last.
      size = (nnz + Σ_i ⌊z_i / 2^r⌋) · (r + b)
- relative (Deep Compression's relative index, index field k = `index_bits` bits, G = 2^k − 1):
  pairs (d: k bits, code: b bits) where d = the position's difference to the previous non-zero's
  (the first's to position −1), so d = 1 means adjacent and d = 0 is never written. When d > G a
  filler (G, 0) is emitted first: it advances G positions and writes an explicit zero there. As
  with run-length, trailing zeros are implied. (Storing d − 1 instead would make this exactly the
  run-length format; the literal difference lets a decoder update its address as p += d.)
      size = (nnz + Σ_i ⌊z_i / (2^k − 1)⌋) · (k + b)
- csr (2-D only): rows + 1 row pointers ptr[0..rows] (ptr[0] = 0, ptr[rows] = nnz, non-decreasing;
  row i holds entries ptr[i] .. ptr[i+1] − 1), each P = ⌈log2(nnz + 1)⌉ bits (0 bits when nnz = 0:
  every pointer is then 0); then per non-zero, row-major, the pair (column index: C bits, code: b
  bits) with C = max(1, ⌈log2 cols⌉); column indices strictly increase within a row.
      size = (rows + 1)·P + nnz·(C + b)
- csc (2-D only): csr of the transpose: cols + 1 column pointers, then per non-zero in column-major
  order (row index: max(1, ⌈log2 rows⌉) bits, code: b bits).
      size = (cols + 1)·P + nnz·(max(1, ⌈log2 rows⌉) + b)
- huffman (Deep Compression's last stage; `bitsmith.integer.huffman`): the zero runs z_i and the
  non-zero codes, each Huffman-coded with its own canonical table. Payload: V, the number of
  distinct non-zero codes (b + 1 bits); V entries (code: b bits, codeword length: 6 bits), codes
  increasing; G, the number of distinct runs (W = bit length of n bits); G entries (run:
  R = max(1, ⌈log2 n⌉) bits, length: 6 bits), runs increasing; then per non-zero, row-major, the
  run's codeword followed by the code's codeword. No filler: a run of any length is one symbol.
  An array without non-zeros has an empty payload (nnz = 0 in the header says it all).
      size = (b + 1) + V·(b + 6) + W + G·(R + 6) + Σ_i (ℓ_run(z_i) + ℓ_code(c_i))   (0 when nnz = 0)
  with ℓ the Huffman codeword lengths of the two histograms (so the formula needs the histograms,
  not just nnz; it is still computed without encoding). Decoding is sequential (a prefix code):
  a storage format for files and off-chip memory, not one a PE array streams from.

**Header.** The sizes above are *payload* bits only. What a decoder needs besides the payload (the
format, b, signedness, shape, nnz, the run/index field width and `length_bits`) is a fixed header of
HEADER_WORDS = 5 little-endian 32-bit words (`Encoded.to_bytes`), the same 160 bits for every
format, so it never changes which format is smallest:
    word 0: format id (bits 0–7, index into FORMATS) | b (8–15) | signed (16) | ndim (17–18) |
            reserved, 0 (19–23) | run_bits or index_bits, 0 for other formats (24–31)
    word 1: n (1-D) or rows;  word 2: 0 (1-D) or cols;  word 3: nnz;  word 4: length_bits.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from bitsmith.errors import ConfigError, DataError
from bitsmith.integer import huffman

FORMATS = ("dense", "bitmask", "run-length", "relative", "csr", "csc", "huffman")
#: Formats defined on 2-D arrays only.
MATRIX_FORMATS = ("csr", "csc")
#: Code widths (inclusive). Signed codes need a sign bit and a magnitude bit (docs/arithmetic.md §3).
SIGNED_BITS = (2, 16)
UNSIGNED_BITS = (1, 16)
#: Widths (inclusive) of the run field of run-length and the index field of relative indexing.
FIELD_BITS = (1, 16)
DEFAULT_RUN_BITS = 4
#: Deep Compression uses 5 bits for fully connected layers and 8 for conv layers.
DEFAULT_INDEX_BITS = 5
HEADER_WORDS = 5
HEADER_BITS = 32 * HEADER_WORDS
_WORD_MAX = (1 << 32) - 1
_HEADER = struct.Struct("<5I")


# -- arguments ------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """The inclusive range of `bits`-wide codes (the formula of arithmetic.int_range, restated here
    so this numpy-only module does not load torch), after checking the width is one this module stores."""
    lo_bits, hi_bits = SIGNED_BITS if signed else UNSIGNED_BITS
    if not _is_int(bits) or not lo_bits <= bits <= hi_bits:
        kind = "signed" if signed else "unsigned"
        raise ConfigError(f"code width {bits!r} is not supported for {kind} codes; "
                          f"allowed: {lo_bits} to {hi_bits} bits")
    bits = int(bits)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _check_field_width(name: str, value) -> int:
    if not _is_int(value) or not FIELD_BITS[0] <= value <= FIELD_BITS[1]:
        raise ConfigError(f"{name} must be an integer from {FIELD_BITS[0]} to {FIELD_BITS[1]}, got {value!r}")
    return int(value)


def _check_format(fmt: str, ndim: int) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown sparse format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt in MATRIX_FORMATS and ndim != 2:
        flat_formats = ", ".join(f for f in FORMATS if f not in MATRIX_FORMATS)
        raise ConfigError(f"format {fmt!r} needs a 2-D array [rows, cols], got {ndim}-D; flatten a conv "
                          f"weight to [O, K] first, or use one of {flat_formats}")


def _as_array(codes) -> np.ndarray:
    """`codes` as an array of integer dtype, 1-D or 2-D (not yet range-checked)."""
    array = np.asarray(codes)
    if array.dtype.kind not in "iu":
        raise ConfigError(f"codes must be an array of an integer dtype (int8..int64, uint8..uint64), "
                          f"got dtype {array.dtype}")
    if array.ndim not in (1, 2):
        raise ConfigError(f"codes must be a 1-D array or a 2-D array [rows, cols], got shape {array.shape}")
    return array


def _as_codes(codes, bits: int, signed: bool) -> np.ndarray:
    """`codes` validated against the width and converted to a C-ordered int64 array."""
    array = _as_array(codes)
    lo, hi = code_range(bits, signed)
    if array.size:
        # min/max as Python ints: exact for every integer dtype (uint64 would not fit int64).
        cmin, cmax = int(array.min()), int(array.max())
        if cmin < lo or cmax > hi:
            kind = "signed" if signed else "unsigned"
            raise ConfigError(f"codes span [{cmin}, {cmax}], outside the {bits}-bit {kind} range [{lo}, {hi}]")
    return np.ascontiguousarray(array, dtype=np.int64)


# -- statistics and the size formulas -------------------------------------------------------------------------

@dataclass(frozen=True)
class CodeStats:
    """What the size formulas need of an array: its shape, nnz and the zero run z_i before each
    non-zero (row-major; trailing zeros excluded)."""

    shape: tuple[int, ...]
    nnz: int
    zero_runs: np.ndarray
    #: The non-zero codes in row-major order (the huffman format's histogram).
    values: np.ndarray

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def code_stats(codes) -> CodeStats:
    """The statistics of `codes` (any integer array, 1-D or 2-D; not range-checked)."""
    array = _as_array(codes)
    positions = np.flatnonzero(array)
    # zeros before each non-zero: the gap to the previous non-zero (the first's to position −1) minus one
    runs = np.diff(positions, prepend=-1) - 1
    return CodeStats(tuple(int(d) for d in array.shape), int(positions.size), runs.astype(np.int64),
                     array.ravel()[positions].astype(np.int64))


def index_width(count: int) -> int:
    """Bits of an index into `count` items: ⌈log2 count⌉, at least 1."""
    return max(1, (count - 1).bit_length())


def pointer_width(nnz: int) -> int:
    """Bits of a CSR/CSC pointer, a value in 0..nnz: ⌈log2(nnz + 1)⌉ (0 when nnz = 0)."""
    return nnz.bit_length()


def _fixed_payload_bits(fmt: str, shape: tuple[int, ...], nnz: int, bits: int) -> int:
    """The payload length of the formats whose length follows from the header alone."""
    n = math.prod(shape)
    if fmt == "dense":
        return n * bits
    if fmt == "bitmask":
        return n + nnz * bits
    rows, cols = shape if fmt == "csr" else shape[::-1]
    return (rows + 1) * pointer_width(nnz) + nnz * (index_width(cols) + bits)


def _huffman_fields(n: int) -> tuple[int, int]:
    """(width of the distinct-run count, width of a run symbol) of the huffman format for n codes."""
    return max(0, n).bit_length(), index_width(max(1, n))


def _huffman_table_bits(stats: CodeStats, bits: int) -> int:
    count_bits, run_bits = _huffman_fields(stats.size)
    distinct_values = np.unique(stats.values).size
    distinct_runs = np.unique(stats.zero_runs).size
    return ((bits + 1) + distinct_values * (bits + huffman.LENGTH_BITS)
            + count_bits + distinct_runs * (run_bits + huffman.LENGTH_BITS))


def _pair_step(fmt: str, field_bits: int) -> tuple[int, int]:
    """(positions a filler advances, value added to a run to give its field) of run-length / relative."""
    if fmt == "run-length":
        return 1 << field_bits, 0
    return (1 << field_bits) - 1, 1


def payload_bits(fmt: str, stats: CodeStats, bits: int, *, signed: bool = True, run_bits: int = DEFAULT_RUN_BITS,
                 index_bits: int = DEFAULT_INDEX_BITS) -> int:
    """The exact payload length in bits of `fmt` for an array with these statistics (the formulas of
    the module docstring), without encoding; the header (HEADER_BITS) is not included."""
    code_range(bits, signed)
    run_bits = _check_field_width("run_bits", run_bits)
    index_bits = _check_field_width("index_bits", index_bits)
    _check_format(fmt, len(stats.shape))
    if fmt in ("run-length", "relative"):
        field = run_bits if fmt == "run-length" else index_bits
        step, _ = _pair_step(fmt, field)
        fillers = int((stats.zero_runs // step).sum())
        return (stats.nnz + fillers) * (field + bits)
    if fmt == "huffman":
        if stats.nnz == 0:
            return 0
        return _huffman_table_bits(stats, bits) + huffman.coded_bits(stats.zero_runs) + huffman.coded_bits(stats.values)
    return _fixed_payload_bits(fmt, stats.shape, stats.nnz, bits)


def format_sizes(codes, bits: int, *, signed: bool = True, run_bits: int = DEFAULT_RUN_BITS,
                 index_bits: int = DEFAULT_INDEX_BITS) -> dict[str, int]:
    """Payload bits of every format that applies to `codes` (csr/csc only for 2-D), in FORMATS order."""
    array = _as_codes(codes, bits, signed)
    stats = code_stats(array)
    return {fmt: payload_bits(fmt, stats, bits, signed=signed, run_bits=run_bits, index_bits=index_bits)
            for fmt in FORMATS if array.ndim == 2 or fmt not in MATRIX_FORMATS}


def best_format(codes, bits: int, *, signed: bool = True, run_bits: int = DEFAULT_RUN_BITS,
                index_bits: int = DEFAULT_INDEX_BITS) -> tuple[str, int]:
    """(name, payload bits) of the smallest format; a tie goes to the earlier one in FORMATS (dense
    first: the simplest to read)."""
    sizes = format_sizes(codes, bits, signed=signed, run_bits=run_bits, index_bits=index_bits)
    name = min(sizes, key=lambda f: (sizes[f], FORMATS.index(f)))
    return name, sizes[name]


# -- bit packing ------------------------------------------------------------------------------------------

def _field_matrix(values: np.ndarray, width: int) -> np.ndarray:
    """[len(values), width] bits of each value, LSB first; negative values in two's complement."""
    u = values.astype(np.int64) & ((1 << width) - 1)
    return ((u[:, None] >> np.arange(width, dtype=np.int64)) & 1).astype(np.uint8)


def _pack(*sections: np.ndarray) -> tuple[bytes, int]:
    """Concatenate bit matrices (each read row by row) into (payload bytes, length in bits)."""
    stream = np.concatenate([s.ravel() for s in sections]) if sections else np.zeros(0, np.uint8)
    return np.packbits(stream, bitorder="little").tobytes(), int(stream.size)


class _Reader:
    """Reads consecutive groups of fields from a payload already checked to be `length_bits` long."""

    def __init__(self, payload: bytes, length_bits: int) -> None:
        self.bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")[:length_bits]
        self.offset = 0

    def fields(self, count: int, widths: tuple[int, ...], what: str) -> list[np.ndarray]:
        """`count` groups of fields of the given widths, one int64 array per field."""
        total = sum(widths)
        end = self.offset + count * total
        if end > self.bits.size:
            raise DataError(f"the payload ends inside the {what}: it needs {end} bits, it has {self.bits.size}")
        block = self.bits[self.offset:end].reshape(count, total).astype(np.int64)
        self.offset = end
        out, start = [], 0
        for width in widths:
            weights = np.left_shift(np.int64(1), np.arange(width, dtype=np.int64))
            out.append(block[:, start:start + width] @ weights)
            start += width
        return out


def _signed_values(u: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    return u - ((u >> (bits - 1)) << bits) if signed else u


# -- the encoded stream -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """One encoded array: the header fields and the payload of `length_bits` bits."""

    format: str
    bits: int
    signed: bool
    shape: tuple[int, ...]
    nnz: int
    #: run_bits (run-length) or index_bits (relative); 0 for the other formats.
    field_bits: int
    payload: bytes
    length_bits: int

    @property
    def total_bits(self) -> int:
        """Header plus payload bits (the payload's last byte is padded, so to_bytes is longer)."""
        return HEADER_BITS + self.length_bits

    def to_bytes(self) -> bytes:
        """The header words (module docstring) followed by the payload bytes."""
        _check_encoded(self)
        dims = self.shape if len(self.shape) == 2 else (self.shape[0], 0)
        word0 = (FORMATS.index(self.format) | self.bits << 8 | int(self.signed) << 16 | len(self.shape) << 17
                 | self.field_bits << 24)
        return _HEADER.pack(word0, *dims, self.nnz, self.length_bits) + self.payload

    @classmethod
    def from_bytes(cls, data: bytes) -> Encoded:
        """Parse `to_bytes` output; a short or inconsistent header is a DataError."""
        if len(data) < _HEADER.size:
            raise DataError(f"an encoded array starts with a {_HEADER.size}-byte header; got only {len(data)} bytes")
        word0, dim0, dim1, nnz, length_bits = _HEADER.unpack_from(data)
        fid, bits, signed, ndim = word0 & 0xFF, (word0 >> 8) & 0xFF, (word0 >> 16) & 1, (word0 >> 17) & 3
        if (word0 >> 19) & 0x1F:
            raise DataError(f"header word 0 = {word0:#010x} has reserved bits 19-23 set; they must be 0")
        if fid >= len(FORMATS):
            raise DataError(f"header names format id {fid}; allowed: 0 to {len(FORMATS) - 1} ({', '.join(FORMATS)})")
        if ndim not in (1, 2):
            raise DataError(f"header says the array has {ndim} dimensions; allowed: 1 or 2")
        if ndim == 1 and dim1:
            raise DataError(f"header of a 1-D array has a second dimension {dim1}; it must be 0")
        shape = (dim0,) if ndim == 1 else (dim0, dim1)
        encoded = cls(FORMATS[fid], bits, bool(signed), shape, nnz, word0 >> 24, bytes(data[_HEADER.size:]),
                      length_bits)
        _check_encoded(encoded)
        return encoded


def _check_encoded(enc: Encoded) -> None:
    """The header fields are consistent and the payload has exactly length_bits bits (DataError)."""
    if enc.format not in FORMATS:
        raise DataError(f"encoded format {enc.format!r} is unknown; allowed: {', '.join(FORMATS)}")
    lo_bits, hi_bits = SIGNED_BITS if enc.signed else UNSIGNED_BITS
    if not _is_int(enc.bits) or not lo_bits <= enc.bits <= hi_bits:
        raise DataError(f"encoded code width {enc.bits!r} is not allowed; {'signed' if enc.signed else 'unsigned'} "
                        f"codes have {lo_bits} to {hi_bits} bits")
    uses_field = enc.format in ("run-length", "relative")
    if uses_field and not (_is_int(enc.field_bits) and FIELD_BITS[0] <= enc.field_bits <= FIELD_BITS[1]):
        raise DataError(f"encoded {enc.format} field width {enc.field_bits!r} is not allowed; "
                        f"{FIELD_BITS[0]} to {FIELD_BITS[1]} bits")
    if not uses_field and enc.field_bits != 0:
        raise DataError(f"encoded {enc.format} stream has field width {enc.field_bits!r}; it must be 0 for this format")
    if (not isinstance(enc.shape, tuple) or len(enc.shape) not in (1, 2)
            or not all(_is_int(d) and 0 <= d <= _WORD_MAX for d in enc.shape)):
        raise DataError(f"encoded shape {enc.shape!r} is not allowed; 1 or 2 dimensions, each 0 to {_WORD_MAX}")
    if enc.format in MATRIX_FORMATS and len(enc.shape) != 2:
        raise DataError(f"encoded {enc.format} stream has shape {enc.shape}; the format needs 2 dimensions")
    n = math.prod(enc.shape)
    if not _is_int(enc.nnz) or not 0 <= enc.nnz <= n:
        raise DataError(f"encoded nnz {enc.nnz!r} is not allowed; an array of {n} codes has 0 to {n} non-zeros")
    if not isinstance(enc.payload, (bytes, bytearray)) or not _is_int(enc.length_bits) or enc.length_bits < 0:
        raise DataError("an encoded payload must be bytes with a length_bits >= 0")
    need = (enc.length_bits + 7) // 8
    if len(enc.payload) != need:
        raise DataError(f"the {enc.format} payload is {len(enc.payload)} bytes; length_bits = {enc.length_bits} "
                        f"needs exactly {need} (truncated or padded stream)")
    if enc.length_bits % 8 and enc.payload[-1] >> (enc.length_bits % 8):
        raise DataError(f"the bits past length_bits = {enc.length_bits} in the last payload byte must be 0")


# -- encoders ---------------------------------------------------------------------------------------------

def _encode_pairs(flat: np.ndarray, bits: int, field_bits: int, fmt: str) -> tuple[bytes, int]:
    positions = np.flatnonzero(flat)
    values = flat[positions]
    runs = np.diff(positions, prepend=-1) - 1
    step, offset = _pair_step(fmt, field_bits)
    fillers = runs // step
    # Each non-zero is preceded by its fillers: pairs = fillers + 1 per non-zero, its own pair last.
    last = np.cumsum(fillers + 1) - 1
    total = int(last[-1]) + 1 if last.size else 0
    fields = np.full(total, step - 1 + offset, dtype=np.int64)   # a filler advances `step` positions
    codes = np.zeros(total, dtype=np.int64)
    fields[last] = runs - fillers * step + offset
    codes[last] = values
    return _pack(np.hstack([_field_matrix(fields, field_bits), _field_matrix(codes, bits)]))


def _encode_csr(matrix: np.ndarray, bits: int) -> tuple[bytes, int]:
    rows, cols = matrix.shape
    row_of, col_of = np.nonzero(matrix)   # row-major order
    nnz = row_of.size
    pointers = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=rows))]).astype(np.int64)
    pairs = np.hstack([_field_matrix(col_of, index_width(cols)), _field_matrix(matrix[row_of, col_of], bits)])
    return _pack(_field_matrix(pointers, pointer_width(nnz)), pairs)


def _write_huffman_table(values: np.ndarray, width: int, count_width: int) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """(the stored table as bits: count, then (symbol, length) per distinct symbol; {symbol: codeword})."""
    symbols, counts = huffman.histogram(values)
    lengths = huffman.code_lengths(symbols, counts)
    table = np.hstack([_field_matrix(symbols, width), _field_matrix(lengths, huffman.LENGTH_BITS)])
    return (np.concatenate([_field_matrix(np.array([symbols.size]), count_width).ravel(), table.ravel()]),
            huffman.canonical_codewords(symbols, lengths))


def _encode_huffman(flat: np.ndarray, bits: int) -> tuple[bytes, int]:
    stats = code_stats(flat)
    if stats.nnz == 0:
        return _pack()
    count_bits, run_bits = _huffman_fields(flat.size)
    value_table, value_words = _write_huffman_table(stats.values, bits, bits + 1)
    run_table, run_words = _write_huffman_table(stats.zero_runs, run_bits, count_bits)
    stream = []
    for run, value in zip(stats.zero_runs.tolist(), stats.values.tolist()):
        for code, length in (run_words[run], value_words[value]):
            stream.extend((code >> (length - 1 - j)) & 1 for j in range(length))
    return _pack(value_table, run_table, np.array(stream, dtype=np.uint8))


def encode(codes, fmt: str, bits: int, *, signed: bool = True, run_bits: int = DEFAULT_RUN_BITS,
           index_bits: int = DEFAULT_INDEX_BITS) -> Encoded:
    """Encode `codes` (b-bit integer codes, 1-D or 2-D) in format `fmt`; decode(encode(...)) returns them."""
    array = _as_codes(codes, bits, signed)
    run_bits = _check_field_width("run_bits", run_bits)
    index_bits = _check_field_width("index_bits", index_bits)
    _check_format(fmt, array.ndim)
    flat = array.ravel()
    nnz = int(np.count_nonzero(flat))
    field_bits = {"run-length": run_bits, "relative": index_bits}.get(fmt, 0)
    if fmt == "dense":
        payload, length = _pack(_field_matrix(flat, bits))
    elif fmt == "bitmask":
        payload, length = _pack((flat != 0).astype(np.uint8), _field_matrix(flat[flat != 0], bits))
    elif fmt in ("run-length", "relative"):
        payload, length = _encode_pairs(flat, bits, field_bits, fmt)
    elif fmt == "huffman":
        payload, length = _encode_huffman(flat, bits)
    else:
        payload, length = _encode_csr(array if fmt == "csr" else np.ascontiguousarray(array.T), bits)
    too_big = [f"{name} = {v}" for name, v in (("a dimension", max(array.shape)), ("length_bits", length))
               if v > _WORD_MAX]
    if too_big:
        raise ConfigError(f"the array is too large for the 32-bit header fields ({', '.join(too_big)}; "
                          f"at most {_WORD_MAX})")
    return Encoded(fmt, int(bits), bool(signed), tuple(int(d) for d in array.shape), nnz, field_bits, payload, length)


# -- decoders ---------------------------------------------------------------------------------------------

#: Most codes a decoded array may hold (2^28: 2 GiB as int64). A header is untrusted input: a
#: run-length stream of a few bytes can promise billions of trailing zeros.
MAX_DECODED_CODES = 1 << 28


def _zeros(n: int, enc: Encoded) -> np.ndarray:
    if n > MAX_DECODED_CODES:
        raise DataError(f"the header's shape {enc.shape} promises {n:,} codes, more than the {MAX_DECODED_CODES:,} "
                        "this decoder accepts (a corrupt or hostile header?)")
    try:
        return np.zeros(n, dtype=np.int64)
    except (MemoryError, ValueError, OverflowError):
        raise DataError(f"the header's shape {enc.shape} ({n} codes) is too large to allocate") from None


def _decode_pairs(enc: Encoded, reader: _Reader, n: int) -> np.ndarray:
    width = enc.field_bits + enc.bits
    if enc.length_bits % width:
        raise DataError(f"a {enc.format} payload is a whole number of {width}-bit pairs; length_bits = "
                        f"{enc.length_bits} is not (truncated stream)")
    count = enc.length_bits // width
    fields, raw = reader.fields(count, (enc.field_bits, enc.bits), f"{enc.format} pairs")
    codes = _signed_values(raw, enc.bits, enc.signed)
    step, offset = _pair_step(enc.format, enc.field_bits)
    runs = fields - offset
    if (runs < 0).any():
        raise DataError(f"relative pair {int(np.argmax(runs < 0))} has index difference 0; differences are 1 to {step}")
    fillers = codes == 0
    bad = fillers & (runs != step - 1)
    if bad.any():
        j = int(np.argmax(bad))
        raise DataError(f"{enc.format} pair {j} has code 0 with field {int(fields[j])}; a zero code is only a filler, "
                        f"whose field is {step - 1 + offset}")
    if count and fillers[-1]:
        raise DataError(f"the {enc.format} stream ends with a filler zero; a filler always precedes a non-zero")
    if count - int(fillers.sum()) != enc.nnz:
        raise DataError(f"the {enc.format} stream holds {count - int(fillers.sum())} non-zero codes; the header says "
                        f"nnz = {enc.nnz}")
    positions = np.cumsum(runs + 1) - 1
    if count and positions[-1] >= n:
        j = int(np.argmax(positions >= n))
        raise DataError(f"{enc.format} pair {j} points past the end: position {int(positions[j])}, "
                        f"the array has {n} codes")
    out = _zeros(n, enc)
    out[positions] = codes
    return out


def _decode_csr(enc: Encoded, reader: _Reader, rows: int, cols: int) -> np.ndarray:
    name = "row" if enc.format == "csr" else "column"
    other = "column" if enc.format == "csr" else "row"
    (pointers,) = reader.fields(rows + 1, (pointer_width(enc.nnz),), f"{name} pointers")
    if pointers[0] != 0 or pointers[-1] != enc.nnz:
        raise DataError(f"{name} pointers run from {int(pointers[0])} to {int(pointers[-1])}; they must run from 0 to "
                        f"nnz = {enc.nnz}")
    if (np.diff(pointers) < 0).any():
        i = int(np.argmax(np.diff(pointers) < 0))
        raise DataError(f"{name} pointers decrease at {name} {i}: {int(pointers[i])} then {int(pointers[i + 1])}; "
                        f"they must be non-decreasing")
    index, raw = reader.fields(enc.nnz, (index_width(cols), enc.bits), f"({other} index, code) pairs")
    if (index >= cols).any():
        j = int(np.argmax(index >= cols))
        raise DataError(f"{enc.format} entry {j} has {other} index {int(index[j])}; the matrix has {cols} {other}s")
    owner = np.repeat(np.arange(rows), np.diff(pointers))
    same = owner[1:] == owner[:-1]
    if (same & (index[1:] <= index[:-1])).any():
        j = int(np.argmax(same & (index[1:] <= index[:-1]))) + 1
        raise DataError(f"{enc.format} entry {j}: {other} indices must strictly increase within a {name}")
    codes = _signed_values(raw, enc.bits, enc.signed)
    if (codes == 0).any():
        raise DataError(f"{enc.format} entry {int(np.argmax(codes == 0))} stores code 0; only non-zeros are stored")
    out = _zeros(rows * cols, enc).reshape(rows, cols)
    out[owner, index] = codes
    return out


def _read_huffman_table(reader: _Reader, width: int, count_width: int, limit: int, what: str):
    (count,) = reader.fields(1, (count_width,), f"{what} count")
    count = int(count[0])
    if count > limit:
        raise DataError(f"the huffman stream lists {count} distinct {what}s; at most {limit} are possible")
    symbols, lengths = reader.fields(count, (width, huffman.LENGTH_BITS), f"{what} table")
    return symbols, lengths


def _decode_huffman(enc: Encoded, reader: _Reader, n: int) -> np.ndarray:
    if enc.nnz == 0:
        if enc.length_bits:
            raise DataError(f"a huffman stream without non-zeros is empty; this one has {enc.length_bits} bits")
        return _zeros(n, enc)
    count_bits, run_bits = _huffman_fields(n)
    raw, value_lengths = _read_huffman_table(reader, enc.bits, enc.bits + 1, min(enc.nnz, 1 << enc.bits), "code")
    values = _signed_values(raw, enc.bits, enc.signed)
    runs, run_lengths = _read_huffman_table(reader, run_bits, count_bits, enc.nnz, "run")
    huffman.check_table(values, value_lengths, "code")
    huffman.check_table(runs, run_lengths, "run")
    if (values == 0).any():
        raise DataError("the huffman code table lists code 0; only non-zero codes are stored")
    if enc.nnz and (values.size == 0 or runs.size == 0):
        raise DataError(f"the huffman stream has an empty table but the header says nnz = {enc.nnz}")
    value_decoder = huffman.Decoder(values, value_lengths, "code")
    run_decoder = huffman.Decoder(runs, run_lengths, "run")
    bits, offset = reader.bits, reader.offset
    out = _zeros(n, enc)
    position = -1
    seen_runs, seen_values = [], []
    for _ in range(enc.nnz):
        run, offset = run_decoder.read(bits, offset)
        value, offset = value_decoder.read(bits, offset)
        position += run + 1
        if position >= n:
            raise DataError(f"a huffman run points past the end: position {position}, the array has {n} codes")
        out[position] = value
        seen_runs.append(run)
        seen_values.append(value)
    if offset != enc.length_bits:
        raise DataError(f"the huffman stream has {enc.length_bits - offset} bits left after its {enc.nnz} non-zeros; "
                        "length_bits and nnz disagree (corrupt stream)")
    # Only the encoder's own tables are accepted, as every other format accepts only canonical streams:
    # a prefix code that decodes but is not the Huffman code of what it decodes is a corrupt table.
    for what, seen, symbols, lengths in (("code", seen_values, values, value_lengths),
                                         ("run", seen_runs, runs, run_lengths)):
        got, counts = huffman.histogram(np.array(seen, dtype=np.int64))
        if not (np.array_equal(got, symbols) and np.array_equal(huffman.code_lengths(got, counts), lengths)):
            raise DataError(f"the huffman {what} table is not the Huffman code of the stream's {what}s "
                            "(a corrupt table)")
    return out


def decode(enc: Encoded) -> np.ndarray:
    """The int64 array of shape `enc.shape` that `enc` encodes; a truncated or inconsistent stream is a
    DataError naming what is wrong."""
    if not isinstance(enc, Encoded):
        raise ConfigError(f"decode takes an Encoded, got {type(enc).__name__}")
    _check_encoded(enc)
    n = math.prod(enc.shape)
    if enc.format not in ("run-length", "relative", "huffman"):
        need = _fixed_payload_bits(enc.format, enc.shape, enc.nnz, enc.bits)
        if enc.length_bits != need:
            raise DataError(f"a {enc.format} payload of shape {enc.shape} with nnz = {enc.nnz} has {need} bits; "
                            f"length_bits = {enc.length_bits} (truncated or inconsistent stream)")
    reader = _Reader(enc.payload, enc.length_bits)
    if enc.format == "dense":
        (raw,) = reader.fields(n, (enc.bits,), "dense codes")
        out = _signed_values(raw, enc.bits, enc.signed)
        if int(np.count_nonzero(out)) != enc.nnz:
            raise DataError(f"the dense stream holds {int(np.count_nonzero(out))} non-zero codes; the header says "
                            f"nnz = {enc.nnz}")
    elif enc.format == "bitmask":
        (mask,) = reader.fields(n, (1,), "bitmask")
        if int(mask.sum()) != enc.nnz:
            raise DataError(f"the bitmask marks {int(mask.sum())} non-zeros; the header says nnz = {enc.nnz}")
        (raw,) = reader.fields(enc.nnz, (enc.bits,), "bitmask codes")
        codes = _signed_values(raw, enc.bits, enc.signed)
        if (codes == 0).any():
            raise DataError(f"bitmask code {int(np.argmax(codes == 0))} is 0 where the mask marks a non-zero")
        out = _zeros(n, enc)
        out[mask.astype(bool)] = codes
    elif enc.format in ("run-length", "relative"):
        out = _decode_pairs(enc, reader, n)
    elif enc.format == "huffman":
        out = _decode_huffman(enc, reader, n)
    elif enc.format == "csr":
        out = _decode_csr(enc, reader, *enc.shape)
    else:
        out = np.ascontiguousarray(_decode_csr(enc, reader, enc.shape[1], enc.shape[0]).T)
    return out.reshape(enc.shape)
