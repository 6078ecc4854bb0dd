"""Dataset specs, in-memory image tensors and safe image reading (batch iteration and
augmentation live in :mod:`eviltwins.batches`, re-exported here).

Images are float NCHW tensors in [0, 1] everywhere downstream; normalisation is the model's first
layer (see :mod:`eviltwins.models`). Small datasets are held as uint8 tensors in memory and
batched by tensor indexing; large ones (ImageFolder trees) stream through a ``DataLoader``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Subset

from eviltwins.batches import AUGMENTATIONS, BatchSource, augment_batch, iter_batches  # noqa: F401
from eviltwins.errors import DataError, ParamError
from eviltwins.paths import unreadable, why_unreadable
from eviltwins.utils import one_line


class TensorImageDataset(BatchSource):
    """Images (N, C, H, W) as uint8 (0..255) or float in [0, 1], with int64 labels.

    ``dataset[i]`` gives ``(float image in [0, 1], int label)``; :meth:`batch` gives a whole batch
    by tensor indexing, which is what :func:`iter_batches` uses.
    """

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int | None = None) -> None:
        """Check ``images`` and ``labels`` (raising :class:`DataError`) and hold them.

        ``images``: a non-empty (N, C, H, W) tensor, uint8 or floats in [0, 1] (finite);
        ``labels``: N integer class indices, non-negative and, with ``num_classes``, below it.
        """
        check_arrays(images, labels, num_classes)
        self.images = images
        self.labels = labels.long()

    @classmethod
    def _trusted(cls, images: Tensor, labels: Tensor) -> TensorImageDataset:
        """A dataset of already checked tensors (a subset of a checked one), without a re-check."""
        ds = cls.__new__(cls)
        ds.images = images
        ds.labels = labels
        return ds

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return to_float(self.images[index]), int(self.labels[index])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Float images in [0, 1] and labels at ``index``."""
        return to_float(self.images[index]), self.labels[index]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as floats in [0, 1], and all labels."""
        return to_float(self.images), self.labels

    def subset(self, index: Tensor | Sequence[int]) -> TensorImageDataset:
        """The images and labels at ``index`` (integer positions)."""
        try:
            index = torch.as_tensor(index, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ParamError(f"a subset index must be integer positions; {one_line(err)}") from None
        if index.ndim != 1:
            raise ParamError(f"a subset index must be 1-D; got shape {tuple(index.shape)}")
        n = len(self.labels)
        if len(index) and (int(index.min()) < -n or int(index.max()) >= n):
            raise ParamError(
                f"a subset index must lie in [0, {n}); got {int(index.min())}..{int(index.max())}"
            )
        return TensorImageDataset._trusted(self.images[index], self.labels[index])


def check_arrays(images: Tensor, labels: Tensor, num_classes: int | None = None) -> None:
    """Raise :class:`DataError` unless ``images`` / ``labels`` can make a
    :class:`TensorImageDataset`: a non-empty NCHW tensor, uint8 or finite floats in [0, 1], and
    as many non-negative integer labels (below ``num_classes`` when given)."""
    for what, t in (("images", images), ("labels", labels)):
        if not isinstance(t, Tensor):
            raise DataError(
                f"{what} must be a torch.Tensor; got {type(t).__name__} "
                "(convert a NumPy array with torch.from_numpy)"
            )
    if images.ndim != 4:
        raise DataError(f"images must be NCHW (4-D); got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataError(
            f"images must be uint8 (0..255) or floats in [0, 1]; got dtype {images.dtype}"
        )
    if images.numel() == 0:
        raise DataError(f"images hold no pixels (shape {tuple(images.shape)}); pass some images")
    if images.is_floating_point():
        if not bool(torch.isfinite(images).all()):
            raise DataError("images contain NaN or inf values; pass finite pixels in [0, 1]")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"float images must lie in [0, 1]; got range [{lo:.3g}, {hi:.3g}] (pass "
                "unnormalised images, or uint8 0..255)"
            )
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D; got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise DataError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ParamError(f"num_classes must be a positive int; got {num_classes!r}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "0 or more"
        raise DataError(f"labels must be class indices {bound}; got range [{lo}, {hi}]")


def to_float(images: Tensor) -> Tensor:
    """uint8 -> float in [0, 1]; float tensors pass through unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset with everything a model and an attack need to know about it.

    Attributes: ``name``; ``shape`` (C, H, W); ``classes`` (names); ``mean`` / ``std`` per
    channel (for the model's normalisation layer); ``train`` / ``test`` torch datasets yielding
    ``(image in [0, 1], label)``; ``augment`` (training-time batched augmentation, a subset of
    ``("crop", "flip")``); ``default_epochs`` (what ``train`` uses when epochs are not given);
    ``options``: the loading options that rebuild it (``image_size``, ``channels``,
    ``normalize`` where given; a model card records them as ``dataset_options``).
    """

    name: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Dataset = field(repr=False)
    test: Dataset = field(repr=False)
    augment: tuple[str, ...] = ()
    default_epochs: int = 2
    source: str = ""
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        shape = self.shape
        if (
            not isinstance(shape, tuple | list)
            or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            raise ParamError(f"a dataset shape must be 3 positive ints (C, H, W); got {shape!r}")
        object.__setattr__(self, "shape", tuple(shape))
        if not self.classes:
            raise ParamError(f"dataset {self.name!r} needs at least one class name")
        for what, stats in (("mean", self.mean), ("std", self.std)):
            try:
                values = [float(v) for v in stats]
            except (TypeError, ValueError):
                raise ParamError(f"dataset {what} must be numbers; got {stats!r}") from None
            if len(values) != shape[0] or not all(np.isfinite(values)):
                raise ParamError(
                    f"dataset {what} must be {shape[0]} finite numbers (one per channel); "
                    f"got {stats!r}"
                )
            if what == "std" and min(values) <= 0:
                raise ParamError(f"dataset std must be positive; got {stats!r}")
        unknown = [op for op in self.augment if op not in AUGMENTATIONS]
        if unknown:
            raise ParamError(
                f"unknown augmentation {unknown[0]!r}; known: {', '.join(AUGMENTATIONS)}"
            )
        for which in ("train", "test"):
            ds = getattr(self, which)
            if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
                raise ParamError(
                    f"dataset {which} must be a torch Dataset with a length; "
                    f"got {type(ds).__name__}"
                )
            if isinstance(ds, TensorImageDataset) and tuple(ds.images.shape[1:]) != shape:
                raise DataError(
                    f"dataset {which} images have shape {tuple(ds.images.shape[1:])} but the "
                    f"spec says {shape} (C, H, W)"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(
        self, train: int | None = None, test: int | None = None, seed: int = 0
    ) -> DatasetSpec:
        """A deterministic random subset of ``train`` / ``test`` images (``None`` keeps all)."""
        return replace(
            self,
            train=_take(self.train, train, seed, "train"),
            test=_take(self.test, test, seed + 1, "test"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "n_train": len(self.train),
            "n_test": len(self.test),
            "augment": list(self.augment),
            **({"options": dict(self.options)} if self.options else {}),
        }


def _take(ds: Dataset, n: int | None, seed: int, which: str) -> Dataset:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise ParamError(f"the {which} subset size must be an int or None; got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParamError(f"the subset seed must be an int; got {seed!r}")
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ParamError(f"the {which} subset size must be positive; got {n}")
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(ds), generator=g)[:n].sort().values
    if isinstance(ds, TensorImageDataset):
        return ds.subset(index)
    return Subset(ds, index.tolist())


def load_all(dataset: Dataset, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Materialise (up to ``limit``) images and labels of a dataset as tensors."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ParamError(f"limit must be a non-negative int or None; got {limit!r}")
    if isinstance(dataset, TensorImageDataset):
        if limit is None:
            return dataset.tensors()
        return to_float(dataset.images[:limit]), dataset.labels[:limit]  # only those converted
    xs, ys, seen = [], [], 0
    for x, y in iter_batches(dataset, 256 if limit is None else max(1, min(256, limit))):
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if limit is not None and seen >= limit:
            break
    if not xs:
        raise DataError("the dataset holds no images")
    x, y = torch.cat(xs), torch.cat(ys)
    return (x, y) if limit is None else (x[:limit], y[:limit])


def load_labels(dataset: Dataset) -> Tensor:
    """All labels of ``dataset``: an in-memory :class:`TensorImageDataset` gives them without
    converting any image; any other dataset is read batch by batch and only the labels are
    kept, so the memory is that of one batch, not of the split."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.labels
    ys = [y for _, y in iter_batches(dataset, 256)]
    return torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)


def load_at(dataset: Dataset, index: Tensor) -> tuple[Tensor, Tensor]:
    """The images (floats in [0, 1]) and labels at the positions ``index``: a random subset of a
    held-out split costs the memory of those images in float, not of the whole split."""
    if isinstance(dataset, BatchSource):
        return dataset.batch(index)
    return load_all(Subset(dataset, index.tolist()))


def check_images(x: Tensor, shape: Sequence[int] | None = None, what: str = "images") -> None:
    """Raise :class:`DataError` unless ``x`` is a float NCHW batch in [0, 1] of ``shape`` (C,H,W)."""
    if not isinstance(x, Tensor):
        raise DataError(f"{what} must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 4:
        raise DataError(f"{what} must be a 4-D NCHW batch; got shape {tuple(x.shape)}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(
            f"{what} have shape {tuple(x.shape[1:])} but the model expects {tuple(shape)} (C, H, W); "
            "resize the images or use a model built for this input shape"
        )
    if not x.is_floating_point():
        raise DataError(f"{what} must be floats in [0, 1]; got dtype {x.dtype}")
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{what} contain NaN or inf values; pass finite pixels in [0, 1]")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{what} must be floats in [0, 1]; got range [{lo:.3g}, {hi:.3g}]. Pass "
                "unnormalised images (normalisation is the model's first layer)"
            )


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """``data_root`` if given, else ``$EVILTWINS_DATA``, else a per-user cache folder."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("EVILTWINS_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "eviltwins" / "data"


def missing_dataset(name: str, looked_in: Path) -> DataError:
    """The one-line error for a dataset that is not on disk."""
    return DataError(
        f"{name} not found under {looked_in}; point --data-root (or EVILTWINS_DATA) at the folder "
        f"that holds it, or add --download to fetch it there"
    )


# Images decoded from files: at most this many pixels, checked from the header before decoding
# (ISIC 2018 photographs reach about 30 million; PIL's own bomb limit is about 89 million).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# The only formats PIL may decode for us: plain raster formats, no EPS / PDF (Ghostscript runs
# for those) and no exotic plugins.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def read_image(
    path: str | os.PathLike[str],
    mode: str = "RGB",
    what: str = "image",
    max_side: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Decode the image file ``path`` in PIL ``mode`` (``"L"``, ``"RGB"``), safely.

    The declared size is read from the header first (PIL opens lazily) and must be at most
    ``max_side`` pixels a side and ``max_pixels`` in all, so a decompression bomb is refused
    before anything is decoded. Only :data:`IMAGE_FORMATS` are decoded (never EPS or PDF,
    which would run Ghostscript). A file that cannot be read (missing, a folder, a broken
    symlink, permission denied: :func:`~eviltwins.paths.why_unreadable`), a file in another
    format and a corrupt one (one that fails to decode) each raise one :class:`DataError` line
    naming ``what`` and ``path``.
    """
    path = Path(path)
    reason = why_unreadable(path)
    if reason is not None:
        hint = "; pass an image file (PNG, JPEG, ...)" if "not a file" in reason else ""
        raise DataError(f"{what} {path} {reason}{hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                w, h = im.size
                too_big = w * h > max_pixels or (max_side is not None and max(w, h) > max_side)
                if not too_big and w > 0 and h > 0:
                    return im.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"{what} {path} declares too many pixels to decode safely (limit "
            f"{_limit(max_side, max_pixels)}); pass a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise DataError(
            f"{what} {path} is not an image eviltwins reads; pass a {', '.join(IMAGE_FORMATS)} file"
        ) from None
    except MemoryError:
        raise
    except OSError as err:
        if err.errno is None:  # PIL's own decoding failures are OSErrors without an errno
            raise DataError(
                f"{what} {path} is corrupt or truncated ({one_line(err)}); replace the file"
            ) from None
        raise DataError(f"{what} {path} {unreadable(err)}") from None
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail anywhere in a decoder
        raise DataError(
            f"{what} {path} is corrupt or truncated ({one_line(err)}); replace the file"
        ) from None
    if w <= 0 or h <= 0:
        raise DataError(f"{what} {path} declares an empty image ({w}x{h}); replace the file")
    raise DataError(
        f"{what} {path} declares {w}x{h} pixels, more than the limit "
        f"{_limit(max_side, max_pixels)}; pass a smaller image"
    )


def _limit(max_side: int | None, max_pixels: int) -> str:
    side = f"{max_side} px a side, " if max_side is not None else ""
    return f"{side}{max_pixels:,} pixels"
