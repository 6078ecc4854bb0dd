"""Datasets: the registry, the user's own files (``.npz``, image folders), specs and batch
iteration (images are float NCHW in [0, 1])."""

from eviltwins.data.base import (
    MAX_IMAGE_PIXELS,
    DatasetSpec,
    TensorImageDataset,
    augment_batch,
    check_arrays,
    check_images,
    iter_batches,
    load_all,
    load_at,
    load_labels,
    read_image,
    resolve_data_root,
)
from eviltwins.data.datasets import DATASETS, read_idx
from eviltwins.data.files import DATASET_OPTIONS, check_dataset_options, npz_dataset
from eviltwins.data.folders import image_tree_dataset
from eviltwins.data.loading import (
    dataset_location,
    dataset_slug,
    is_path_dataset,
    load_dataset,
    load_path_dataset,
)

__all__ = [
    "DATASETS",
    "DATASET_OPTIONS",
    "MAX_IMAGE_PIXELS",
    "DatasetSpec",
    "TensorImageDataset",
    "augment_batch",
    "check_arrays",
    "check_dataset_options",
    "check_images",
    "dataset_location",
    "dataset_slug",
    "image_tree_dataset",
    "is_path_dataset",
    "iter_batches",
    "load_all",
    "load_at",
    "load_labels",
    "load_dataset",
    "load_path_dataset",
    "npz_dataset",
    "read_idx",
    "read_image",
    "resolve_data_root",
]
