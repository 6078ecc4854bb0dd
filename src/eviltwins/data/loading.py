"""Datasets by name or by path: :func:`load_dataset` builds a registered dataset
(:data:`~eviltwins.data.datasets.DATASETS`) or reads the user's ``.npz`` file
(:mod:`eviltwins.data.files`) or image folder (:mod:`eviltwins.data.folders`)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from eviltwins.data.base import DatasetSpec, resolve_data_root
from eviltwins.data.datasets import DATASETS, MNIST_LIKE
from eviltwins.data.files import DATASET_OPTIONS, check_dataset_options, npz_dataset
from eviltwins.data.folders import image_tree_dataset
from eviltwins.errors import DataError, ParamError

#: The folder under the data root that each registered dataset reads (``""``: the data root
#: itself); ``digits`` ships with scikit-learn and reads nothing there.
DATA_FOLDERS = {
    **{name: folder for name, (folder, _) in MNIST_LIKE.items()},
    "cifar10": "cifar-10-batches-py",
    "gtsrb": "gtsrb",
    "imagefolder": "",
}


def load_dataset(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    **kwargs: Any,
) -> DatasetSpec:
    """Build the dataset ``name`` from the registry (see :data:`DATASETS`), or read the
    ``.npz`` file or image folder at the path ``name`` (:func:`is_path_dataset`).

    The options ``image_size``, ``channels`` and ``normalize`` (``None``: not given) go to a
    path dataset, and to a registered one only when its factory takes them (``digits``,
    ``gtsrb`` and ``imagefolder`` take ``image_size``); the spec records them as ``options``.
    Other ``kwargs`` go to the registered factory.
    """
    opts = check_dataset_options({k: kwargs.pop(k, None) for k in DATASET_OPTIONS})
    if is_path_dataset(name):
        return load_path_dataset(name, **opts)
    factory = DATASETS.get(name)
    _check_registered_options(name, factory, opts)
    spec = factory(data_root=data_root, download=download, **opts, **kwargs)
    return replace(spec, options=opts) if opts else spec


def is_path_dataset(name: Any) -> bool:
    """Whether ``name`` is a path rather than a registered dataset name: it is not registered
    and ends with ``.npz``, holds a path separator or is an existing folder."""
    if not isinstance(name, str | os.PathLike):
        return False
    text = os.fspath(name)
    if isinstance(name, str) and name.strip().lower().replace("_", "-") in DATASETS:
        return False
    try:
        is_dir = Path(text).expanduser().is_dir()
    except (OSError, ValueError):
        is_dir = False
    return text.endswith(".npz") or os.sep in text or "/" in text or is_dir


def dataset_location(name: Any, data_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The file or folder the dataset ``name`` is read from: a ``.npz`` file or image folder
    named by its path, or a registered dataset's folder under ``data_root`` (``MNIST``,
    ``cifar-10-batches-py``, ...). ``None`` when nothing is read from disk (``digits``, a
    :class:`DatasetSpec` in memory) or the name is not a dataset (refused later, by the
    loader). Commands that write keep their output apart from it
    (:func:`eviltwins.paths.check_apart`)."""
    if not isinstance(name, str | os.PathLike):
        return None
    if is_path_dataset(name):
        return Path(name).expanduser()
    folder = DATA_FOLDERS.get(str(name).strip().lower().replace("_", "-"))
    return None if folder is None else resolve_data_root(data_root) / folder


def load_path_dataset(path: str | os.PathLike[str], **options: Any) -> DatasetSpec:
    """The ``.npz`` file or image tree at ``path`` (see :func:`npz_dataset`,
    :func:`image_tree_dataset`), with ``options``."""
    opts = check_dataset_options(options)
    p = Path(path).expanduser()
    if p.is_dir():
        return image_tree_dataset(p, **opts)
    if p.is_file():
        return npz_dataset(p, **opts)
    if p.exists():
        raise DataError(
            f"dataset {p} is not a regular file or folder; pass a .npz file or a folder"
        )
    registered = ", ".join(DATASETS.names())
    raise DataError(
        f"dataset {os.fspath(path)} does not exist; pass a registered name ({registered}), "
        "a .npz file or an image folder"
    )


def _check_registered_options(name: str, factory: Any, options: dict[str, Any]) -> None:
    """Refuse ``options`` that the registered dataset ``name`` (its ``factory``) does not take."""
    takes = inspect.signature(factory).parameters
    refused = [k for k in options if k not in takes]
    if refused:
        raise ParamError(
            f"dataset {name!r} takes no option {refused[0]!r}; --image-size, --channels and "
            "--normalize apply to .npz files and image folders"
            + (" (it takes image_size)" if "image_size" in takes else "")
        )


def dataset_slug(name: str, options: dict[str, Any] | None = None) -> str:
    """A short, filename-safe name of a dataset: a registered name as it is; a path as its
    stem and a digest of its absolute path and ``options`` (``mydata-1a2b3c4d``)."""
    if not is_path_dataset(name):
        return name
    path = Path(name).expanduser().resolve()
    blob = json.dumps({"path": str(path), "options": options or {}}, sort_keys=True)
    stem = re.sub(r"[^A-Za-z0-9.-]+", "-", path.stem).strip("-.")[:40] or "data"
    return f"{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
