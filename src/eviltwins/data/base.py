"""Dataset specs, in-memory image tensors, batched augmentation and batch iteration.

Images are float NCHW tensors in [0, 1] everywhere downstream; normalisation is the model's first
layer (see :mod:`eviltwins.models`). Small datasets are held as uint8 tensors in memory and
batched by tensor indexing; large ones (ImageFolder trees) stream through a ``DataLoader``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from eviltwins.errors import DataError, ParamError

AUGMENTATIONS = ("crop", "flip")


class TensorImageDataset(Dataset):
    """Images (N, C, H, W) as uint8 (0..255) or float in [0, 1], with int64 labels.

    ``dataset[i]`` gives ``(float image in [0, 1], int label)``; :meth:`batch` gives a whole batch
    by tensor indexing, which is what :func:`iter_batches` uses.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.ndim != 4:
            raise DataError(f"images must be NCHW; got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

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
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorImageDataset(self.images[index], self.labels[index])


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
    ``("crop", "flip")``); ``default_epochs`` (what ``train`` uses when epochs are not given).
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
        }


def _take(ds: Dataset, n: int | None, seed: int, which: str) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ParamError(f"the {which} subset size must be positive; got {n}")
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(ds), generator=g)[:n].sort().values
    if isinstance(ds, TensorImageDataset):
        return ds.subset(index)
    return Subset(ds, index.tolist())


def augment_batch(
    x: Tensor, ops: Sequence[str], generator: torch.Generator | None = None
) -> Tensor:
    """Batched augmentation of a float NCHW batch, no Python loop over images.

    ``crop``: pad by H/8 (4 px at 32x32) with zeros and take a random HxW crop per image;
    ``flip``: horizontal flip of a random half of the batch.
    """
    if not ops:
        return x
    unknown = [op for op in ops if op not in AUGMENTATIONS]
    if unknown:
        raise ParamError(f"unknown augmentation {unknown[0]!r}; known: {', '.join(AUGMENTATIONS)}")
    n, _, h, w = x.shape
    dev = x.device
    if "crop" in ops:
        pad = max(1, h // 8)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if "flip" in ops:
        flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def iter_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: Sequence[str] = (),
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches on ``device``.

    In-memory :class:`TensorImageDataset` batches are sliced from tensors (no per-item Python
    work); other datasets stream through a ``DataLoader``. Augmentation is batched.
    """
    if isinstance(dataset, TensorImageDataset):
        n = len(dataset)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            x, y = dataset.batch(order[start : start + batch_size])
            x = augment_batch(x, augment, generator)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
    )
    for x, y in loader:
        x = augment_batch(x.float(), augment, generator)
        yield x.to(device, non_blocking=True), torch.as_tensor(y).long().to(device)


def load_all(dataset: Dataset, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Materialise (up to ``limit``) images and labels of a dataset as tensors."""
    if isinstance(dataset, TensorImageDataset):
        x, y = dataset.tensors()
        return (x, y) if limit is None else (x[:limit], y[:limit])
    xs, ys, seen = [], [], 0
    for x, y in iter_batches(dataset, 256):
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if limit is not None and seen >= limit:
            break
    if not xs:
        raise DataError("the dataset holds no images")
    x, y = torch.cat(xs), torch.cat(ys)
    return (x, y) if limit is None else (x[:limit], y[:limit])


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
