"""Class-per-folder image trees named by their path (``--dataset my_images/``): ``train/<class>/*``
and ``val/<class>/*`` (or ``test/``), decoded safely by :func:`~eviltwins.data.base.read_image`
and held in memory as uint8 tensors (see :mod:`eviltwins.data.files` for the options)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from eviltwins.data.base import DatasetSpec, TensorImageDataset, read_image
from eviltwins.data.files import MAX_DATA_BYTES, check_dataset_options, path_spec
from eviltwins.errors import DataError
from eviltwins.paths import unreadable
from eviltwins.utils import progress

#: Files of an image tree that are read (others, such as ``.DS_Store``, are ignored).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def _tree_files(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """The class names and each split's (file, label) list of an image tree.

    Every class folder under ``train/`` must hold at least one image (a class the model never
    sees in training cannot be learnt, and its label would silently go unused): one that holds
    none is refused, naming the class. A class with no images under ``val/`` (``test/``) is
    refused the same way: its test accuracy and attack success could not be measured, and an
    empty test class is far more often a copying mistake than a choice. Hidden files
    (``.DS_Store``) and files of other types are ignored. A folder that cannot be listed
    (permission denied) is one line naming it.
    """
    test_dir = next((d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(
            f"image folder {root} needs train/<class>/ and val/<class>/ (or test/<class>/) "
            "sub-folders of images"
        )
    found: dict[str, tuple[str, ...]] = {}
    for split, sub in (("train", "train"), ("test", test_dir)):
        found[split] = tuple(
            sorted(d.name for d in _listed(root / sub) if d.is_dir() and d.name[0] != ".")
        )
    classes = found["train"]
    if len(classes) < 2:
        raise DataError(f"image folder {root / 'train'} needs at least 2 class folders")
    if found["test"] != classes:
        odd = sorted(set(classes) ^ set(found["test"]))
        raise DataError(
            f"image folders {root / 'train'} and {root / test_dir} must hold the same class "
            f"folders; {odd[0]!r} is in only one of them"
        )
    files: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for split, sub in (("train", "train"), ("test", test_dir)):
        for label, cls in enumerate(classes):
            images = [
                f
                for f in sorted(_listed(root / sub / cls))
                if f.suffix.lower() in IMAGE_SUFFIXES and f.name[0] != "."
            ]
            if not images:
                raise DataError(
                    f"image folder {root / sub}: class {cls!r} holds no images "
                    f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)}); remove the class folder "
                    f"from train/ and {test_dir}/ or add images"
                )
            files[split] += [(f, label) for f in images]
    return classes, files


def _listed(folder: Path) -> list[Path]:
    """The entries of ``folder``; one :class:`DataError` line when it cannot be listed."""
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise DataError(f"image folder {folder} {unreadable(err)}") from None


def image_tree_dataset(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    normalize: str = "auto",
) -> DatasetSpec:
    """The class-per-folder image tree ``path``: ``train/<class>/*`` and ``val/<class>/*`` (or
    ``test/<class>/*``), the same class folders in both, held in memory as uint8.

    ``image_size``: the square side images are resized to (shorter side, then centre crop);
    default: the images' own size, which must then be the same for all. ``channels``: 1 (grey)
    or 3 (colour); default: 1 when every image is grey, else 3. The pixels held may be at most
    :data:`MAX_DATA_BYTES` (else one line suggesting ``--image-size``).
    """
    opts = check_dataset_options(
        {"image_size": image_size, "channels": channels, "normalize": normalize}
    )
    root = Path(path).expanduser().resolve()
    classes, files = _tree_files(root)
    first = files["train"][0][0]
    mode = "L" if channels == 1 else "RGB"
    if image_size is None:
        w, h = read_image(first, mode, what="image").size
    else:
        w = h = image_size
    n = sum(len(v) for v in files.values())
    c = channels or 3
    if n * c * h * w > MAX_DATA_BYTES:
        raise DataError(
            f"image folder {root}: {n:,} images of {c}x{h}x{w} need {n * c * h * w / 2**30:.1f} "
            f"GiB in memory, over the limit of {MAX_DATA_BYTES / 2**30:g} GiB; pass --image-size "
            "(e.g. 64) to resize them"
        )
    grey = channels is None
    bar = progress(total=n, desc=f"reading {root.name}", quiet=None if n >= 500 else True)
    split = {}
    for s in ("train", "test"):
        images = torch.empty((len(files[s]), c, h, w), dtype=torch.uint8)
        for i, (f, _) in enumerate(files[s]):
            im = read_image(f, mode, what="image")
            if image_size is not None:
                im = ImageOps.fit(im, (w, h), Image.BILINEAR)
            elif im.size != (w, h):
                raise DataError(
                    f"image {f} is {im.size[0]}x{im.size[1]} but {first} is {w}x{h}; pass "
                    "--image-size N to resize every image to N x N"
                )
            a = np.asarray(im, dtype=np.uint8)
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            grey = grey and bool((a[0] == a[1]).all() and (a[1] == a[2]).all())
            images[i] = torch.from_numpy(np.ascontiguousarray(a))
            bar.update(1)
        split[s] = images
    bar.close()
    if grey:  # every image is grey: keep one channel
        split = {s: x[:, :1].clone() for s, x in split.items()}
    labels = {s: torch.tensor([y for _, y in files[s]], dtype=torch.long) for s in files}
    train, test = (TensorImageDataset(split[s], labels[s], len(classes)) for s in ("train", "test"))
    return path_spec(root, train, test, classes, opts)
