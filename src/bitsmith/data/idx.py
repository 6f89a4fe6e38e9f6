"""Reader for the IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

Layout: a 4-byte magic ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes,
then the values. bitsmith only needs unsigned bytes (dtype code 0x08). The file is checked
strictly: a wrong magic, a short payload or bytes after the payload are all errors, because
a silently misread dataset is worse than none.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from bitsmith.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
UINT8_CODE = 0x08
_MAX_NDIM = 8  # MNIST uses 1 (labels) and 3 (images); anything far beyond that is a corrupt header


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, decompressed if it starts with the gzip magic (not judged by name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        # OSError covers gzip.BadGzipFile (bad header, CRC or length); EOFError a truncated stream.
        raise DataError(f"{path}: corrupt or truncated gzip data ({e}); re-download the file") from None


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes into a writable uint8 array of the stored shape.

    ``ndim`` (optional) is the number of dimensions the caller expects (1 for labels, 3 for images).
    Raises DataError naming the file and the problem for anything malformed.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")

    magic = int.from_bytes(data[:4], "big")
    file_ndim = data[3]
    want_ndim = file_ndim if ndim is None else ndim
    expected = (UINT8_CODE << 8) | want_ndim
    if data[0] != 0 or data[1] != 0 or data[2] != UINT8_CODE or file_ndim != want_ndim:
        raise DataError(f"{path}: bad magic 0x{magic:08x}, expected 0x{expected:08x} "
                        f"(IDX of unsigned bytes with {want_ndim} dimension(s))")
    if not 1 <= file_ndim <= _MAX_NDIM:
        raise DataError(f"{path}: IDX header declares {file_ndim} dimensions")

    header_len = 4 + 4 * file_ndim
    if len(data) < header_len:
        raise DataError(f"{path}: truncated IDX header: expected {header_len} bytes, found {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(file_ndim))

    expected_payload = int(np.prod(dims, dtype=np.int64))
    found_payload = len(data) - header_len
    if found_payload != expected_payload:
        what = "truncated" if found_payload < expected_payload else "trailing garbage"
        raise DataError(f"{path}: {what}: dims {dims} need exactly {expected_payload} bytes of values, "
                        f"found {found_payload}")
    # Copy so the array is writable (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()
