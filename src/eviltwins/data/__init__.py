"""Datasets: the registry, specs and batch iteration (images are float NCHW in [0, 1])."""

from eviltwins.data.base import (
    MAX_IMAGE_PIXELS,
    DatasetSpec,
    TensorImageDataset,
    augment_batch,
    check_arrays,
    check_images,
    iter_batches,
    load_all,
    read_image,
    resolve_data_root,
)
from eviltwins.data.datasets import DATASETS, load_dataset, read_idx

__all__ = [
    "DATASETS",
    "MAX_IMAGE_PIXELS",
    "DatasetSpec",
    "TensorImageDataset",
    "augment_batch",
    "check_arrays",
    "check_images",
    "iter_batches",
    "load_all",
    "load_dataset",
    "read_idx",
    "read_image",
    "resolve_data_root",
]
