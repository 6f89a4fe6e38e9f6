"""The sparse storage formats of bitsmith.integer.sparse (docs/sparse-formats.md).

Every format is checked three ways on thousands of derandomized hypothesis arrays (empty, one
element, all zeros, no zeros, every density, runs at and past the run/index field's limit, code widths
2..16 signed and 1..16 unsigned): the decoder returns the array exactly, the size formula equals the
encoded length, and the payload equals the bits an independent pure-Python encoder writes from the
definitions (so the layout is the documented one, not just self-consistent). Hand-computed bit
strings pin each format; corrupt streams are DataErrors and bad arguments ConfigErrors, never a traceback.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsmith.errors import ConfigError, DataError
from bitsmith.integer import sparse
from bitsmith.integer.arithmetic import int_range
from bitsmith.integer.sparse import (FORMATS, HEADER_BITS, Encoded, best_format, code_range, code_stats, decode,
                                     encode, format_sizes, payload_bits)

PROPERTIES = settings(max_examples=700, deadline=None, derandomize=True)


# -- an independent encoder, written from the definitions with Python lists ----------------------------

def field(value: int, width: int) -> list[int]:
    """A width-bit field, LSB first; negatives in two's complement."""
    return [(value >> i) & 1 for i in range(width)]


def oracle_bits(fmt: str, codes: np.ndarray, bits: int, run_bits: int, index_bits: int) -> list[int]:
    flat = [int(v) for v in codes.ravel()]
    out: list[int] = []
    if fmt == "dense":
        for v in flat:
            out += field(v, bits)
    elif fmt == "bitmask":
        out += [int(v != 0) for v in flat]
        for v in flat:
            if v:
                out += field(v, bits)
    elif fmt == "run-length":
        limit, zeros = (1 << run_bits) - 1, 0
        for v in flat:
            if v == 0:
                zeros += 1
                continue
            while zeros > limit:                 # filler: `limit` zeros and one explicit zero
                out += field(limit, run_bits) + field(0, bits)
                zeros -= limit + 1
            out += field(zeros, run_bits) + field(v, bits)
            zeros = 0
    elif fmt == "relative":
        limit, previous = (1 << index_bits) - 1, -1
        for p, v in enumerate(flat):
            if v == 0:
                continue
            d = p - previous
            while d > limit:                     # filler: an explicit zero `limit` positions on
                out += field(limit, index_bits) + field(0, bits)
                d -= limit
            out += field(d, index_bits) + field(v, bits)
            previous = p
    else:
        matrix = codes if fmt == "csr" else codes.T
        rows, cols = matrix.shape
        nnz = int(np.count_nonzero(matrix))
        pointer = max(0, nnz).bit_length()
        index = max(1, (cols - 1).bit_length())
        count = 0
        out += field(0, pointer)
        entries = []
        for r in range(rows):
            for c in range(cols):
                if matrix[r, c]:
                    entries += field(c, index) + field(int(matrix[r, c]), bits)
                    count += 1
            out += field(count, pointer)
        out += entries
    return out


def optimal_prefix_cost(values: list[int]) -> int:
    """Bits of an optimal prefix code of `values` (the sum of the merged weights of any Huffman merge:
    every optimal code has this cost, whatever its tie-breaking); a lone symbol costs 1 bit."""
    weights = sorted(Counter(values).values())
    if len(weights) == 1:
        return weights[0]
    cost = 0
    while len(weights) > 1:
        merged = weights.pop(0) + weights.pop(0)
        cost += merged
        weights = sorted(weights + [merged])
    return cost


def huffman_oracle_bits(codes: np.ndarray, bits: int) -> int:
    """The huffman format's payload length from its definition: the two tables (count field, then
    (symbol, 6-bit length) per distinct symbol) and the optimal cost of each coded sequence."""
    flat = [int(v) for v in codes.ravel()]
    n = len(flat)
    values = [v for v in flat if v]
    if not values:
        return 0                                 # nnz = 0: an empty payload
    runs, zeros = [], 0
    for v in flat:
        if v:
            runs.append(zeros)
            zeros = 0
        else:
            zeros += 1
    run_width = max(1, (n - 1).bit_length()) if n else 1
    tables = (bits + 1) + len(set(values)) * (bits + 6) + n.bit_length() + len(set(runs)) * (run_width + 6)
    return tables + (optimal_prefix_cost(values) + optimal_prefix_cost(runs) if values else 0)


def as_bytes(bit_list: list[int]) -> bytes:
    data = bytearray((len(bit_list) + 7) // 8)
    for i, b in enumerate(bit_list):
        data[i // 8] |= b << (i % 8)
    return bytes(data)


def bitstring(enc: Encoded) -> str:
    """s_0 s_1 … of the payload, as a string."""
    value = int.from_bytes(enc.payload, "little")
    return "".join(str((value >> i) & 1) for i in range(enc.length_bits))


def with_bits(enc: Encoded, bit_text: str, **changes) -> Encoded:
    """`enc` with its payload replaced by the given bit string (s_0 first)."""
    return dataclasses.replace(enc, payload=as_bytes([int(c) for c in bit_text]), length_bits=len(bit_text), **changes)


def check_everything(codes: np.ndarray, bits: int, signed: bool, run_bits: int, index_bits: int) -> None:
    params = dict(signed=signed, run_bits=run_bits, index_bits=index_bits)
    sizes = format_sizes(codes, bits, **params)
    assert list(sizes) == [f for f in FORMATS if codes.ndim == 2 or f not in ("csr", "csc")]
    stats = code_stats(codes)
    for fmt, size in sizes.items():
        enc = encode(codes, fmt, bits, **params)
        assert enc.length_bits == size == payload_bits(fmt, stats, bits, **params), fmt
        if fmt == "huffman":
            assert enc.length_bits == huffman_oracle_bits(codes, bits), fmt
        else:
            expected = oracle_bits(fmt, codes, bits, run_bits, index_bits)
            assert enc.length_bits == len(expected) and enc.payload == as_bytes(expected), fmt
        back = decode(enc)
        assert back.dtype == np.int64 and back.shape == codes.shape and np.array_equal(back, codes), fmt
        assert Encoded.from_bytes(enc.to_bytes()) == enc, fmt
        assert len(enc.to_bytes()) * 8 == HEADER_BITS + 8 * ((size + 7) // 8)
    name, best = best_format(codes, bits, **params)
    assert best == min(sizes.values()) and sizes[name] == best


# -- strategies ---------------------------------------------------------------------------------------------------

@st.composite
def widths(draw):
    signed = draw(st.booleans())
    bits = draw(st.integers(2 if signed else 1, 16))
    return bits, signed


@st.composite
def random_arrays(draw):
    """Arrays of every density 0..1 (including exactly 0 and 1), 1-D or 2-D, shapes with 0 and 1 element."""
    bits, signed = draw(widths())
    if draw(st.booleans()):
        shape = (draw(st.integers(0, 300)),)
    else:
        shape = (draw(st.integers(0, 12)), draw(st.integers(0, 40)))
    density = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = code_range(bits, signed)
    nonzero = rng.integers(lo, hi, size=shape, endpoint=True)
    nonzero[nonzero == 0] = hi                   # every drawn value non-zero, so `density` is exact in expectation
    codes = np.where(rng.random(shape) < density, nonzero, 0).astype(np.int64)
    return codes, bits, signed, draw(st.integers(1, 16)), draw(st.integers(1, 16))


@st.composite
def run_arrays(draw):
    """Zero runs drawn around the filler limits of small run/index fields: exactly at 2^r − 1, 2^r,
    2^k − 2, 2^k − 1, multiples of them, and far past; leading and trailing runs too."""
    bits, signed = draw(widths())
    run_bits, index_bits = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    lo, hi = code_range(bits, signed)
    limits = [(1 << run_bits) - 1, 1 << run_bits, (1 << index_bits) - 2, (1 << index_bits) - 1]
    edges = [m * x + e for x in limits for m in (1, 2, 3) for e in (-1, 0, 1) if m * x + e >= 0]
    run = st.sampled_from([0, 1] + edges) | st.integers(0, 70)
    value = st.integers(lo, hi).filter(lambda v: v != 0)
    segments = draw(st.lists(st.tuples(run, value), max_size=12))
    flat = []
    for zeros, v in segments:
        flat += [0] * zeros + [v]
    flat += [0] * draw(run)                       # trailing zeros: implied, never stored
    codes = np.array(flat, dtype=np.int64)
    rows = draw(st.sampled_from([0, 1, 2, 3]))
    if rows:                                     # a 2-D view: pad with zeros to a multiple of rows
        codes = np.concatenate([codes, np.zeros(-len(codes) % rows, np.int64)]).reshape(rows, -1)
    return codes, bits, signed, run_bits, index_bits


# -- properties ---------------------------------------------------------------------------------------------------

@PROPERTIES
@given(random_arrays())
def test_random_arrays_round_trip_and_size_formula_is_exact(case):
    check_everything(*case)


@PROPERTIES
@given(run_arrays())
def test_runs_at_and_past_the_field_limit_round_trip_and_size_formula_is_exact(case):
    check_everything(*case)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(random_arrays() | run_arrays(), st.data())
def test_a_corrupted_stream_decodes_or_is_a_data_error(case, data):
    """Flipped bits in the payload or in header words 0, 3, 4 (format, widths, nnz, length), or a cut:
    the result is a DataError or an array of the header's shape whose encoding is the stream itself,
    never another exception. (Dimensions are left alone: a run-length header may legitimately
    promise a huge all-zero array.)"""
    codes, bits, signed, run_bits, index_bits = case
    fmt = data.draw(st.sampled_from([f for f in FORMATS if codes.ndim == 2 or f not in ("csr", "csc")]))
    stream = bytearray(encode(codes, fmt, bits, signed=signed, run_bits=run_bits, index_bits=index_bits).to_bytes())
    header_bits = [i for w in (0, 3, 4) for i in range(32 * w, 32 * w + 32)]
    targets = header_bits + list(range(HEADER_BITS, 8 * len(stream)))
    for position in data.draw(st.lists(st.sampled_from(targets), min_size=1, max_size=3)):
        stream[position // 8] ^= 1 << (position % 8)
    if data.draw(st.booleans()):
        stream = stream[:data.draw(st.integers(0, len(stream)))]
    try:
        enc = Encoded.from_bytes(bytes(stream))
        out = decode(enc)
    except DataError:
        return
    assert out.shape == enc.shape and out.dtype == np.int64
    # an accepted stream is canonical: it is exactly what the encoder writes for its output
    widths_ = {"run-length": {"run_bits": enc.field_bits}, "relative": {"index_bits": enc.field_bits}}
    assert encode(out, enc.format, enc.bits, signed=enc.signed, **widths_.get(enc.format, {})) == enc


# -- hand-computed examples -------------------------------------------------------------------------------------

ROW = np.array([[0, 3, 0, 0, 0, 0, -2, 0]])   # 1×8, two non-zeros, 4-bit signed codes: 3 = 0011, −2 = 1110
THREE, MINUS_TWO = "1100", "0111"            # LSB first


@pytest.mark.parametrize("fmt, expected", [
    ("dense", "0000" + THREE + "0000" * 4 + MINUS_TWO + "0000"),                       # 8·4 = 32
    ("bitmask", "01000010" + THREE + MINUS_TWO),                                       # 8 + 2·4 = 16
    ("run-length", "1000" + THREE + "0010" + MINUS_TWO),                               # (1, 3) (4, −2): 2·(4+4) = 16
    ("relative", "01000" + THREE + "10100" + MINUS_TWO),                               # (2, 3) (5, −2): 2·(5+4) = 18
    # ptr 0, 2 in ⌈log2 3⌉ = 2 bits; (column 1, 3) (column 6, −2), columns in ⌈log2 8⌉ = 3 bits:
    # 2·2 + 2·7 = 18
    ("csr", "00" + "01" + "100" + THREE + "011" + MINUS_TWO),
    # 9 column pointers 0,0,1,1,1,1,1,2,2 of 2 bits; (row 0, 3) (row 0, −2), row index 1 bit: 9·2 + 2·5 = 28
    ("csc", "00" "00" "10" "10" "10" "10" "10" "01" "01" + "0" + THREE + "0" + MINUS_TWO),
    # V = 2 distinct codes in b + 1 = 5 bits; (−2, length 1) (3, length 1), lengths in 6 bits; G = 2 distinct runs
    # in bit_length(8) = 4 bits; (run 1, length 1) (run 4, length 1), runs in ⌈log2 8⌉ = 3 bits; canonical
    # codewords −2 → 0, 3 → 1, run 1 → 0, run 4 → 1; stream (run 1, 3) (run 4, −2) = 0 1 1 0:
    # 5 + 2·10 + 4 + 2·9 + 4 = 51
    ("huffman", "01000" + MINUS_TWO + "100000" + THREE + "100000" + "0100" + "100" + "100000" + "001" + "100000"
     + "0110"),
])
def test_hand_computed_bits_of_a_row(fmt, expected):
    enc = encode(ROW, fmt, 4, run_bits=4, index_bits=5)
    assert bitstring(enc) == expected
    assert enc.length_bits == len(expected) == format_sizes(ROW, 4, run_bits=4, index_bits=5)[fmt]
    assert np.array_equal(decode(enc), ROW)


def test_hand_computed_sizes_of_a_row():
    assert format_sizes(ROW, 4) == {"dense": 32, "bitmask": 16, "run-length": 16, "relative": 18, "csr": 18, "csc": 28,
                                      "huffman": 51}
    assert best_format(ROW, 4) == ("bitmask", 16)            # ties with run-length; the earlier format wins


# run-length with run_bits = 2 (R = 3, a filler covers 4 positions) and 3-bit codes; 5 = 101 → "101"
@pytest.mark.parametrize("zeros, pairs", [
    (0, ["00"]),                                  # no zeros: (0, 5)
    (3, ["11"]),                                  # exactly R zeros: (3, 5), no filler
    (4, ["11*", "00"]),                           # one over: filler (3, 0) then (0, 5)
    (7, ["11*", "11"]),                           # filler + R
    (8, ["11*", "11*", "00"]),                    # two fillers
    (9, ["11*", "11*", "10"]),
])
def test_run_length_filler_zero(zeros, pairs):
    codes = np.array([0] * zeros + [-3, 0, 0])    # −3 in 3 bits = 101; trailing zeros implied
    expected = "".join(p.rstrip("*") + ("000" if p.endswith("*") else "101") for p in pairs)
    enc = encode(codes, "run-length", 3, run_bits=2)
    assert bitstring(enc) == expected
    assert enc.length_bits == len(pairs) * 5 == (1 + zeros // 4) * 5
    assert np.array_equal(decode(enc), codes)


# relative with index_bits = 2 (G = 3) and 3-bit codes; the first non-zero's difference is from position −1
@pytest.mark.parametrize("position, pairs", [
    (0, ["10"]),                                  # d = 1
    (2, ["11"]),                                  # d = 3 = G: no filler
    (3, ["11*", "10"]),                           # d = 4: filler at position 2, then d = 1
    (5, ["11*", "11"]),                           # d = 6: one filler, then d = 3
    (6, ["11*", "11*", "10"]),                    # d = 7: two fillers
])
def test_relative_filler_zero(position, pairs):
    codes = np.array([0] * position + [-3, 0])
    expected = "".join(p.rstrip("*") + ("000" if p.endswith("*") else "101") for p in pairs)
    enc = encode(codes, "relative", 3, index_bits=2)
    assert bitstring(enc) == expected
    assert enc.length_bits == (1 + position // 3) * 5
    assert np.array_equal(decode(enc), codes)


def test_relative_difference_between_two_non_zeros():
    # non-zeros at 1 and 2 (adjacent: d = 1), then 9 (d = 7 > G = 3: fillers at 5 and 8, then d = 1)
    codes = np.zeros(12, np.int64)
    codes[[1, 2, 9]] = [1, 2, 3]
    enc = encode(codes, "relative", 3, index_bits=2)
    pairs = [("01", "100"), ("10", "010"), ("11", "000"), ("11", "000"), ("10", "110")]
    assert bitstring(enc) == "".join(d + v for d, v in pairs)
    assert np.array_equal(decode(enc), codes)


def test_edge_arrays():
    empty, zeros, one = np.zeros(0, np.int64), np.zeros((3, 5), np.int64), np.array([5])
    assert format_sizes(empty, 8) == {"dense": 0, "bitmask": 0, "run-length": 0, "relative": 0, "huffman": 0}
    # all zeros: the pair formats are empty (trailing zeros are implied); CSR pointers are 0 bits wide
    assert format_sizes(zeros, 8) == {"dense": 120, "bitmask": 15, "run-length": 0, "relative": 0, "csr": 0, "csc": 0,
                                      "huffman": 0}
    assert best_format(zeros, 8) == ("run-length", 0)
    # huffman: 5 + 1·(4 + 6) + bit_length(1) = 1 + 1·(1 + 6) tables, then two 1-bit codewords
    assert format_sizes(one, 4) == {"dense": 4, "bitmask": 5, "run-length": 8, "relative": 9, "huffman": 25}
    full = np.arange(1, 9).reshape(2, 4)          # no zeros: csr = 3 pointers · 4 bits + 8·(2 + 5)
    assert format_sizes(full, 5)["csr"] == 3 * 4 + 8 * 7 and format_sizes(full, 5)["csc"] == 5 * 4 + 8 * 6
    for codes in (empty, zeros, one, full, np.zeros((0, 4), np.int64), np.zeros((4, 0), np.int64)):
        for fmt in format_sizes(codes, 5):
            assert np.array_equal(decode(encode(codes, fmt, 5)), codes)


def test_unsigned_codes_and_the_width_range():
    codes = np.array([[0, 1, 0], [1, 1, 0]], dtype=np.uint8)
    assert format_sizes(codes, 1, signed=False)["dense"] == 6
    for fmt in FORMATS:
        assert np.array_equal(decode(encode(codes, fmt, 1, signed=False)), codes)
    big = np.array([0, 65535, 0], dtype=np.uint16)
    assert np.array_equal(decode(encode(big, "bitmask", 16, signed=False)), big)
    for b in range(1, 17):
        assert code_range(b, False) == int_range(b, False)
        if b >= 2:
            assert code_range(b, True) == int_range(b, True)


def test_bitmask_beats_dense_below_density_one_minus_one_over_bits():
    # n = 64, b = 4: bitmask 64 + 4·nnz vs dense 256, equal at nnz = 48 = (1 − 1/4)·64
    for nnz, winner in ((47, "bitmask"), (48, "dense"), (49, "dense")):
        codes = np.array([1] * nnz + [0] * (64 - nnz))
        sizes = format_sizes(codes, 4)
        assert min(("dense", "bitmask"), key=lambda f: (sizes[f], FORMATS.index(f))) == winner


def test_expected_run_length_size_under_random_pruning():
    """docs/sparse-formats.md: with i.i.d. pruning at density d, run-length costs (r + b)·d / (1 − (1 − d)^(2^r))
    bits per code (relative: 2^k − 1 in place of 2^r)."""
    rng = np.random.default_rng(0)
    n = 200_000
    for d in (0.02, 0.1, 0.5):
        codes = (rng.random(n) < d).astype(np.int64)
        stats = code_stats(codes)
        d_hat = stats.nnz / n
        for fmt, width, step in (("run-length", 4, 16), ("relative", 5, 31)):
            model = (width + 4) * d_hat / (1 - (1 - d_hat) ** step)
            got = payload_bits(fmt, stats, 4, run_bits=4, index_bits=5) / n
            assert abs(got - model) < 0.02 * model, (fmt, d, got, model)


def test_importing_the_module_does_not_load_torch():
    code = "import sys, bitsmith.integer.sparse; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- corrupt streams ------------------------------------------------------------------------------------------------

MATRIX = np.array([[0, 3, 0, 0, 1], [0, 0, 0, 0, 0], [-2, 0, 0, 4, 0]])   # nnz 4, 3×5


def refused(enc: Encoded, *fragments: str) -> None:
    with pytest.raises(DataError) as e:
        decode(enc)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_payload(fmt):
    enc = encode(MATRIX, fmt, 4)
    refused(dataclasses.replace(enc, payload=enc.payload[:-1]), "truncated")
    with pytest.raises(DataError, match="header"):
        Encoded.from_bytes(enc.to_bytes()[:10])
    with pytest.raises(DataError, match="truncated"):
        Encoded.from_bytes(enc.to_bytes()[:-1])


@pytest.mark.parametrize("fmt", ["dense", "bitmask", "csr", "csc"])
def test_length_bits_that_disagrees_with_the_header(fmt):
    enc = encode(MATRIX, fmt, 4)
    refused(with_bits(enc, bitstring(enc)[:-1]), "length_bits")
    refused(with_bits(enc, bitstring(enc) + "0"), "length_bits")


def test_csr_row_pointers():
    enc = encode(MATRIX, "csr", 4)        # pointers 0, 2, 2, 4 in 3 bits, then (column: 3 bits, code: 4 bits)
    bits = bitstring(enc)
    assert bits[:12] == "000" "010" "010" "001"
    refused(with_bits(enc, "000" "110" "010" + bits[9:]), "decrease at row 1", "non-decreasing")   # 0, 3, 2, 4
    refused(with_bits(enc, "000" "010" "010" "101" + bits[12:]), "from 0 to nnz = 4")             # ends at 5
    refused(with_bits(enc, "100" + bits[3:]), "from 0 to nnz = 4")                                # starts at 1
    refused(with_bits(enc, bits[:12] + "111" + bits[15:]), "column index 7", "5 columns")         # column 7 of 5
    refused(with_bits(enc, bits[:12] + "001" + bits[15:]), "strictly increase")                   # columns 4, 4
    refused(with_bits(enc, bits[:15] + "0000" + bits[19:]), "code 0")


def test_csc_pointers():
    enc = encode(MATRIX, "csc", 4)        # column pointers 0, 1, 2, 2, 3, 4
    bits = bitstring(enc)
    refused(with_bits(enc, bits[:3] + "010" + "100" + bits[9:]), "column pointers decrease")     # 0, 2, 1
    refused(with_bits(enc, bits[:15] + "101" + bits[18:]), "to nnz = 4")


def test_run_length_streams():
    codes = np.array([0, 0, 0, 0, 0, 7, 0, 1, 0, 0])   # run_bits 2: (3, 0) (1, 7) (1, 1), codes 4 bits
    enc = encode(codes, "run-length", 4, run_bits=2)
    bits = bitstring(enc)
    assert bits == "11" "0000" + "10" "1110" + "10" "1000"
    # (3, 1) after the 7 at position 5 lands on 9: inside 10 codes, past the end of 9
    assert np.array_equal(decode(with_bits(enc, bits[:12] + "11" "1000")), [0, 0, 0, 0, 0, 7, 0, 0, 0, 1])
    refused(with_bits(enc, bits[:12] + "11" "1000", shape=(9,)), "pair 2 points past the end: position 9", "9 codes")
    refused(with_bits(enc, bits[:-1]), "whole number of 6-bit pairs")
    refused(with_bits(enc, bits + "11" "0000"), "ends with a filler")
    refused(with_bits(enc, "10" "0000" + bits[6:]), "code 0 with field 1")        # a zero that is not a filler
    refused(with_bits(enc, bits[:12]), "nnz = 2")                                 # a pair short
    refused(with_bits(enc, bits + "00" "1000"), "nnz = 2")                        # a pair too many
    refused(dataclasses.replace(enc, shape=(5,)), "points past the end")


def test_relative_streams():
    codes = np.array([0, 5, 0, 0, 0, 0, 0, 1])           # index_bits 2: (2, 5) (3, 0) (3, 1)
    enc = encode(codes, "relative", 4, index_bits=2)
    bits = bitstring(enc)
    assert bits == "01" "1010" + "11" "0000" + "11" "1000"
    refused(with_bits(enc, "00" + bits[2:]), "index difference 0")
    refused(with_bits(enc, bits[:6] + "10" + bits[8:]), "only a filler")


def test_bitmask_and_dense_streams():
    enc = encode(MATRIX, "bitmask", 4)
    bits = bitstring(enc)
    refused(with_bits(enc, "1" + bits[1:15] + bits[15:] + "0000"), "length_bits")  # an extra code but nnz 4
    refused(with_bits(enc, "1" + bits[1:]), "marks 5 non-zeros", "nnz = 4")
    refused(with_bits(enc, bits[:15] + "0000" + bits[19:]), "is 0 where the mask marks a non-zero")
    dense = encode(MATRIX, "dense", 4)
    refused(with_bits(dense, "1000" + bitstring(dense)[4:]), "holds 5 non-zero codes")


def test_inconsistent_headers():
    rel = encode(MATRIX, "relative", 4)           # 4 pairs of 5 + 4 bits: 36 bits, 4 padding bits
    assert rel.length_bits == 36
    refused(dataclasses.replace(rel, payload=rel.payload[:-1] + bytes([rel.payload[-1] | 0x80])), "past length_bits")
    enc = encode(MATRIX, "run-length", 4)
    refused(dataclasses.replace(enc, bits=17), "code width 17")
    refused(dataclasses.replace(enc, signed=False, bits=0), "code width 0")
    refused(dataclasses.replace(enc, field_bits=0), "field width 0")
    refused(dataclasses.replace(enc, format="lz4"), "unknown")
    refused(dataclasses.replace(enc, nnz=16), "0 to 15 non-zeros")
    refused(dataclasses.replace(enc, shape=(3, 5, 1)), "shape")
    refused(dataclasses.replace(encode(MATRIX, "csr", 4), shape=(15,)), "needs 2 dimensions")
    refused(dataclasses.replace(encode(MATRIX, "dense", 4), field_bits=4), "must be 0")
    # a huge all-zero run-length array is a valid header, but one that cannot be allocated is a DataError
    refused(Encoded("run-length", 4, True, (2**32 - 1, 2**32 - 1), 0, 4, b"", 0), "more than the 268,435,456 this decoder accepts")
    words = list(struct.unpack("<5I", enc.to_bytes()[:20]))
    for change, fragment in ((lambda w: w.__setitem__(0, w[0] | 1 << 20), "reserved"),
                             (lambda w: w.__setitem__(0, (w[0] & ~0xFF) | 9), "format id 9"),
                             (lambda w: w.__setitem__(0, w[0] | 3 << 17), "3 dimensions"),
                             (lambda w: w.__setitem__(4, w[4] + 8), "truncated")):
        changed = list(words)
        change(changed)
        with pytest.raises(DataError, match=fragment):
            Encoded.from_bytes(struct.pack("<5I", *changed) + enc.to_bytes()[20:])
    one_d = encode(np.array([1, 0, 2]), "dense", 4).to_bytes()
    with pytest.raises(DataError, match="second dimension"):
        Encoded.from_bytes(one_d[:8] + struct.pack("<I", 1) + one_d[12:])


# -- bad arguments ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, fragment", [
    (lambda: encode(np.array([0.0, 1.0]), "dense", 4), "integer dtype"),
    (lambda: encode(np.array([True, False]), "dense", 4), "integer dtype"),
    (lambda: encode(np.array(["a"]), "dense", 4), "integer dtype"),
    (lambda: encode(np.zeros((2, 2, 2), np.int64), "dense", 4), "1-D array or a 2-D"),
    (lambda: encode(np.int64(3), "dense", 4), "1-D array or a 2-D"),
    (lambda: encode(np.array([8]), "dense", 4), "outside the 4-bit signed range [-8, 7]"),
    (lambda: encode(np.array([-1]), "dense", 4, signed=False), "unsigned range [0, 15]"),
    (lambda: encode(np.array([2**63], dtype=np.uint64), "dense", 16, signed=False), "outside"),
    (lambda: encode(np.array([0]), "dense", 1), "allowed: 2 to 16"),
    (lambda: encode(np.array([0]), "dense", 17), "allowed: 2 to 16"),
    (lambda: encode(np.array([0]), "dense", 0, signed=False), "allowed: 1 to 16"),
    (lambda: encode(np.array([0]), "dense", 4.0), "allowed: 2 to 16"),
    (lambda: encode(np.array([0]), "dense", True), "allowed: 2 to 16"),
    (lambda: encode(np.array([0]), "run-length", 4, run_bits=0), "run_bits must be an integer from 1 to 16"),
    (lambda: encode(np.array([0]), "run-length", 4, run_bits=17), "run_bits"),
    (lambda: encode(np.array([0]), "relative", 4, index_bits=0), "index_bits must be an integer from 1 to 16"),
    (lambda: format_sizes(np.array([0]), 4, index_bits=17), "index_bits"),
    (lambda: encode(np.array([0, 1]), "csr", 4), "needs a 2-D array"),
    (lambda: encode(np.array([0, 1]), "csc", 4), "needs a 2-D array"),
    (lambda: encode(np.array([0, 1]), "lz4", 4), "unknown sparse format 'lz4'; allowed: dense"),
    (lambda: payload_bits("csr", code_stats(np.array([1, 2])), 4), "needs a 2-D array"),
    (lambda: best_format(np.array([0.5]), 4), "integer dtype"),
    (lambda: decode(b"\x00" * 20), "decode takes an Encoded"),
])
def test_bad_arguments(call, fragment):
    with pytest.raises(ConfigError) as e:
        call()
    assert fragment in str(e.value), str(e.value)


def test_python_lists_and_narrow_dtypes_are_accepted():
    assert np.array_equal(decode(encode([[0, -1], [2, 0]], "csr", 3)), [[0, -1], [2, 0]])
    assert np.array_equal(decode(encode(np.array([0, -128, 127], np.int8), "bitmask", 8)), [0, -128, 127])
    assert sparse.HEADER_WORDS * 32 == HEADER_BITS == 160


def test_a_header_promising_billions_of_codes_is_refused_not_allocated():
    import bitsmith.integer.sparse as sparse

    enc = sparse.encode(np.zeros(4, dtype=np.int64), "run-length", 4)
    huge = sparse.Encoded(**{**enc.__dict__, "shape": (1 << 31,)})
    with pytest.raises(DataError, match="promises 2,147,483,648 codes"):
        sparse.decode(huge)


def test_huffman_streams():
    enc = encode(ROW, "huffman", 4)
    bits = bitstring(enc)
    # the two 1-bit code lengths (after V = 2 and each 4-bit code) made 0: not a prefix code
    refused(with_bits(enc, bits[:9] + "000000" + bits[15:]), "length of 0")
    # both code lengths 1 and a third entry claimed (V = 3) would need 3 codewords of 1 bit: Kraft sum > 1
    three = encode(np.array([0, 3, 0, -2, 5, 0]), "huffman", 4)
    tbits = bitstring(three)
    lengths = [tbits[5 + 10 * i + 4: 5 + 10 * i + 10] for i in range(3)]
    assert sorted(lengths) == sorted(["100000", "010000", "010000"])      # lengths 1, 2, 2
    kraft = tbits[:5] + "".join(tbits[5 + 10 * i: 5 + 10 * i + 4] + "100000" for i in range(3)) + tbits[35:]
    refused(with_bits(three, kraft), "Kraft")
    refused(with_bits(enc, bits[:5] + "0000" + bits[9:]), "code 0")      # code −2 replaced by 0
    refused(with_bits(enc, bits + "0"), "bits left")                      # one bit too many
    refused(with_bits(enc, bits[:-1]), "ends inside")                     # the last codeword cut
    refused(with_bits(enc, "11111" + bits[5:]), "distinct code")          # V = 31 > nnz
    refused(dataclasses.replace(encode(np.zeros(4, np.int64), "huffman", 4), payload=b"\x01", length_bits=1),
            "empty")


def test_huffman_beats_relative_on_skewed_codes():
    """Deep Compression's point: Huffman coding of the codes and runs shrinks a pruned layer further."""
    rng = np.random.default_rng(1)
    codes = np.where(rng.random(20_000) < 0.1, rng.choice([1, -1, 2, -2, 7], 20_000, p=[.4, .4, .1, .08, .02]), 0)
    sizes = format_sizes(codes, 4)
    assert sizes["huffman"] < 0.8 * min(v for f, v in sizes.items() if f != "huffman")
    assert np.array_equal(decode(encode(codes, "huffman", 4)), codes)


def test_a_huffman_table_that_is_a_prefix_code_but_not_the_huffman_code_is_refused():
    # ROW's stream with every codeword length 2 instead of 1 (Kraft sum 1/2: a valid prefix code) and the
    # stream rewritten to it: it decodes to ROW, but the encoder never writes that table.
    two = "010000"
    bits = ("01000" + MINUS_TWO + two + THREE + two + "0100" + "100" + two + "001" + two
            + "00" + "01" + "01" + "00")          # (run 1 → 00, 3 → 01) (run 4 → 01, −2 → 00)
    refused(with_bits(encode(ROW, "huffman", 4), bits), "not the Huffman code")
