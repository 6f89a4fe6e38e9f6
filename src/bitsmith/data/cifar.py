"""Reader for the CIFAR-10 / CIFAR-100 "python version" batches, without trusting pickle.

The batches are pickled dicts (``b'data'``: N x 3072 uint8 rows holding the R, G and B planes of a
32x32 image; ``b'labels'`` or ``b'fine_labels'``). A pickle can name any Python callable, so a
tampered batch could run code while loading. The unpickler below only resolves the handful of
globals a numpy array needs and refuses everything else before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from bitsmith.errors import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

ROW_BYTES = 3 * 32 * 32


def _latin1_encode(text: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 protocol-2 pickles store bytes as
    ``_codecs.encode(text, 'latin1')``. Only that exact use is allowed (no other codecs)."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with codec {encoding!r}")
    return text.encode("latin1", errors="strict")


# (module, name) -> object. Python 2 era files (the official ones) name numpy.core; numpy 2 writes
# numpy._core. Both map to the function of the numpy that is installed.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(f"{self._path}: refused to load global {module}.{name}: a CIFAR batch only "
                            f"contains numpy arrays and lists; the file is not a genuine CIFAR batch "
                            f"(possibly tampered with)") from None


def unpickle_batch(path: Path) -> dict:
    """Safely unpickle one batch file into its dict; DataError on anything unreadable."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read CIFAR batch ({e.strerror or e})") from None
    try:
        obj = RestrictedUnpickler(data, path).load()
    except DataError:
        raise
    except Exception as e:  # any failure decoding untrusted bytes is a data problem, not a crash
        raise DataError(f"{path}: not a readable CIFAR batch, truncated or corrupt "
                        f"({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _field(batch: dict, key: str, path: Path) -> Any:
    # encoding="bytes" gives bytes keys for the official (Python 2) files; accept str keys too.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: missing key {key!r} (keys present: {sorted(map(str, batch))})")


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images [N, 3, 32, 32], int64 labels [N]), every field checked."""
    batch = unpickle_batch(path)
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {ROW_BYTES}), found {desc}")

    raw_labels = _field(batch, label_key, path)
    try:
        labels = np.asarray(raw_labels)
    except Exception:
        labels = np.asarray([])  # ragged / odd content: reported just below
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {label_key!r} must be a list of integers, found {type(raw_labels).__name__}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in [0, {num_classes}), found range "
                        f"[{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# name -> (folder the archive unpacks to, files per split, label key, classes)
_LAYOUT = {
    "cifar10": ("cifar-10-batches-py",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                "labels", 10),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", 100),
}


def _batch_folder(name: str, data_dir: Path, first_file: str) -> Path:
    """data_dir itself if it holds the batches, else its standard sub-folder."""
    folder_name = _LAYOUT[name][0]
    candidates = [data_dir, data_dir / folder_name]
    for folder in candidates:
        if (folder / first_file).is_file():
            return folder
    raise DataError(f"{name}: no batch file {first_file!r} in {candidates[0]} or {candidates[1]}; pass "
                    f"--data-dir pointing at the unpacked '{folder_name}' folder (CIFAR python version)")


def load_cifar(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR split as (uint8 [N, 3, 32, 32], int64 [N]) numpy arrays."""
    _, files, label_key, num_classes = _LAYOUT[name]
    folder = _batch_folder(name, data_dir, files[split][0])
    parts = []
    for file_name in files[split]:
        path = folder / file_name
        if not path.is_file():
            raise DataError(f"{name}: missing batch file {path}")
        parts.append(read_batch(path, label_key, num_classes))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels
