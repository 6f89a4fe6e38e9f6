"""Tests for bitsmith.data: file readers, loaders, model-input conversion and batching."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bitsmith.data import (DATASET_NAMES, ArrayDataset, dataset_info, iterate_batches, load_dataset,
                           make_synthetic, read_idx, to_model_input)
from bitsmith.data.datasets import FASHION_MNIST_DIR
from bitsmith.errors import ConfigError, DataError

# ---- helpers -----------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX, straight from the format description."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_dir(folder: Path, n_train: int = 30, n_test: int = 12, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


def cifar_batch(n: int, num_classes: int, label_key: bytes, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],  # a list of ints, like the real files
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def write_pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def write_cifar10(folder: Path, per_batch: int = 7) -> dict[str, dict]:
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_batch(per_batch, 10, b"labels", seed=i)
        write_pickle(folder / name, batches[name])
    return batches


# ---- IDX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(17,), (5, 28, 28), (3, 4, 6)])
def test_idx_round_trip(tmp_path, gz, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / "file-ubyte", array, gz)  # no .gz suffix: gzip is found by its magic
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == shape and got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_idx_expected_ndim(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"bad magic 0x00000801, expected 0x00000803"):
        read_idx(path, ndim=3)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "bad-magic-ubyte"
    path.write_bytes(bytes.fromhex("12345678") + b"\0" * 20)
    with pytest.raises(DataError, match=r"bad-magic-ubyte.*bad magic 0x12345678, expected"):
        read_idx(path)


def test_idx_wrong_dtype_code(tmp_path):
    path = tmp_path / "floats"
    path.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + b"\0" * 8)  # 0x0D = float32
    with pytest.raises(DataError, match=r"floats.*bad magic 0x00000d01"):
        read_idx(path)


def test_idx_truncated_payload(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    path = tmp_path / "short-ubyte"
    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"short-ubyte.*truncated.*7840 bytes.*found 7740"):
        read_idx(path)


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "header-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\0\0\0\x05")
    with pytest.raises(DataError, match=r"header-ubyte.*truncated IDX header"):
        read_idx(path)


def test_idx_trailing_garbage(tmp_path):
    path = tmp_path / "long-ubyte"
    path.write_bytes(idx_bytes(np.zeros(5, np.uint8)) + b"junk")
    with pytest.raises(DataError, match=r"long-ubyte.*trailing garbage.*found 9"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(3000, dtype=np.int64).astype(np.uint8)))
    path = tmp_path / "cut-ubyte.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"cut-ubyte\.gz.*gzip"):
        read_idx(path)


def test_idx_corrupt_gzip(tmp_path):
    compressed = bytearray(gzip.compress(idx_bytes(np.arange(3000, dtype=np.int64).astype(np.uint8))))
    compressed[len(compressed) // 2] ^= 0xFF
    compressed[len(compressed) // 2 + 1] ^= 0xFF
    path = tmp_path / "flipped.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match=r"flipped\.gz.*gzip"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothing-here"):
        read_idx(tmp_path / "nothing-here")


# ---- MNIST family ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads_from_dir(tmp_path, gz):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", split, tmp_path)
        images, labels = arrays[prefix]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(images), 1, 28, 28)
        assert ds.labels.dtype == torch.int64
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
    assert len(load_dataset("mnist", "train", tmp_path, limit=5)) == 5


def test_mnist_prefers_existing_variant(tmp_path):
    # Only some files compressed: each one is found under whichever name exists.
    arrays = write_mnist_dir(tmp_path, gz=False)
    raw = tmp_path / "train-labels-idx1-ubyte"
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw.read_bytes()))
    raw.unlink()
    np.testing.assert_array_equal(load_dataset("mnist", "train", tmp_path).labels.numpy(), arrays["train"][1])


def test_mnist_needs_data_dir():
    with pytest.raises(DataError, match=r"--data-dir"):
        load_dataset("mnist")


def test_mnist_missing_file_names_path(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte") as err:
        load_dataset("mnist", "test", tmp_path)
    assert str(tmp_path) in str(err.value)


def test_fashion_missing_file_mentions_debian_package(tmp_path):
    with pytest.raises(DataError, match=r"dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"does-not-exist"):
        load_dataset("mnist", "train", tmp_path / "does-not-exist")


def test_mnist_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path, n_train=30)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8), gz=True)
    with pytest.raises(DataError, match=r"30 images.*29 labels"):
        load_dataset("mnist", "train", tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    write_mnist_dir(tmp_path, n_train=30)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(30, 10, np.uint8), gz=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*label 10 out of range"):
        load_dataset("mnist", "train", tmp_path)


def test_mnist_wrong_image_size(tmp_path):
    write_mnist_dir(tmp_path, n_train=30)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((30, 32, 32), np.uint8), gz=True)
    with pytest.raises(DataError, match=r"32x32, expected 28x28"):
        load_dataset("mnist", "train", tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()
                    and not (FASHION_MNIST_DIR / "train-images-idx3-ubyte").exists(),
                    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist():
    start = time.perf_counter()
    train = load_dataset("fashion-mnist", "train")
    elapsed = time.perf_counter() - start
    test = load_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    for ds in (train, test):
        assert ds.labels.min() == 0 and ds.labels.max() == 9
        assert torch.bincount(ds.labels).tolist() == [len(ds) // 10] * 10  # the set is balanced
    # The published constants describe this data.
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - train.info.mean[0]) < 1e-3
    assert abs(pixels.std().item() - train.info.std[0]) < 1e-3
    assert elapsed < 2.0, f"loading Fashion-MNIST train took {elapsed:.2f} s"


# ---- CIFAR ---------------------------------------------------------------------------------------


def test_cifar10_loads_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar10(folder)
    train = load_dataset("cifar10", "train", folder)
    assert train.images.shape == (35, 3, 32, 32) and train.images.dtype == torch.uint8
    expected = np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    # Row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major.
    np.testing.assert_array_equal(train.images.numpy().reshape(35, 3072), expected)
    assert train.images[0, 1, 0, 5].item() == expected[0, 1024 + 5]
    assert train.labels.tolist() == sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])

    # The parent folder works too.
    test = load_dataset("cifar10", "test", tmp_path)
    assert test.labels.tolist() == batches["test_batch"][b"labels"] and test.info.augment


def test_cifar100_loads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train = cifar_batch(9, 100, b"fine_labels", seed=5)
    train[b"coarse_labels"] = [0] * 9
    write_pickle(folder / "train", train)
    write_pickle(folder / "test", cifar_batch(4, 100, b"fine_labels", seed=6))
    ds = load_dataset("cifar100", "train", tmp_path)
    assert ds.info.num_classes == 100 and ds.labels.tolist() == train[b"fine_labels"]
    assert len(load_dataset("cifar100", "test", folder)) == 4


def test_cifar_python2_global_names(tmp_path):
    # The official files were pickled by numpy 1 and name numpy.core.multiarray._reconstruct.
    batches = write_cifar10(tmp_path)
    path = tmp_path / "test_batch"
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_dataset("cifar10", "test", tmp_path).labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data_batch_1.*cifar-10-batches-py"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DataError, match=r"--data-dir"):
        load_dataset("cifar10", "train")


def test_cifar_missing_later_batch(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"data_batch_4"):
        load_dataset("cifar10", "train", tmp_path)


def test_cifar_truncated_batch(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"test_batch.*truncated or corrupt"):
        load_dataset("cifar10", "test", tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update({b"data": b[b"data"][:, :3000]}), r"shape \(N, 3072\)"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.int16)}), r"uint8"),
    (lambda b: b.update({b"labels": b[b"labels"][:-1]}), r"7 images but 6 labels"),
    (lambda b: b.update({b"labels": [10] * 7}), r"labels must lie in \[0, 10\)"),
    (lambda b: b.update({b"labels": [-1] * 7}), r"labels must lie in \[0, 10\)"),
    (lambda b: b.pop(b"labels"), r"missing key 'labels'"),
])
def test_cifar_bad_contents(tmp_path, change, message):
    batches = write_cifar10(tmp_path)
    change(batches["test_batch"])
    write_pickle(tmp_path / "test_batch", batches["test_batch"])
    with pytest.raises(DataError, match=r"test_batch.*" + message):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_not_a_dict(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "test_batch", [1, 2, 3])
    with pytest.raises(DataError, match=r"test_batch.*expected a pickled dict"):
        load_dataset("cifar10", "test", tmp_path)


class _RunsCommand:
    """Unpickling this calls os.system(command): what a tampered batch could do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsEval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        import builtins
        return builtins.eval, (self.code,)


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_cifar_malicious_pickle_is_refused(tmp_path, payload):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    if payload == "system":
        evil = _RunsCommand(f"touch {marker}")
        refused = r"(os|posix|nt)\.system"
    elif payload == "eval":
        evil = _CallsEval(f"open({str(marker)!r}, 'w').close()")
        refused = r"(builtins|__builtin__)\.eval"
    else:  # hidden inside an otherwise genuine-looking batch
        evil = cifar_batch(7, 10, b"labels", seed=0)
        evil[b"batch_label"] = _RunsCommand(f"touch {marker}")
        refused = r"(os|posix|nt)\.system"
    write_pickle(tmp_path / "test_batch", evil)
    with pytest.raises(DataError, match=r"test_batch.*refused to load global " + refused):
        load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()


def test_cifar_codecs_only_latin1(tmp_path):
    # _codecs.encode is admitted for protocol-2 bytes, but only with the latin-1 codec.
    class OtherCodec:
        def __reduce__(self):
            import codecs
            return codecs.encode, (b"x" * 10, "zlib_codec")

    write_cifar10(tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": OtherCodec()})
    with pytest.raises(DataError, match=r"test_batch.*codec"):
        load_dataset("cifar10", "test", tmp_path)


# ---- digits, synthetic, names ------------------------------------------------------------------------


def test_digits_split():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360
    assert train.images.shape[1:] == (1, 8, 8) == train.info.image_shape
    assert train.images.max() == 255 and train.labels.max() == 9
    # Deterministic: the same split every time.
    assert torch.equal(load_dataset("digits", "test").images, test.images)
    # Train and test together are the whole set, once each.
    from sklearn.datasets import load_digits
    whole = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    combined = torch.cat([train.images, test.images]).reshape(1797, 64).numpy()
    assert sorted(map(bytes, combined)) == sorted(map(bytes, whole.reshape(1797, 64)))
    pixels = combined / 255
    assert abs(pixels.mean() - train.info.mean[0]) < 1e-3 and abs(pixels.std() - train.info.std[0]) < 1e-3


def test_synthetic_is_deterministic_and_matches_info():
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    info = dataset_info("synthetic")
    assert len(train) == 2000 and len(test) == 500
    assert train.images.shape[1:] == info.image_shape and int(train.labels.max()) == info.num_classes - 1
    assert torch.equal(load_dataset("synthetic").images, train.images)
    assert not torch.equal(train.images[:500], test.images)  # different seeds
    pixels = train.images.float() / 255
    assert abs(pixels.mean().item() - info.mean[0]) < 0.01 and abs(pixels.std().item() - info.std[0]) < 0.01
    images, labels = make_synthetic(20, num_classes=4, image_shape=(3, 8, 8), seed=3)
    assert images.shape == (20, 3, 8, 8) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [5, 5, 5, 5]


def test_synthetic_is_learnable():
    # A nearest-class-mean classifier fit on train must do well on test: classes share templates.
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    xs, xt = train.images.flatten(1).float(), test.images.flatten(1).float()
    means = torch.stack([xs[train.labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(xt, means).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.95


def test_dataset_info_names():
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "cifar10", "cifar100", "digits", "synthetic",
                             "dacsdc-synthetic", "dacsdc")
    for name in DATASET_NAMES:
        info = dataset_info(name)
        assert info.name == name and len(info.mean) == len(info.std) == info.image_shape[0]
    assert dataset_info("Fashion_MNIST").name == "fashion-mnist"
    assert dataset_info("cifar100").num_classes == 100 and dataset_info("cifar10").augment
    with pytest.raises(ConfigError, match=r"imagenet.*mnist, fashion-mnist, cifar10, cifar100, digits, synthetic"):
        dataset_info("imagenet")


def test_load_dataset_bad_arguments():
    with pytest.raises(ConfigError, match=r"split 'val'"):
        load_dataset("digits", "val")
    with pytest.raises(ConfigError, match=r"limit"):
        load_dataset("digits", limit=0)
    assert len(load_dataset("digits", limit=10)) == 10
    with pytest.raises(DataError, match=r"uint8"):
        ArrayDataset(dataset_info("digits"), torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))


# ---- to_model_input ---------------------------------------------------------------------------------


def test_same_shape_normalisation_per_channel():
    info = dataset_info("cifar10")
    images = torch.stack([torch.zeros(3, 32, 32), torch.full((3, 32, 32), 255.0)]).to(torch.uint8)
    images[0, 1, 3, 4] = 128
    x = to_model_input(images, info, (3, 32, 32))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    for c in range(3):
        mean, std = info.mean[c], info.std[c]
        assert x[0, c, 0, 0].item() == pytest.approx(-mean / std, abs=1e-5)
        assert x[1, c, 7, 9].item() == pytest.approx((1 - mean) / std, abs=1e-5)
    assert x[0, 1, 3, 4].item() == pytest.approx((128 / 255 - info.mean[1]) / info.std[1], abs=1e-5)


def test_28_to_32_pads_with_black():
    info = dataset_info("fashion-mnist")
    images = torch.randint(1, 256, (3, 1, 28, 28), dtype=torch.uint8)  # no zeros inside
    x = to_model_input(images, info, (1, 32, 32))
    assert x.shape == (3, 1, 32, 32)
    black = (0 - info.mean[0]) / info.std[0]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.allclose(x[:, :, border], torch.tensor(black))
    assert torch.allclose(x[:, :, 2:30, 2:30], to_model_input(images, info, (1, 28, 28)))


def test_8_to_32_upsamples_nearest():
    info = dataset_info("digits")
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    x = to_model_input(images, info, (1, 32, 32))
    small = to_model_input(images, info, (1, 8, 8))
    assert x.shape == (2, 1, 32, 32)
    assert torch.equal(x[:, :, 13, 22], small[:, :, 3, 5]) and torch.equal(x[:, :, 12::4, 20::4], small[:, :, 3:, 5:])


@pytest.mark.parametrize("name, shape", [("fashion-mnist", (1, 30, 30)), ("fashion-mnist", (3, 32, 32)),
                                         ("cifar10", (1, 32, 32)), ("digits", (1, 28, 28))])
def test_unsupported_geometry(name, shape):
    info = dataset_info(name)
    images = torch.zeros(1, *info.image_shape, dtype=torch.uint8)
    with pytest.raises(ConfigError) as err:
        to_model_input(images, info, shape)
    assert str(info.image_shape) in str(err.value) and str(shape) in str(err.value)


def test_rejects_float_images():
    with pytest.raises(ConfigError, match=r"uint8"):
        to_model_input(torch.zeros(1, 1, 28, 28), dataset_info("mnist"), (1, 28, 28))


# ---- augmentation ----------------------------------------------------------------------------------


def _augment(images, seed):
    return to_model_input(images, dataset_info("cifar10"), (3, 32, 32), augment=True,
                          generator=torch.Generator().manual_seed(seed))


def test_augmentation_is_deterministic():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(_augment(images, 7), _augment(images, 7))
    assert not torch.equal(_augment(images, 7), _augment(images, 8))
    plain = to_model_input(images, dataset_info("cifar10"), (3, 32, 32))
    assert not torch.equal(_augment(images, 7), plain)


def test_augmentation_is_crop_and_flip():
    info = dataset_info("cifar10")
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding is visible
    # Undo the normalisation to compare pixels exactly with crops of the zero-padded images.
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    out = ((_augment(images, 0) * std + mean) * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    seen = set()
    for i in range(len(images)):
        matches = [(top, left, flip)
                   for top in range(9) for left in range(9) for flip in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(
                       padded[i, :, top:top + 32, left:left + 32]))]
        assert len(matches) == 1, f"image {i} is not a single crop/flip of its padded input"
        seen.add(matches[0])
    flips = {flip for _, _, flip in seen}
    offsets = {(top, left) for top, left, _ in seen}
    assert flips == {False, True} and len(offsets) > 20


def test_augment_ignored_without_info_flag():
    info = dataset_info("fashion-mnist")
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(to_model_input(images, info, (1, 32, 32), augment=True,
                                      generator=torch.Generator().manual_seed(0)),
                       to_model_input(images, info, (1, 32, 32)))


# ---- iterate_batches -------------------------------------------------------------------------------


def _id_dataset(n: int) -> ArrayDataset:
    """Labels are sample ids, so batches can be traced back to samples."""
    images, _ = make_synthetic(n)
    return ArrayDataset(dataset_info("synthetic"), images, torch.arange(n))


def test_batches_cover_every_sample_once():
    ds = _id_dataset(103)
    g = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):  # two epochs: each a permutation, and they differ
        seen, sizes = [], []
        for x, y in iterate_batches(ds, 10, (1, 32, 32), shuffle=True, generator=g):
            assert x.shape == (len(y), 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
            assert torch.equal(x, to_model_input(ds.images[y], ds.info, (1, 32, 32)))  # x matches y
            seen += y.tolist()
            sizes.append(len(y))
        assert sorted(seen) == list(range(103)) and sizes == [10] * 10 + [3]
        assert seen != list(range(103))
        epochs.append(seen)
    assert epochs[0] != epochs[1]


def test_batches_without_shuffle_and_drop_last():
    ds = _id_dataset(25)
    ys = [y.tolist() for _, y in iterate_batches(ds, 10, (1, 28, 28))]
    assert ys == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    ys = [y.tolist() for _, y in iterate_batches(ds, 10, (1, 28, 28), drop_last=True)]
    assert ys == [list(range(10)), list(range(10, 20))]
    with pytest.raises(ConfigError, match=r"batch size"):
        iterate_batches(ds, 0, (1, 28, 28))


def test_batches_reproducible_from_generator_state():
    info = dataset_info("cifar10")
    ds = ArrayDataset(info, torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.arange(40) % 10)
    g = torch.Generator().manual_seed(123)
    list(iterate_batches(ds, 8, (3, 32, 32), shuffle=True, augment=True, generator=g))  # epoch 1
    state = g.get_state()  # what a checkpoint saves
    epoch2 = list(iterate_batches(ds, 8, (3, 32, 32), shuffle=True, augment=True, generator=g))
    resumed = torch.Generator()
    resumed.set_state(state)
    again = list(iterate_batches(ds, 8, (3, 32, 32), shuffle=True, augment=True, generator=resumed))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch2, again))
    other = list(iterate_batches(ds, 8, (3, 32, 32), shuffle=True, augment=True,
                                 generator=torch.Generator().manual_seed(124)))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(epoch2, other))
