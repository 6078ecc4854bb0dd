"""Batch iteration and batched augmentation of image datasets (float NCHW in [0, 1]): the
generic helpers every layer above uses (metrics, data, training, attacks, detectors).

A :class:`BatchSource` hands out whole batches by tensor indexing (the in-memory
:class:`~eviltwins.data.TensorImageDataset` is one); any other dataset streams through a
``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from eviltwins.errors import DataError, ParamError
from eviltwins.utils import described

AUGMENTATIONS = ("crop", "flip")


class BatchSource(Dataset):
    """A dataset that gives a whole batch by tensor indexing (no per-item Python work)."""

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Float images in [0, 1] and int64 labels at ``index``."""
        raise NotImplementedError


def augment_batch(
    x: Tensor, ops: Sequence[str], generator: torch.Generator | None = None
) -> Tensor:
    """Batched augmentation of a float NCHW batch, no Python loop over images.

    ``crop``: pad by H/8 (4 px at 32x32) with zeros and take a random HxW crop per image;
    ``flip``: horizontal flip of a random half of the batch.
    """
    if isinstance(ops, str):
        ops = (ops,)
    if not ops:
        return x
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise DataError(f"augment_batch needs an NCHW image tensor; got {described(x)}")
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParamError(f"batch_size must be a positive int; got {batch_size!r}")
    if isinstance(dataset, BatchSource):
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
