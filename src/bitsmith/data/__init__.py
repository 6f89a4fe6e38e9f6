"""Data sets: readers for the on-disk formats, in-memory splits, and model-ready batches."""

from bitsmith.data.datasets import DATASET_NAMES, ArrayDataset, DatasetInfo, dataset_info, load_dataset
from bitsmith.data.idx import read_idx
from bitsmith.data.synthetic import make_synthetic
from bitsmith.data.transforms import iterate_batches, random_crop_flip, to_model_input

__all__ = [
    "ArrayDataset",
    "DatasetInfo",
    "DATASET_NAMES",
    "dataset_info",
    "load_dataset",
    "to_model_input",
    "iterate_batches",
    "random_crop_flip",
    "read_idx",
    "make_synthetic",
]
