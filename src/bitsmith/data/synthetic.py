"""A small, deterministic and learnable image data set for tests and smoke runs.

Each class is a fixed random template of coarse 4x4-pixel blocks (smooth enough for a small CNN
to pick up in a few steps); a sample is its class template plus Gaussian pixel noise. The
templates depend only on ``template_seed`` and the shape, so a train and a test set drawn with
different ``seed`` values share classes, and a model trained on one generalises to the other.
"""

from __future__ import annotations

import numpy as np
import torch

NOISE_STD = 48.0  # in pixel units; strong enough that samples are not copies of the template
BLOCK = 4


def make_templates(num_classes: int, image_shape: tuple[int, int, int], template_seed: int = 0) -> np.ndarray:
    """Per-class float templates in [16, 240], shape [num_classes, C, H, W]."""
    c, h, w = image_shape
    rng = np.random.default_rng(template_seed)
    coarse = rng.random((num_classes, c, -(-h // BLOCK), -(-w // BLOCK)))
    fine = coarse.repeat(BLOCK, axis=2).repeat(BLOCK, axis=3)[:, :, :h, :w]
    return 16.0 + 224.0 * fine


def make_synthetic(n: int, num_classes: int = 10, image_shape: tuple[int, int, int] = (1, 28, 28),
                   seed: int = 0, *, template_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples as (uint8 images [n, C, H, W], int64 labels [n]), balanced over the classes.

    The same arguments always give the same tensors; ``seed`` picks the samples (labels order and
    noise), ``template_seed`` the classes.
    """
    templates = make_templates(num_classes, image_shape, template_seed)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes)
    noise = rng.normal(0.0, NOISE_STD, size=(n, *image_shape))
    images = np.clip(np.rint(templates[labels] + noise), 0, 255).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
