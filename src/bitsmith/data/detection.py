"""Single-object detection data (DAC-SDC style): a seeded synthetic set and a reader for the contest layout.

Both give uint8 RGB images [N, 3, H, W] and one box per image, float32 [N, 4] = (x1, y1, x2, y2)
normalised by the image width / height: the object covers pixel columns [x1·W, x2·W) and rows
[y1·H, y2·H) (docs/detection.md). Normalised boxes do not change when an image is resized, so one
label serves every input size.

`dacsdc-synthetic`: Fashion-MNIST items (the Debian data set; the sklearn digits if it is absent),
cropped to their tight extent, rescaled (nearest neighbour) to a random size and pasted, solid and
coloured, at a random position on a cluttered background: a base colour, low-frequency texture,
stripes, random ellipses, grain and fragments of other items. The box is the tight box of the pasted
object's pixels, so it is exact by construction. Everything is drawn from generators seeded by
`seed` and the chunk index, so the same arguments give the same bytes.

`dacsdc`: a folder per split (`DIR/train`, `DIR/test`) of .jpg/.png images, each with a PASCAL
VOC-style .xml of the same name holding one `<object><bndbox>` (xmin, ymin, xmax, ymax in pixels),
as the contest ships them; images are resized to the input size on loading.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bitsmith.errors import ConfigError, DataError

CONTEST_SIZE = (160, 320)  # (H, W): the DAC-SDC input of UltraNet and SkyNet
CHUNK = 256  # images composed at once: bounds the float32 working set (~150 MB at 160 x 320)
OBJECT_THRESHOLD = 48  # item pixels below this are background (Fashion-MNIST has faint halos)
TARGET_HEIGHT = (0.2, 0.6)  # the object's height as a fraction of the image height
CLUTTER_FRAGMENTS = 3
BLOBS = 4
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_SIZE_SUFFIX = re.compile(r"^(?P<base>.+?)-(?P<h>\d+)x(?P<w>\d+)$")


def split_size(name: str) -> tuple[str, tuple[int, int]]:
    """'dacsdc-synthetic-80x160' -> ('dacsdc-synthetic', (80, 160)); no suffix: the contest size."""
    match = _SIZE_SUFFIX.match(name)
    if match is None:
        return name, CONTEST_SIZE
    size = (int(match["h"]), int(match["w"]))
    if min(size) < 16 or max(size) > 2048:
        raise ConfigError(f"{name}: input size {size[0]}x{size[1]} out of range (16..2048 per side)")
    return match["base"], size


# ---- object sources -------------------------------------------------------------------------------

def object_items(split: str) -> np.ndarray:
    """Grey item images [N, h, w] uint8 with faint pixels zeroed: Fashion-MNIST of `split`, or the
    sklearn digits (upsampled x3) when the Debian Fashion-MNIST files are absent."""
    from bitsmith.data.datasets import FASHION_MNIST_DIR, load_dataset  # a cycle at import time otherwise

    if (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file() or \
            (FASHION_MNIST_DIR / "train-images-idx3-ubyte").is_file():
        items = load_dataset("fashion-mnist", split).images[:, 0].numpy()
    else:
        digits = load_dataset("digits", split).images[:, 0].numpy()
        items = digits.repeat(3, axis=1).repeat(3, axis=2)
    items = np.where(items >= OBJECT_THRESHOLD, items, 0).astype(np.uint8)
    return items[items.reshape(len(items), -1).any(axis=1)]  # an empty item has no box


def _tight_extent(items: np.ndarray) -> np.ndarray:
    """Per item (top, left, height, width) of its non-zero pixels."""
    rows, cols = items.any(axis=2), items.any(axis=1)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    right = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    return np.stack([top, left, bottom - top, right - left], axis=1)


# ---- the synthetic set ----------------------------------------------------------------------------

def make_detection(n: int, seed: int = 0, size: tuple[int, int] = CONTEST_SIZE, *, split: str = "train",
                   items: np.ndarray | None = None, return_masks: bool = False):
    """`n` images of the synthetic single-object set: (uint8 [n, 3, H, W], float32 boxes [n, 4]),
    and with `return_masks` also the object masks (bool [n, H, W]; for tests of the boxes).

    `items` are the grey objects to paste (default: `object_items(split)`). The result depends only
    on (n, seed, size, items): a bank of textures is drawn from `seed`, then images are made in
    chunks of CHUNK, each from its own generator.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of images must be a positive integer, got {n!r}")
    height, width = size
    if height < 16 or width < 16:
        raise ConfigError(f"image size must be at least 16 x 16, got {height} x {width}")
    items = object_items(split) if items is None else items
    if items.ndim != 3 or items.dtype != np.uint8 or not items.reshape(len(items), -1).any(axis=1).all():
        raise DataError("object items must be uint8 [N, h, w], none of them empty")
    extents = torch.from_numpy(_tight_extent(items)).to(torch.int64)
    items_t = torch.from_numpy(items)
    bank = _texture_bank(size, torch.Generator().manual_seed(int(seed) * 1_000_003 - 1))
    images = torch.empty((n, 3, height, width), dtype=torch.uint8)
    boxes = torch.empty((n, 4), dtype=torch.float32)
    masks = torch.zeros((n, height, width), dtype=torch.bool) if return_masks else None
    for chunk, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + chunk)
        image, box, window = _compose(stop - start, bank, items_t, extents, gen)
        images[start:stop], boxes[start:stop] = image, box
        if masks is not None:
            rows, cols, mask = window
            batch = torch.arange(stop - start)[:, None, None]
            masks[start:stop][batch, rows, cols] = mask
    return (images, boxes, masks) if return_masks else (images, boxes)


def _uniform(gen: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


TEXTURES = 128  # textures in the bank; each is stored with its colour channels in all 6 orders
_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _texture_bank(size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """uint8 [6 * TEXTURES, H, W, 3] textured backgrounds, drawn at half resolution and upsampled:
    composing every image's background from scratch would cost most of the time budget.

    Drawn on one thread: how torch splits sin/cos and the interpolation between threads decides
    which elements take its vector path and which its scalar one, and the two can differ in the
    last bit (measured: 32 pixels of 1,000 images off by one between 1 and 2 threads). The rest of
    the generator is integer work and single IEEE operations, the same on any thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _draw_bank(size, gen)
    finally:
        torch.set_num_threads(threads)


def _draw_bank(size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    height, width = size
    half = _background(TEXTURES, (-(-height // 2), -(-width // 2)), gen)
    full = F.interpolate(half, size=size, mode="bilinear", align_corners=False)
    grain = torch.rand((TEXTURES, 3, height, width), generator=gen) - 0.5
    full = ((full + 0.1 * grain).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return torch.cat([full[:, list(p)] for p in _PERMUTATIONS]).permute(0, 2, 3, 1).contiguous()


def _compose(b: int, bank: torch.Tensor, items: torch.Tensor, extents: torch.Tensor,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """b images [b, 3, H, W] uint8, their boxes, and the object's window (rows, cols, mask)."""
    _, height, width, _ = bank.shape
    canvas = bank[torch.randint(len(bank), (b,), generator=gen)]  # [b, H, W, 3], a copy
    # Clutter: fragments (a random part of another item) in muted colours, under the object.
    for _ in range(CLUTTER_FRAGMENTS):
        pick = torch.randint(len(items), (b,), generator=gen)
        ext = extents[pick]
        frac = _uniform(gen, (b, 2), 0.35, 0.7)
        part_h = (ext[:, 2] * frac[:, 0]).clamp(min=1).to(torch.int64)
        part_w = (ext[:, 3] * frac[:, 1]).clamp(min=1).to(torch.int64)
        top = ext[:, 0] + (torch.rand(b, generator=gen) * (ext[:, 2] - part_h + 1)).to(torch.int64)
        left = ext[:, 1] + (torch.rand(b, generator=gen) * (ext[:, 3] - part_w + 1)).to(torch.int64)
        dst_h = (_uniform(gen, b, 0.1, 0.35) * height).clamp(min=2).to(torch.int64)
        dst_w = (dst_h * part_w / part_h).clamp(2, width // 2).to(torch.int64)
        grey = _uniform(gen, (b, 1), 0.2, 0.8)
        colour = grey + _uniform(gen, (b, 3), -0.1, 0.1)
        _stamp(canvas, items[pick], torch.stack([top, left, part_h, part_w], 1), dst_h, dst_w, colour, 0.5, gen)

    # The object: a whole item, saturated colour, shaded by its grey levels, inside the image.
    pick = torch.randint(len(items), (b,), generator=gen)
    ext = extents[pick]
    obj_h = _uniform(gen, b, *TARGET_HEIGHT) * height
    aspect = ext[:, 3] / ext[:, 2] * _uniform(gen, b, 0.8, 1.25)
    obj_w = (obj_h * aspect).clamp(max=0.6 * width)
    obj_h, obj_w = obj_h.clamp(min=8).to(torch.int64), obj_w.clamp(min=8).to(torch.int64)
    hue = torch.rand((b, 3), generator=gen)
    lo, hi = hue.amin(dim=1, keepdim=True), hue.amax(dim=1, keepdim=True)
    colour = (hue - lo) / (hi - lo).clamp(min=1e-3)  # one channel at 1, one at 0: saturated
    rows, cols, mask = _stamp(canvas, items[pick], ext, obj_h, obj_w, colour, 0.45, gen)
    empty = ~mask.flatten(1).any(dim=1)
    if empty.any():  # cannot happen for items of >= 1 pixel pasted at >= 8 x 8; never label an absent object
        raise DataError(f"{int(empty.sum())} synthetic object(s) lost every pixel when resized")
    y1, y2 = _extent(rows, mask.any(dim=2))
    x1, x2 = _extent(cols, mask.any(dim=1))
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32) / scale
    return canvas.permute(0, 3, 1, 2).contiguous(), boxes, (rows[:, :, None], cols[:, None, :], mask)


def _extent(coords: torch.Tensor, hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last canvas coordinate [b] at which `hit` [b, n] is True (none empty)."""
    first = hit.to(torch.uint8).argmax(dim=1)
    last = hit.shape[1] - 1 - hit.flip(1).to(torch.uint8).argmax(dim=1)
    return coords.gather(1, first[:, None])[:, 0], coords.gather(1, last[:, None])[:, 0] + 1


def _stamp(canvas: torch.Tensor, items: torch.Tensor, src: torch.Tensor, dst_h: torch.Tensor,
           dst_w: torch.Tensor, colour: torch.Tensor, floor: float, gen: torch.Generator):
    """Paste each item's source window (src [b, 4]: top, left, height, width), resized (nearest) to
    dst_h x dst_w at a random position inside the canvas [b, H, W, 3] (uint8, changed in place),
    solid in `colour` [b, 3] shaded by the item's grey level (floor + (1 - floor) * grey).

    Only a window of the largest pasted size is computed, not the whole canvas. Returns the
    window's canvas rows [b, wh], columns [b, ww] and the pasted pixels' mask [b, wh, ww]."""
    b, height, width, _ = canvas.shape
    y0 = (torch.rand(b, generator=gen) * (height - dst_h + 1)).to(torch.int64)
    x0 = (torch.rand(b, generator=gen) * (width - dst_w + 1)).to(torch.int64)
    wh, ww = int(dst_h.max()), int(dst_w.max())
    wy0 = torch.minimum(y0, torch.full_like(y0, height - wh))  # the window stays inside the canvas
    wx0 = torch.minimum(x0, torch.full_like(x0, width - ww))
    rows = wy0[:, None] + torch.arange(wh)[None, :]  # [b, wh] canvas rows of the window
    cols = wx0[:, None] + torch.arange(ww)[None, :]
    rel_r, rel_c = rows - y0[:, None], cols - x0[:, None]
    in_r = (rel_r >= 0) & (rel_r < dst_h[:, None])
    in_c = (rel_c >= 0) & (rel_c < dst_w[:, None])
    # Nearest-neighbour source row / column of every window row / column; outside the pasted
    # rectangle they point at a zero row / column appended to the items, so the gathers read 0 there.
    _, ih, iw = items.shape
    src_r = (src[:, 0:1] + (rel_r.clamp(min=0) * src[:, 2:3]) // dst_h[:, None]).clamp(max=ih - 1)
    src_c = (src[:, 1:2] + (rel_c.clamp(min=0) * src[:, 3:4]) // dst_w[:, None]).clamp(max=iw - 1)
    src_r, src_c = torch.where(in_r, src_r, ih), torch.where(in_c, src_c, iw)
    padded = F.pad(items, (0, 1, 0, 1))  # [b, ih + 1, iw + 1]
    picked_rows = padded.gather(1, src_r[:, :, None].expand(b, wh, iw + 1))
    grey = picked_rows.gather(2, src_c[:, None, :].expand(b, wh, ww))  # [b, wh, ww]
    mask = grey > 0
    # Write only the pasted pixels, through flat indices (4-D advanced indexing is several times slower).
    k, i, j = mask.nonzero(as_tuple=True)
    levels = floor + (1.0 - floor) * torch.arange(256, dtype=torch.float32) / 255.0  # shade per grey level
    palette = (colour[:, None, :] * levels[None, :, None] * 255.0).round().clamp(0, 255).to(torch.uint8)
    pixels = palette.view(-1, 3).index_select(0, k * 256 + grey[k, i, j].to(torch.int64))
    canvas.view(-1, 3).index_copy_(0, (k * height + rows[k, i]) * width + cols[k, j], pixels)
    return rows, cols, mask


def _background(b: int, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Textured float backgrounds [b, 3, H, W] in about [0, 1]: base colour, low-frequency texture,
    stripes and ellipses."""
    height, width = size
    canvas = _uniform(gen, (b, 3, 1, 1), 0.15, 0.85).expand(b, 3, height, width)
    coarse = torch.rand((b, 3, height // 8 + 2, width // 8 + 2), generator=gen) - 0.5
    texture = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    canvas = canvas + texture * _uniform(gen, (b, 1, 1, 1), 0.2, 0.7)

    theta = _uniform(gen, (b, 1, 1, 1), 0.0, math.pi)
    period = _uniform(gen, (b, 1, 1, 1), 0.04, 0.2) * height
    phase = _uniform(gen, (b, 1, 1, 1), 0.0, 2 * math.pi)
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    stripes = torch.sin((xs * torch.cos(theta) + ys * torch.sin(theta)) * (2 * math.pi / period) + phase)
    strength = _uniform(gen, (b, 1, 1, 1), 0.0, 0.25) * (torch.rand((b, 1, 1, 1), generator=gen) < 0.7)
    canvas = canvas + stripes * strength * _uniform(gen, (b, 3, 1, 1), -1.0, 1.0)

    for _ in range(BLOBS):
        cy, cx = _uniform(gen, (b, 1, 1, 1), 0, height), _uniform(gen, (b, 1, 1, 1), 0, width)
        ry = _uniform(gen, (b, 1, 1, 1), 0.03, 0.2) * height
        rx = ry * _uniform(gen, (b, 1, 1, 1), 0.5, 2.0)
        inside = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1.0
        canvas = torch.where(inside, _uniform(gen, (b, 3, 1, 1), 0.0, 1.0), canvas)
    return canvas


# ---- the contest layout ---------------------------------------------------------------------------

def read_voc_box(path: Path) -> tuple[tuple[int, int] | None, tuple[float, float, float, float]]:
    """((width, height) from <size>, or None; (xmin, ymin, xmax, ymax)) of the one object in a VOC .xml."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise DataError(f"{path}: not a readable XML annotation ({error})") from error
    boxes = root.findall(".//object/bndbox")
    if len(boxes) != 1:
        raise DataError(f"{path}: expected exactly one <object><bndbox>, found {len(boxes)}")
    try:
        coords = tuple(float(boxes[0].findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        size_node = root.find("size")
        size = None
        if size_node is not None and size_node.findtext("width") and size_node.findtext("height"):
            size = (int(float(size_node.findtext("width"))), int(float(size_node.findtext("height"))))
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: bndbox needs numeric xmin, ymin, xmax, ymax ({error})") from error
    return size, coords


def load_contest_folder(folder: Path, size: tuple[int, int] = CONTEST_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Images (resized to `size`, uint8 [N, 3, H, W]) and normalised boxes (float32 [N, 4]) of a folder
    of .jpg/.png images each with a same-named .xml (searched recursively, sorted by path)."""
    from PIL import Image

    if not folder.is_dir():
        raise DataError(f"dacsdc: image folder {folder} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    labels = sorted(folder.rglob("*.xml"))
    if not images:
        raise DataError(f"dacsdc: no .jpg/.png images in {folder}")
    unlabelled = [p for p in images if not p.with_suffix(".xml").is_file()]
    image_stems = {p.with_suffix("") for p in images}
    orphans = [p for p in labels if p.with_suffix("") not in image_stems]
    if unlabelled or orphans:
        raise DataError(f"dacsdc: {folder} holds {len(images)} images and {len(labels)} .xml labels; every image "
                        f"needs one label of the same name. Unlabelled: {[p.name for p in unlabelled[:3]]}, "
                        f"labels without an image: {[p.name for p in orphans[:3]]}")
    height, width = size
    out = np.empty((len(images), 3, height, width), dtype=np.uint8)
    boxes = np.empty((len(images), 4), dtype=np.float32)
    for i, path in enumerate(images):
        with Image.open(path) as image:
            image = image.convert("RGB")
            real_w, real_h = image.size
            declared, (x1, y1, x2, y2) = read_voc_box(path.with_suffix(".xml"))
            if declared is not None and declared != (real_w, real_h):
                raise DataError(f"{path.with_suffix('.xml')}: says the image is {declared[0]}x{declared[1]}, "
                                f"{path.name} is {real_w}x{real_h}")
            if not (0 <= x1 < x2 <= real_w and 0 <= y1 < y2 <= real_h):
                raise DataError(f"{path.with_suffix('.xml')}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is not inside "
                                f"the {real_w}x{real_h} image (need 0 <= xmin < xmax <= width, same for y)")
            out[i] = np.asarray(image.resize((width, height), Image.BILINEAR)).transpose(2, 0, 1)
            boxes[i] = (x1 / real_w, y1 / real_h, x2 / real_w, y2 / real_h)
    return out, boxes


def check_boxes(boxes: np.ndarray | torch.Tensor, what: str) -> None:
    """Refuse boxes that are not [N, 4] normalised (x1, y1, x2, y2) with 0 <= x1 < x2 <= 1 (same for y)."""
    b = torch.as_tensor(boxes)
    if b.ndim != 2 or b.shape[1] != 4:
        raise DataError(f"{what}: boxes must be [N, 4], got {tuple(b.shape)}")
    ok = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= 1) & (b[:, 3] <= 1) & (b[:, 0] < b[:, 2]) & (b[:, 1] < b[:, 3])
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0])
        raise DataError(f"{what}: box {i} {b[i].tolist()} is outside the image or empty "
                        f"(need 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1)")
