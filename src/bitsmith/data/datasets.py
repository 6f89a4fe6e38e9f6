"""The data sets bitsmith knows: their fixed facts (DatasetInfo) and loading them into memory.

Every data set is held whole as a uint8 tensor [N, C, H, W] plus int64 labels; the largest
(CIFAR, 60000 x 3 x 32 x 32) is 184 MB, so no streaming or worker processes are needed.
Conversion to normalised float happens per batch (see transforms.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bitsmith.data.cifar import load_cifar
from bitsmith.data.detection import check_boxes, load_contest_folder, make_detection, split_size
from bitsmith.data.idx import read_idx
from bitsmith.data.synthetic import make_synthetic
from bitsmith.errors import ConfigError, DataError

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits", "synthetic", "dacsdc-synthetic", "dacsdc")
SPLITS = ("train", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


@dataclass(frozen=True)
class DatasetInfo:
    """Fixed facts about a data set. mean/std are per channel on the [0, 1] pixel scale."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) as stored
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # train with random crop (pad 4) + horizontal flip
    task: str = "classify"  # "detect": labels are one float32 box (x1, y1, x2, y2) per image (data/detection.py)


_INFOS = {
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), False),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), False),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    # digits and synthetic: measured on the whole set (see tests/data/test_data.py).
    "digits": DatasetInfo("digits", 10, (1, 8, 8), (0.3053,), (0.3759,), False),
    "synthetic": DatasetInfo("synthetic", 10, (1, 28, 28), (0.5267,), (0.2932,), False),
    # Single-object detection at the DAC-SDC input (160 x 320); "<name>-HxW" gives another input size.
    # num_classes 1: one object class; the detector's head width comes from bitsmith.detection.
    # Normalisation constants of the synthetic set (the final generator measures mean 0.475-0.482,
    # std 0.237-0.243 per channel; kept as they are: trained runs normalise with them).
    "dacsdc-synthetic": DatasetInfo("dacsdc-synthetic", 1, (3, 160, 320), (0.4932, 0.4809, 0.4733),
                                    (0.2620, 0.2592, 0.2587), False, "detect"),
    "dacsdc": DatasetInfo("dacsdc", 1, (3, 160, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False, "detect"),
}
assert tuple(_INFOS) == DATASET_NAMES


def dataset_info(name: str) -> DatasetInfo:
    """Facts about data set ``name`` (case-insensitive, '_' accepted for '-')."""
    key = name.strip().lower().replace("_", "-")
    base, size = split_size(key)
    if base != key and base in _INFOS and _INFOS[base].task == "detect":  # a detection set at another size
        return replace(_INFOS[base], name=f"{base}-{size[0]}x{size[1]}", image_shape=(3, *size))
    if key not in _INFOS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)} "
                          f"(detection sets also as NAME-HxW, e.g. dacsdc-synthetic-80x160)")
    return _INFOS[key]


@dataclass
class ArrayDataset:
    """A whole data set split in memory: uint8 images [N, C, H, W] and int64 labels [N] (detection
    sets: float32 boxes [N, 4], normalised x1, y1, x2, y2)."""

    info: DatasetInfo
    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        name = self.info.name
        if self.images.dtype != torch.uint8 or tuple(self.images.shape[1:]) != self.info.image_shape:
            raise DataError(f"{name}: images must be uint8 [N, {', '.join(map(str, self.info.image_shape))}], "
                            f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.info.task == "detect":
            if self.labels.dtype != torch.float32 or self.labels.shape != (len(self.images), 4):
                raise DataError(f"{name}: boxes must be float32 [{len(self.images)}, 4], "
                                f"got {self.labels.dtype} {tuple(self.labels.shape)}")
            check_boxes(self.labels, name)
        elif self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise DataError(f"{name}: labels must be int64 [{len(self.images)}], "
                            f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)


# ---- MNIST and Fashion-MNIST (IDX files) -------------------------------------------------------

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_file(name: str, folder: Path, base: str) -> Path:
    """The raw file if present (no decompression needed), else the .gz one."""
    candidates = [folder / base, folder / f"{base}.gz"]
    for path in candidates:
        if path.is_file():
            return path
    hint = "; the Debian package `dataset-fashion-mnist` provides it" if name == "fashion-mnist" else ""
    raise DataError(f"{name}: missing {base}: expected {candidates[0]} or {candidates[1]}{hint}")


def _load_mnist_family(name: str, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if data_dir is None:
        if name != "fashion-mnist":
            raise DataError(f"{name}: no default location; pass --data-dir with the folder holding the "
                            f"MNIST IDX files (train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz], ...)")
        data_dir = FASHION_MNIST_DIR
    info = _INFOS[name]
    image_base, label_base = _IDX_FILES[split]
    image_path = _find_idx_file(name, data_dir, image_base)
    label_path = _find_idx_file(name, data_dir, label_base)

    images = read_idx(image_path, ndim=3)
    labels = read_idx(label_path, ndim=1)
    if images.shape[1:] != info.image_shape[1:]:
        raise DataError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{name}: {image_path} holds {len(images)} images but {label_path} "
                        f"holds {len(labels)} labels")
    if len(labels) and labels.max() >= info.num_classes:
        raise DataError(f"{label_path}: label {labels.max()} out of range [0, {info.num_classes})")
    return images[:, None], labels.astype(np.int64)


# ---- the others --------------------------------------------------------------------------------

def _load_cifar(name: str, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if data_dir is None:
        raise DataError(f"{name}: no default location; pass --data-dir with the unpacked CIFAR python "
                        f"batches (cifar-10-batches-py / cifar-100-python or their parent folder)")
    return load_cifar(name, split, data_dir)


DIGITS_TRAIN = 1437  # of 1797; the rest (360) is the test split


def _load_digits(name: str, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # slow import, only when asked for

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    order = np.random.default_rng(0).permutation(len(images))  # fixed split, same on every machine
    keep = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
    return images[keep], bunch.target[keep].astype(np.int64)


SYNTHETIC_SIZES = {"train": (2000, 0), "test": (500, 1)}  # split -> (samples, seed)


def _load_synthetic(name: str, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    info = _INFOS[name]
    n, seed = SYNTHETIC_SIZES[split]
    images, labels = make_synthetic(n, info.num_classes, info.image_shape, seed)
    return images.numpy(), labels.numpy()


DETECTION_SIZES = {"train": (10000, 0), "test": (1000, 1)}  # split -> (images, seed)


def _load_dacsdc_synthetic(name: str, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    n, seed = DETECTION_SIZES[split]
    images, boxes = make_detection(n, seed, split_size(name)[1], split=split)
    return images.numpy(), boxes.numpy()


def _load_dacsdc(name: str, split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if data_dir is None:
        raise DataError(f"{name}: no default location; pass --data-dir with the contest folder "
                        f"(train/ and test/, each .jpg/.png images with same-named VOC .xml boxes)")
    return load_contest_folder(data_dir / split, split_size(name)[1])


_LOADERS: dict[str, Callable[[str, str, Path | None], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _load_mnist_family,
    "fashion-mnist": _load_mnist_family,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
    "dacsdc-synthetic": _load_dacsdc_synthetic,
    "dacsdc": _load_dacsdc,
}
_FILE_BASED = ("mnist", "fashion-mnist", "cifar10", "cifar100", "dacsdc")  # the others ignore data_dir


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 *, limit: int | None = None) -> ArrayDataset:
    """Load split ``"train"`` or ``"test"`` of data set ``name`` into memory.

    ``data_dir`` is the folder with the data set files (needed for MNIST and CIFAR; Fashion-MNIST
    defaults to /usr/share/datasets/fashion-mnist; ignored for digits and synthetic).
    ``limit`` keeps only the first ``limit`` samples. Raises ConfigError for a bad name, split or
    limit and DataError for missing or malformed files.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive number of samples, got {limit}")
    folder = None
    base = split_size(info.name)[0] if info.task == "detect" else info.name
    if data_dir is not None and base in _FILE_BASED:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"{info.name}: data directory {folder} does not exist or is not a folder")

    images, labels = _LOADERS[base](info.name, split, folder)
    if limit is not None and limit < len(labels):
        # Copy so the kept samples do not pin the whole loaded array in memory.
        images, labels = images[:limit].copy(), labels[:limit].copy()
    return ArrayDataset(info, torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))
