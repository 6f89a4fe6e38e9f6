"""Canonical Huffman coding of small non-negative integer symbols, exact in both directions
(docs/sparse-formats.md, "huffman"): Deep Compression's last stage, applied by the "huffman" storage
format of `bitsmith.integer.sparse` to the non-zero codes and to the zero runs between them.

A code is described by its *table*: the distinct symbols in increasing order, each with its codeword
length. Codewords are canonical (RFC 1951 §3.2.2): symbols sorted by (length, symbol) get
consecutive codewords, each length's first codeword being (previous first + previous count) << 1.
A codeword is written first bit first. Lengths come from the textbook Huffman merge with ties broken
by the smallest symbol in each subtree, so the same histogram always gives the same table; a lone
symbol gets a 1-bit codeword. Numpy only (no torch): the storage formats are read without it.
"""

from __future__ import annotations

import heapq

import numpy as np

from bitsmith.errors import DataError

#: Width of a codeword-length field in a stored table; a Huffman code over at most 2^32 symbols
#: never needs a codeword longer than 46 bits (the Fibonacci bound), so 6 bits always suffice.
LENGTH_BITS = 6
MAX_LENGTH = (1 << LENGTH_BITS) - 1


def code_lengths(symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Huffman codeword lengths for distinct `symbols` (increasing) with positive `counts`."""
    if symbols.size == 0:
        return np.zeros(0, dtype=np.int64)
    if symbols.size == 1:
        return np.ones(1, dtype=np.int64)
    # Heap items: (weight, smallest symbol in the subtree, the subtree's leaf indices).
    heap = [(int(c), int(s), [i]) for i, (s, c) in enumerate(zip(symbols, counts))]
    heapq.heapify(heap)
    lengths = np.zeros(symbols.size, dtype=np.int64)
    while len(heap) > 1:
        w1, s1, leaves1 = heapq.heappop(heap)
        w2, s2, leaves2 = heapq.heappop(heap)
        leaves = leaves1 + leaves2
        lengths[leaves] += 1
        heapq.heappush(heap, (w1 + w2, min(s1, s2), leaves))
    return lengths


def canonical_codewords(symbols: np.ndarray, lengths: np.ndarray) -> dict[int, tuple[int, int]]:
    """{symbol: (codeword as an integer read first bit = most significant, length)}."""
    order = sorted(range(symbols.size), key=lambda i: (int(lengths[i]), int(symbols[i])))
    out: dict[int, tuple[int, int]] = {}
    code, previous = 0, 0
    for rank, i in enumerate(order):
        length = int(lengths[i])
        if rank:
            code = (code + 1) << (length - previous)
        else:
            code = 0
        out[int(symbols[i])] = (code, length)
        previous = length
    return out


def histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct symbols increasing, their counts) of a 1-D int64 array."""
    symbols, counts = np.unique(values, return_counts=True)
    return symbols.astype(np.int64), counts.astype(np.int64)


def coded_bits(values: np.ndarray) -> int:
    """Bits of the Huffman-coded sequence `values` alone (without its table)."""
    symbols, counts = histogram(values)
    return int((code_lengths(symbols, counts) * counts).sum())


class Decoder:
    """Decodes codewords of one canonical table from a bit array, one symbol per `read`."""

    def __init__(self, symbols: np.ndarray, lengths: np.ndarray, what: str) -> None:
        self.what = what
        order = sorted(range(symbols.size), key=lambda i: (int(lengths[i]), int(symbols[i])))
        self.sorted_symbols = [int(symbols[i]) for i in order]
        self.count_of = [0] * (MAX_LENGTH + 1)
        for length in lengths.tolist():
            self.count_of[length] += 1
        self.max_length = int(lengths.max()) if lengths.size else 0

    def read(self, bits: np.ndarray, offset: int) -> tuple[int, int]:
        """(symbol, next offset) of the codeword starting at `offset`; a DataError when the bits
        run out or form no codeword of the table."""
        code = first = index = 0
        for length in range(1, self.max_length + 1):
            if offset >= bits.size:
                raise DataError(f"the payload ends inside a {self.what} codeword")
            code |= int(bits[offset])
            offset += 1
            count = self.count_of[length]
            if code - first < count:
                return self.sorted_symbols[index + code - first], offset
            index += count
            first = (first + count) << 1
            code <<= 1
        raise DataError(f"the bits at offset {offset - self.max_length} form no {self.what} codeword of the table")


def check_table(symbols: np.ndarray, lengths: np.ndarray, what: str) -> None:
    """A stored table must describe a prefix code: symbols strictly increasing, lengths 1..63 and
    the Kraft sum at most 1 (a corrupt table is a DataError, never a wrong decode)."""
    if symbols.size and (np.diff(symbols) <= 0).any():
        raise DataError(f"the {what} table's symbols must strictly increase")
    if lengths.size and (lengths < 1).any():
        raise DataError(f"the {what} table has a codeword length of 0; lengths are 1 to {MAX_LENGTH}")
    kraft = sum(1 << (MAX_LENGTH - int(n)) for n in lengths.tolist())
    if kraft > 1 << MAX_LENGTH:
        raise DataError(f"the {what} table's codeword lengths do not form a prefix code (Kraft sum > 1)")
