"""The detection data: the seeded synthetic set (determinism, exact boxes, registration) and the
reader of the contest layout (images + VOC .xml), with its errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from bitsmith.data import dataset_info, load_dataset
from bitsmith.data.datasets import ArrayDataset
from bitsmith.data.detection import load_contest_folder, make_detection, object_items
from bitsmith.errors import ConfigError, DataError

SIZE = (32, 64)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return object_items("test")[:500]


def _digest(images: torch.Tensor, boxes: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes() + boxes.numpy().tobytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(items):
    first = _digest(*make_detection(300, 7, SIZE, items=items))  # 300 > CHUNK: two chunks
    assert first == _digest(*make_detection(300, 7, SIZE, items=items))
    assert first != _digest(*make_detection(300, 8, SIZE, items=items))


def test_same_bytes_on_any_thread_count(items):
    threads = torch.get_num_threads()
    try:
        digests = set()
        for count in (1, 3):
            torch.set_num_threads(count)
            digests.add(_digest(*make_detection(64, 5, (64, 128), items=items)))
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1


def test_boxes_are_the_tight_boxes_of_the_object_pixels(items):
    images, boxes, masks = make_detection(200, 3, (48, 96), items=items, return_masks=True)
    assert images.shape == (200, 3, 48, 96) and images.dtype == torch.uint8
    scale = torch.tensor([96, 48, 96, 48])
    for image, box, mask in zip(images, boxes, masks):
        x1, y1, x2, y2 = (box * scale).round().to(torch.int64).tolist()
        assert torch.allclose(box * scale, torch.tensor([x1, y1, x2, y2], dtype=torch.float32))  # whole pixels
        assert mask.sum() > 0 and mask[y1:y2, x1:x2].sum() == mask.sum()  # every object pixel inside
        assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()  # and the box touches it on all four sides
        assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()
    # The object is drawn on top: its pixels are saturated colours, one channel at its darkest shade
    # or below, so they are not the background's (the masks say where they are).
    object_pixels = images.permute(0, 2, 3, 1)[masks]
    assert (object_pixels.amin(dim=1) == 0).float().mean() > 0.5


def test_registered_names_and_sizes():
    info = dataset_info("dacsdc-synthetic")
    assert info.task == "detect" and info.image_shape == (3, 160, 320)
    small = dataset_info("DACSDC_synthetic-32x64")
    assert small.name == "dacsdc-synthetic-32x64" and small.image_shape == (3, 32, 64)
    ds = load_dataset("dacsdc-synthetic-32x64", "test", limit=20)
    assert ds.images.shape == (20, 3, 32, 64) and ds.labels.shape == (20, 4) and ds.labels.dtype == torch.float32
    again = load_dataset("dacsdc-synthetic-32x64", "test", limit=20)
    assert torch.equal(ds.images, again.images) and torch.equal(ds.labels, again.labels)
    with pytest.raises(ConfigError, match="unknown dataset"):
        dataset_info("cifar10-32x32")  # sizes only for detection sets


def test_a_box_outside_the_image_is_refused_in_memory():
    info = dataset_info("dacsdc-synthetic-32x64")
    images = torch.zeros((2, 3, 32, 64), dtype=torch.uint8)
    with pytest.raises(DataError, match="box 1 .* outside the image"):
        ArrayDataset(info, images, torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 1.2, 0.9]]))
    with pytest.raises(DataError, match="float32"):
        ArrayDataset(info, images, torch.tensor([0, 1]))


def _write(folder, name, size=(40, 20), box=(2, 3, 30, 15), declared=None):
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[box[1]:box[3], box[0]:box[2]] = (255, 0, 0)
    Image.fromarray(pixels).save(folder / f"{name}.png")
    dw, dh = declared or size
    (folder / f"{name}.xml").write_text(
        f"<annotation><filename>{name}.png</filename><size><width>{dw}</width><height>{dh}</height>"
        f"<depth>3</depth></size><object><name>car</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
        f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>")


def test_contest_folder_reads_resizes_and_normalises(tmp_path):
    _write(tmp_path / "train" / "car1", "0001")
    _write(tmp_path / "train" / "boat2", "0002", size=(80, 40), box=(0, 0, 80, 40))
    for split in ("train", "test"):
        _write(tmp_path / split / "person", "0003", size=(64, 32), box=(16, 8, 48, 24))
    images, boxes = load_contest_folder(tmp_path / "train", (16, 32))
    assert images.shape == (3, 3, 16, 32)
    # sorted by path: boat2/0002, car1/0001, person/0003
    assert np.allclose(boxes, [[0, 0, 1, 1], [2 / 40, 3 / 20, 30 / 40, 15 / 20], [0.25, 0.25, 0.75, 0.75]])
    ds = load_dataset("dacsdc-16x32", "test", data_dir=tmp_path)
    assert ds.images.shape == (1, 3, 16, 32) and ds.images[0, 0, 8, 16] > 200 and ds.images[0, 0, 1, 1] == 0


def test_contest_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jpg/.png images"):
        load_contest_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_contest_folder(tmp_path / "absent")
    with pytest.raises(DataError, match="pass --data-dir"):
        load_dataset("dacsdc", "train")

    _write(tmp_path / "outside", "a", box=(2, 3, 41, 15))  # xmax past the 40-pixel width
    with pytest.raises(DataError, match=r"a.xml: box \(2, 3, 41, 15\) is not inside the 40x20 image"):
        load_contest_folder(tmp_path / "outside")

    _write(tmp_path / "count", "a")
    _write(tmp_path / "count", "b")
    (tmp_path / "count" / "b.xml").unlink()
    (tmp_path / "count" / "c.xml").write_text("<annotation/>")
    with pytest.raises(DataError, match=r"2 images and 2 .xml labels.*Unlabelled: \['b.png'\].*image: \['c.xml'\]"):
        load_contest_folder(tmp_path / "count")

    _write(tmp_path / "size", "a", declared=(50, 20))
    with pytest.raises(DataError, match="says the image is 50x20"):
        load_contest_folder(tmp_path / "size")

    _write(tmp_path / "two", "a")
    xml = tmp_path / "two" / "a.xml"
    xml.write_text(xml.read_text().replace("</annotation>", "<object><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                                            "<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>"))
    with pytest.raises(DataError, match="exactly one <object><bndbox>, found 2"):
        load_contest_folder(tmp_path / "two")
