"""Datasets: the registry, specs and batch iteration (images are float NCHW in [0, 1])."""

from eviltwins.data.base import (
    DatasetSpec,
    TensorImageDataset,
    augment_batch,
    check_images,
    iter_batches,
    load_all,
    resolve_data_root,
)
from eviltwins.data.datasets import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "TensorImageDataset",
    "augment_batch",
    "check_images",
    "iter_batches",
    "load_all",
    "load_dataset",
    "resolve_data_root",
]
