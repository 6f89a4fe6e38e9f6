"""Calibration data: the few training batches every PTQ, QAT and CLIP-Q run calibrates its ranges on."""

from __future__ import annotations

import torch

from bitsmith.data import iterate_batches, load_dataset

CALIBRATION_BATCHES = 8
CALIBRATION_BATCH_SIZE = 128
CALIBRATION_SEED = 0


def calibration_batches(dataset: str, input_shape, data_dir=None, batches: int = CALIBRATION_BATCHES,
                        batch_size: int = CALIBRATION_BATCH_SIZE) -> list[torch.Tensor]:
    """A few shuffled training batches (fixed seed, no augmentation) for range calibration."""
    return dataset_batches(load_dataset(dataset, "train", data_dir), input_shape, batches, batch_size)


def dataset_batches(ds, input_shape, batches: int = CALIBRATION_BATCHES,
                    batch_size: int = CALIBRATION_BATCH_SIZE) -> list[torch.Tensor]:
    """The same draw from an already loaded data set."""
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    out = []
    for x, _ in iterate_batches(ds, batch_size, input_shape, shuffle=True, generator=gen):
        out.append(x)
        if len(out) == batches:
            break
    return out
