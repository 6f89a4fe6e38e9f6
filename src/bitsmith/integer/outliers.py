"""Outlier-aware weight codes (OAQ, docs/qat.md): one integer tensor, stored as two.

An OAQ layer's weight codes are written at the outlier width b_o (the IR's `weight_bits`), all at
one scale S_o, so the layer computes like any other. Most of them lie on the coarser low-bit grid:

    normal code  = q · 2^k,  |q| ≤ 2^(b−1) − 1   (b = low_bits, k = shift)
    outlier code = anything else within b_o bits

Storage keeps q densely at b bits (0 where an outlier sits) and the outliers sparsely as
(flat index, b_o-bit code) pairs. `outlier_split` and `outlier_merge` are that split and its exact
inverse; the split needs only (low_bits, shift), which lowering records as the layer's "outlier"
attribute ({"low_bits", "shift", "outlier_bits"}, bitsmith.integer.ops; `ops.outlier_parts` reads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bitsmith.errors import ConfigError, DataError

#: Widths a low-bit grid may have (2-bit: {−1, 0, 1}) and the largest shift a 16-bit code allows.
LOW_BITS = range(2, 17)
MAX_SHIFT = 15


@dataclass(frozen=True)
class OutlierSplit:
    """`dense`: the low-bit codes q (the input's shape, 0 at outliers); `index`: the outliers' flat
    positions (ascending); `values`: their full codes; `shift`: k, normal code = q · 2^k."""

    dense: np.ndarray
    index: np.ndarray
    values: np.ndarray
    shift: int

    @property
    def outliers(self) -> int:
        return int(self.index.size)


def _check(low_bits: int, shift: int) -> None:
    if isinstance(low_bits, bool) or not isinstance(low_bits, (int, np.integer)) or low_bits not in LOW_BITS:
        raise ConfigError(f"low_bits={low_bits!r}; allowed: {LOW_BITS.start} to {LOW_BITS.stop - 1}")
    if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or not 0 <= shift <= MAX_SHIFT:
        raise ConfigError(f"shift={shift!r}; allowed: 0 to {MAX_SHIFT}")


def _integer_array(codes, what: str) -> np.ndarray:
    a = np.asarray(codes)
    if a.dtype.kind not in "iu":
        raise DataError(f"{what} must be integer codes, got dtype {a.dtype}")
    return a.astype(np.int64)


def outlier_split(codes, low_bits: int, shift: int) -> OutlierSplit:
    """Split integer weight codes into dense `low_bits` codes and sparse outliers.

    A code is normal when it is a multiple of 2^shift whose quotient fits `low_bits` signed bits
    narrowly (|q| ≤ 2^(low_bits−1) − 1); every other code is an outlier. An outlier whose code
    happens to be such a multiple is stored as a normal code: the round trip is exact either way.
    """
    _check(low_bits, shift)
    a = _integer_array(codes, "outlier_split: the weight")
    qmax = (1 << (low_bits - 1)) - 1
    step = 1 << shift
    quotient = np.floor_divide(a, step)
    normal = (quotient * step == a) & (np.abs(quotient) <= qmax)
    dense = np.where(normal, quotient, 0)
    index = np.flatnonzero(~normal).astype(np.int64)
    return OutlierSplit(dense, index, a.reshape(-1)[index], int(shift))


def outlier_merge(split: OutlierSplit) -> np.ndarray:
    """The codes `outlier_split` was given: q · 2^shift, with the outliers put back."""
    dense = _integer_array(split.dense, "outlier_merge: the dense codes")
    index = _integer_array(split.index, "outlier_merge: the outlier index").reshape(-1)
    values = _integer_array(split.values, "outlier_merge: the outlier codes").reshape(-1)
    if index.size != values.size:
        raise DataError(f"outlier_merge: {index.size} outlier positions but {values.size} outlier codes")
    if index.size and (index.min() < 0 or index.max() >= dense.size or np.any(np.diff(index) <= 0)):
        raise DataError(f"outlier_merge: outlier positions must be ascending and within 0..{dense.size - 1}")
    if not 0 <= split.shift <= MAX_SHIFT:
        raise DataError(f"outlier_merge: shift {split.shift}; allowed: 0 to {MAX_SHIFT}")
    out = (dense * (1 << split.shift)).reshape(-1)
    out[index] = values
    return out.reshape(dense.shape)


def outlier_storage_bits(split: OutlierSplit, low_bits: int, outlier_bits: int, index_bits: int | None = None) -> int:
    """Bits to store a split layer: n·low_bits (dense) + n_outliers·(index_bits + outlier_bits).

    `index_bits` defaults to ceil(log2 n) (a flat position; at least 1). Headers — the shift and
    the outlier count — are the caller's to add, as for every format of bitsmith.integer.sparse.
    """
    n = int(split.dense.size)
    if index_bits is None:
        index_bits = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    return n * low_bits + split.outliers * (index_bits + outlier_bits)
