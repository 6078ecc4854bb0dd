"""The dataset registry: ``digits`` (bundled), ``mnist``, ``fashion-mnist``, ``cifar10``,
``gtsrb`` and ``imagefolder``.

Every factory takes ``data_root`` (else ``$EVILTWINS_DATA``, else a per-user cache folder) and
``download`` (torchvision's real download code, only when asked) and returns a
:class:`~eviltwins.data.base.DatasetSpec` of images in [0, 1].
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from eviltwins.data.base import (
    DatasetSpec,
    TensorImageDataset,
    missing_dataset,
    read_image,
    resolve_data_root,
)
from eviltwins.errors import DataError, ParamError
from eviltwins.paths import unreadable
from eviltwins.registry import Registry
from eviltwins.utils import one_line

DATASETS: Registry[DatasetSpec] = Registry("dataset")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision classes used by the loaders; module attributes so that tests can swap in a subclass
# (e.g. one that skips CIFAR-10's md5 check for small files written by the tests). None: the
# torchvision class, imported when first needed (torchvision adds about 160 MB to a process
# that only reads MNIST; see ``tv_datasets``).
CIFAR10_CLASS: Any = None
GTSRB_CLASS: Any = None

# MNIST-like datasets: torchvision's folder name and class names (its ``classes`` attribute),
# so reading the files already there needs no torchvision import.
MNIST_LIKE = {
    "mnist": (
        "MNIST",
        ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four")
        + ("5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"),
    ),
    "fashion-mnist": (
        "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
        + ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


def tv_datasets() -> Any:
    """``torchvision.datasets``, imported on first use (downloads, CIFAR-10, GTSRB, folders)."""
    import torchvision.datasets

    return torchvision.datasets


def _mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    return (
        tuple(round(float(v), 4) for v in x.mean(dim=(0, 2, 3))),
        tuple(round(float(v), 4) for v in x.std(dim=(0, 2, 3))),
    )


@DATASETS.register("digits")
def digits(
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSpec:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), upsampled
    bilinearly to ``image_size`` so that trigger sizes 0.1-0.4 cover whole pixels.

    Split: stratified ``test_fraction`` with a fixed ``seed`` (1,437 train / 360 test by default).
    ``data_root`` and ``download`` are accepted for a uniform signature and ignored.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 8 <= image_size <= 256:
        raise ParamError(f"digits image_size must be in [8, 256]; got {image_size}")
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    train = TensorImageDataset(x[np.sort(idx_train)], y[np.sort(idx_train)])
    test = TensorImageDataset(x[np.sort(idx_test)], y[np.sort(idx_test)])
    mean, std = _mean_std(train.images)
    return DatasetSpec(
        name="digits",
        shape=(1, image_size, image_size),
        classes=tuple(str(i) for i in range(10)),
        mean=mean,
        std=std,
        train=train,
        test=test,
        augment=(),
        default_epochs=30,
        source="sklearn.datasets.load_digits",
    )


def _torchvision_split(cls: Any, name: str, root: Path, download: bool, **kwargs: Any) -> Any:
    try:
        return cls(root=str(root), download=download, **kwargs)
    except RuntimeError as err:
        if "not found" in str(err).lower() or "download" in str(err).lower():
            raise missing_dataset(name, root) from None
        raise DataError(f"{name} under {root} could not be read: {err}") from None
    except OSError as err:  # network failure during download, unreadable files
        raise DataError(f"{name} under {root} could not be read or fetched: {err}") from None


# The idx files of MNIST-like datasets (yann.lecun.com/exdb/mnist): a big-endian header
# (magic 0x0000 08 nd, then nd uint32 sizes) and the uint8 payload.
IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}
IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# At most this many items per idx file (MNIST has 60,000): bounds a gzip file's output.
MAX_IDX_ITEMS = 1_000_000
_CHUNK = 1 << 20


def _idx_error(name: str, path: Path, problem: str) -> DataError:
    return DataError(
        f"{name} file {path} {problem}; delete it and fetch the dataset again with --download"
    )


def _read_exactly(f: Any, n: int) -> bytearray:
    """Up to ``n`` bytes from ``f``, read in chunks, so that memory follows what the file really
    holds, not what a header claims (a short result means the file ended)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def read_idx(path: Path, dims: tuple[int, ...], name: str = "mnist") -> Tensor:
    """Read the uint8 idx file ``path`` (or gzip-compressed ``*.gz``) of ``len(dims) + 1``
    dimensions whose trailing sizes must be ``dims`` (e.g. ``(28, 28)`` for images, ``()`` for
    labels); returns a uint8 tensor (N, *dims).

    The header is checked first (magic number, sizes, at most :data:`MAX_IDX_ITEMS` items) and
    the payload size it implies against the file's real size (for ``.gz``: against what
    decompresses, read in chunks and never past the declared size), before anything is sized by
    it. Every problem raises one :class:`DataError` line naming the file.
    """
    nd = len(dims) + 1
    if not path.is_file():
        raise _idx_error(name, path, "is not a regular file")
    gz = path.suffix == ".gz"
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            header = _read_exactly(f, 4 + 4 * nd)
            if len(header) < 4 + 4 * nd:
                raise _idx_error(name, path, f"is truncated ({len(header)} bytes, no idx header)")
            magic, *sizes = struct.unpack(f">{1 + nd}I", header)
            if magic != IDX_MAGIC[nd]:
                raise _idx_error(
                    name,
                    path,
                    f"has magic number {magic:#010x}, not {IDX_MAGIC[nd]:#010x} "
                    f"(a {nd}-D uint8 idx file)",
                )
            n, shape = sizes[0], tuple(sizes[1:])
            if shape != dims:
                raise _idx_error(name, path, f"holds items of shape {shape}, not {dims}")
            if not 1 <= n <= MAX_IDX_ITEMS:
                raise _idx_error(
                    name, path, f"declares {n:,} items (expected 1..{MAX_IDX_ITEMS:,})"
                )
            payload = n * int(np.prod(dims, dtype=np.int64))
            if not gz:
                real = path.stat().st_size - len(header)
                if real != payload:
                    raise _idx_error(
                        name,
                        path,
                        f"holds {real:,} data bytes but its header declares {payload:,} "
                        f"({n:,} items of shape {dims})",
                    )
            data = _read_exactly(f, payload + 1)  # one byte more reveals trailing data
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, OSError) and err.errno is not None:  # not the file's content
            raise DataError(f"{name} file {path} {unreadable(err)}") from None
        raise _idx_error(name, path, f"cannot be read ({one_line(err)})") from None
    if len(data) != payload:
        problem = "is truncated" if len(data) < payload else "holds more data than declared"
        raise _idx_error(name, path, f"{problem} (header: {n:,} items of shape {dims})")
    return torch.frombuffer(data, dtype=torch.uint8).reshape(n, *dims)


def _idx_path(raw: Path, stem: str) -> Path | None:
    """``raw/stem`` (torchvision's extracted file), else ``raw/stem.gz``, else None."""
    for cand in (raw / stem, raw / f"{stem}.gz"):
        if cand.exists() or cand.is_symlink():
            return cand
    return None


def _download_mnist_like(cls: Any, name: str, root: Path) -> None:
    """torchvision's download of ``cls`` into ``root`` (skipped when the files are there),
    without its reader: the files are then parsed by :func:`read_idx`."""
    fetcher = cls.__new__(cls)  # download() only needs root; __init__ would parse the files
    fetcher.root = os.fspath(root)
    try:
        fetcher.download()
    except (RuntimeError, OSError) as err:
        raise DataError(
            f"{name} could not be downloaded into {root} ({one_line(err)}); check the network, "
            "or put the files there by hand"
        ) from None


def _mnist_split(name: str, root: Path, train: bool) -> TensorImageDataset:
    folder, classes = MNIST_LIKE[name]
    raw = root / folder / "raw"
    (images_stem, labels_stem) = IDX_FILES[train]
    paths = [_idx_path(raw, stem) for stem in (images_stem, labels_stem)]
    if paths[0] is None or paths[1] is None:
        raise missing_dataset(name, root)
    images = read_idx(paths[0], (28, 28), name)
    labels = read_idx(paths[1], (), name)
    if len(images) != len(labels):
        raise _idx_error(name, paths[1], f"holds {len(labels):,} labels for {len(images):,} images")
    n_classes = len(classes)
    if int(labels.max()) >= n_classes:
        raise _idx_error(
            name, paths[1], f"holds label {int(labels.max())}, not a class in 0..{n_classes - 1}"
        )
    return TensorImageDataset(images[:, None], labels.long(), n_classes)


def _mnist_like(
    name: str,
    data_root: Any,
    download: bool,
    mean: float,
    std: float,
    default_epochs: int,
) -> DatasetSpec:
    """MNIST or Fashion-MNIST from torchvision's layout ``<root>/<cls name>/raw/*-ubyte``
    (or ``*-ubyte.gz``), read by :func:`read_idx`; torchvision's class (``MNIST_LIKE``) only
    downloads."""
    root = resolve_data_root(data_root)
    folder, classes = MNIST_LIKE[name]
    if download:
        _download_mnist_like(getattr(tv_datasets(), folder), name, root)
    return DatasetSpec(
        name=name,
        shape=(1, 28, 28),
        classes=classes,
        mean=(mean,),
        std=(std,),
        train=_mnist_split(name, root, True),
        test=_mnist_split(name, root, False),
        augment=(),
        default_epochs=default_epochs,
        source=str(root),
    )


@DATASETS.register("mnist")
def mnist(data_root: str | os.PathLike[str] | None = None, download: bool = False) -> DatasetSpec:
    """MNIST (60k/10k, 28x28 grey) via ``torchvision.datasets.MNIST`` under ``data_root``."""
    return _mnist_like("mnist", data_root, download, 0.1307, 0.3081, 2)


@DATASETS.register("fashion-mnist")
def fashion_mnist(
    data_root: str | os.PathLike[str] | None = None, download: bool = False
) -> DatasetSpec:
    """Fashion-MNIST (60k/10k, 28x28 grey) via ``torchvision.datasets.FashionMNIST``."""
    return _mnist_like("fashion-mnist", data_root, download, 0.2860, 0.3530, 2)


@DATASETS.register("cifar10")
def cifar10(data_root: str | os.PathLike[str] | None = None, download: bool = False) -> DatasetSpec:
    """CIFAR-10 (50k/10k, 32x32 colour) via ``torchvision.datasets.CIFAR10``, held in memory;
    training augmentation: random crop (pad 4) and horizontal flip."""
    root = resolve_data_root(data_root)
    cls = CIFAR10_CLASS or tv_datasets().CIFAR10
    tr = _torchvision_split(cls, "cifar10", root, download, train=True)
    te = _torchvision_split(cls, "cifar10", root, download, train=False)

    def tensors(ds: Any) -> TensorImageDataset:
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return TensorImageDataset(images, torch.as_tensor(ds.targets))

    return DatasetSpec(
        name="cifar10",
        shape=(3, 32, 32),
        classes=tuple(tr.classes),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        train=tensors(tr),
        test=tensors(te),
        augment=("crop", "flip"),
        default_epochs=30,
        source=str(root),
    )


def _load_resized(paths: list[str], size: int) -> torch.Tensor:
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        im = read_image(p, "RGB", what="gtsrb image").resize((size, size), Image.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


@DATASETS.register("gtsrb")
def gtsrb(
    data_root: str | os.PathLike[str] | None = None, download: bool = False, image_size: int = 32
) -> DatasetSpec:
    """GTSRB (43 traffic-sign classes) via ``torchvision.datasets.GTSRB``, resized to
    ``image_size`` (32x32 as in the paper) and held in memory; augmentation: random crop only
    (no flips: a flipped sign can change its meaning)."""
    root = resolve_data_root(data_root)
    splits = {}
    for split in ("train", "test"):
        ds = _torchvision_split(
            GTSRB_CLASS or tv_datasets().GTSRB, "gtsrb", root, download, split=split
        )
        samples = ds._samples
        if not samples:
            raise DataError(f"gtsrb {split} split under {root / 'gtsrb'} holds no .ppm images")
        paths = [p for p, _ in samples]
        if split == "train":  # class = folder name (00000..00042), not the sorted folder index
            labels = torch.tensor([int(Path(p).parent.name) for p in paths], dtype=torch.long)
        else:
            labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        splits[split] = TensorImageDataset(_load_resized(paths, image_size), labels)
    mean, std = _mean_std(splits["train"].images)
    return DatasetSpec(
        name="gtsrb",
        shape=(3, image_size, image_size),
        classes=tuple(str(i) for i in range(43)),
        mean=mean,
        std=std,
        train=splits["train"],
        test=splits["test"],
        augment=("crop",),
        default_epochs=20,
        source=str(root),
    )


def _imagefolder_loader(path: str) -> Image.Image:
    """ImageFolder's loader: :func:`~eviltwins.data.base.read_image` (size checked before
    decoding; a corrupt file raises one :class:`DataError` line naming it)."""
    return read_image(path, "RGB", what="image")


@DATASETS.register("imagefolder")
def imagefolder(
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int = 224,
    train_dir: str = "train",
    test_dir: str | None = None,
) -> DatasetSpec:
    """A class-per-folder tree (ImageNet subset, ISIC 2018, ...) streamed from disk.

    ``data_root`` holds ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``); images are
    resized (shorter side) and centre-cropped to ``image_size``. Normalisation: ImageNet
    statistics. Augmentation: random crop and horizontal flip. Nothing is downloaded.
    """
    from torchvision import transforms

    if data_root is None and not os.environ.get("EVILTWINS_DATA"):
        raise DataError(
            "imagefolder needs --data-root pointing at a folder with train/<class>/ and "
            "val/<class>/ sub-folders"
        )
    root = resolve_data_root(data_root)
    test_dir = test_dir or next((d for d in ("val", "test") if (root / d).is_dir()), "val")
    tf = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )
    found = {}
    for which, sub in (("train", train_dir), ("test", test_dir)):
        path = root / sub
        if not path.is_dir():
            raise DataError(
                f"imagefolder: no {which} folder at {path}; --data-root must hold "
                f"{train_dir}/<class>/ and val/<class>/ (or test/<class>/) image folders"
            )
        try:
            found[which] = tv_datasets().ImageFolder(
                str(path), transform=tf, loader=_imagefolder_loader
            )
        except PermissionError as err:
            raise DataError(f"imagefolder: {err.filename or path} {unreadable(err)}") from None
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"imagefolder: {path} holds no readable class folders: {err}") from None
    if found["train"].classes != found["test"].classes:
        raise DataError(
            f"imagefolder: {root / train_dir} and {root / test_dir} have different class folders"
        )
    return DatasetSpec(
        name="imagefolder",
        shape=(3, image_size, image_size),
        classes=tuple(found["train"].classes),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train=found["train"],
        test=found["test"],
        augment=("crop", "flip"),
        default_epochs=20,
        source=str(root),
    )
