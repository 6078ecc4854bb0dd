"""The user's own data: a ``.npz`` file of arrays or a class-per-folder image tree, named by its
path wherever a registered dataset name is accepted (``--dataset``, the API, sweep specs).

Both are read safely and held in memory: a ``.npz`` member's ``.npy`` header (dtype, shape,
byte size) is checked against :data:`MAX_DATA_BYTES` and against the member's real size before
any array is read, and arrays are read with ``np.load(allow_pickle=False)``; images of a tree
go through :func:`~eviltwins.data.base.read_image` (size-checked before decoding). Every
problem is one :class:`~eviltwins.errors.DataError` line naming the file and the array.

Options (recorded on the spec as ``options``, so a model card can rebuild the same dataset):
``image_size`` (square side to resize to), ``channels`` (1: grey, 3: colour) and
``normalize`` (``auto``: the train split's per-channel mean and std; ``none``; ``imagenet``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format
from torch import Tensor
from torch.nn import functional as F

from eviltwins.base import IMAGE_SIZE, MAX_CLASSES, MAX_IMAGE_SIZE
from eviltwins.data.base import DatasetSpec, TensorImageDataset
from eviltwins.data.datasets import IMAGENET_MEAN, IMAGENET_STD, _mean_std
from eviltwins.errors import DataError, ParamError
from eviltwins.paths import unreadable, why_unreadable
from eviltwins.utils import is_int, one_line

#: The arrays of a dataset ``.npz`` (the Keras convention), and the optional class names.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL = ("classes",)
#: At most this many bytes of arrays in a ``.npz`` file, and of pixels held from an image tree.
MAX_DATA_BYTES = 4 * 2**30
#: The options of a path dataset, and what ``normalize`` may be.
DATASET_OPTIONS = ("image_size", "channels", "normalize")
NORMALIZE = ("auto", "none", "imagenet")
# At most MAX_CLASSES classes (labels up to it minus one) and images resized to at most
# MAX_IMAGE_SIZE a side (eviltwins.base, their one home).
#: ITU-R 601 luma weights (PIL's "L" conversion) for colour -> grey.
_LUMA = (0.299, 0.587, 0.114)


def check_dataset_options(options: Any) -> dict[str, Any]:
    """``options`` (a mapping of :data:`DATASET_OPTIONS`; ``None`` values dropped) checked;
    one :class:`ParamError` line else."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ParamError(
            f"dataset options must be a mapping of {', '.join(DATASET_OPTIONS)}; got {options!r}"[
                :200
            ]
        )
    out = {k.replace("-", "_"): v for k, v in options.items() if v is not None}
    unknown = sorted(set(out) - set(DATASET_OPTIONS))
    if unknown:
        raise ParamError(
            f"unknown dataset option {unknown[0]!r}; known: {', '.join(DATASET_OPTIONS)}"
        )
    size, channels, norm = (out.get(k) for k in DATASET_OPTIONS)
    if size is not None and not IMAGE_SIZE.ok(size):
        raise ParamError(f"image_size must be an integer in [1, {MAX_IMAGE_SIZE}]; got {size!r}")
    if channels is not None and not (is_int(channels) and channels in (1, 3)):
        raise ParamError(f"channels must be 1 (grey) or 3 (colour); got {channels!r}")
    if norm is not None and norm not in NORMALIZE:
        raise ParamError(f"normalize must be one of {', '.join(NORMALIZE)}; got {norm!r}")
    if norm == "imagenet" and channels == 1:
        raise ParamError("normalize 'imagenet' needs 3 channels; pass channels 3 or normalize auto")
    return out


# --- .npz -----------------------------------------------------------------------------------
def _bad(path: Path, key: str, problem: str) -> DataError:
    return DataError(f"dataset {path}: {key} {problem}")


def _npz_headers(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Every member's dtype and shape from its ``.npy`` header, checked (names, dtypes, sizes
    against the member's size and :data:`MAX_DATA_BYTES`) before any array is read."""
    reason = why_unreadable(path)
    if reason is not None:
        raise DataError(f"dataset {path} {reason}")
    try:
        zf = zipfile.ZipFile(path)
    except OSError as err:
        raise DataError(f"dataset {path} {unreadable(err)}") from None
    except (zipfile.BadZipFile, ValueError) as err:
        raise DataError(
            f"dataset {path} is not a .npz archive ({one_line(err)}); write one with "
            "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        ) from None
    headers: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    total = 0
    with zf:
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if key == info.filename or key not in NPZ_KEYS + NPZ_OPTIONAL or key in headers:
                raise _bad(
                    path,
                    repr(info.filename),
                    "is not an array a dataset .npz holds (x_train, y_train, x_test, y_test "
                    "and optionally classes)",
                )
            try:
                with zf.open(info) as f:
                    version = npy_format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = npy_format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = npy_format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"unsupported .npy format version {version}")
                    offset = f.tell()
            except (
                ValueError,
                OSError,
                EOFError,
                RuntimeError,
                NotImplementedError,
                zlib.error,
            ) as err:
                raise _bad(path, key, f"is not a readable .npy array ({one_line(err)})") from None
            _check_dtype(path, key, dtype)
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            total += nbytes
            if nbytes != info.file_size - offset:
                raise _bad(
                    path,
                    key,
                    f"declares {nbytes:,} bytes of data (shape {shape}, {dtype}) but holds "
                    f"{info.file_size - offset:,}; the file is corrupt",
                )
            if total > MAX_DATA_BYTES:
                raise _bad(
                    path, key, f"takes the arrays past the limit of {MAX_DATA_BYTES:,} bytes"
                )
            headers[key] = (dtype, tuple(int(v) for v in shape))
    missing = [k for k in NPZ_KEYS if k not in headers]
    if missing:
        raise _bad(
            path,
            missing[0],
            "is missing; a dataset .npz holds x_train, y_train, x_test, y_test (Keras convention)",
        )
    return headers


def _check_dtype(path: Path, key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise _bad(
            path,
            key,
            "holds Python objects (a ragged array or pickled data); store a numeric array of "
            "equal-sized images",
        )
    kinds = {"x": "uf", "y": "iu", "c": "U"}[key[0]]
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        want = {
            "x": "uint8 (0..255) or floats in [0, 1]",
            "y": "integer class indices",
            "c": "strings (class names)",
        }[key[0]]
        raise _bad(path, key, f"must be {want}; got dtype {dtype}")
    if key[0] == "x" and dtype.kind == "u" and dtype.itemsize != 1:
        raise _bad(path, key, f"must be uint8 (0..255) or floats in [0, 1]; got dtype {dtype}")


def _layout(path: Path, key: str, shape: tuple[int, ...]) -> str:
    """NHW (grey), NHWC (Keras' convention, preferred when ambiguous) or NCHW."""
    if len(shape) == 3:
        layout = "NHW"
    elif len(shape) == 4 and shape[3] in (1, 3):
        layout = "NHWC"
    elif len(shape) == 4 and shape[1] in (1, 3):
        layout = "NCHW"
    else:
        raise _bad(
            path,
            key,
            f"has shape {shape}; images must be NHW (grey), NHWC or NCHW with 1 or 3 channels",
        )
    if min(shape) < 1:
        raise _bad(path, key, f"has shape {shape}: no images")
    return layout


def _chw(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    n = {"NHW": (1, 1, 2), "NHWC": (3, 1, 2), "NCHW": (1, 2, 3)}[layout]
    return (1 if layout == "NHW" else shape[n[0]], shape[n[1]], shape[n[2]])


def npz_dataset(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    normalize: str = "auto",
) -> DatasetSpec:
    """The dataset in the ``.npz`` file ``path``: arrays ``x_train``, ``y_train``, ``x_test``,
    ``y_test`` (the Keras convention) and optionally ``classes`` (their names).

    Images: uint8 (0..255) or floats in [0, 1], NHW (grey), NHWC or NCHW (NHWC when the
    shape allows both); labels: integer class indices, ``(N,)`` or ``(N, 1)``. Floats stay
    floats. ``image_size`` resizes to a square (bilinear), ``channels`` converts grey <->
    colour, ``normalize`` sets the model's normalisation (see the module). The number of
    classes is ``len(classes)``, else the largest label plus one.
    """
    opts = check_dataset_options(
        {"image_size": image_size, "channels": channels, "normalize": normalize}
    )
    path = Path(path).expanduser().resolve()
    heads = _npz_headers(path)
    shapes = {}
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        (_, xs), (_, ys) = heads[xk], heads[yk]
        layout = _layout(path, xk, xs)
        shapes[split] = (_chw(xs, layout), layout)
        if not (len(ys) == 1 or (len(ys) == 2 and ys[1] == 1)):
            raise _bad(path, yk, f"has shape {ys}; labels must be 1-D (N,) or (N, 1)")
        if ys[0] != xs[0]:
            raise _bad(path, yk, f"holds {ys[0]:,} labels for {xs[0]:,} images in {xk}")
    if shapes["train"][0] != shapes["test"][0]:
        raise _bad(
            path,
            "x_test",
            f"images are (C, H, W) {shapes['test'][0]} but x_train images are {shapes['train'][0]}",
        )
    if "classes" in heads and len(heads["classes"][1]) != 1:
        raise _bad(path, "classes", f"has shape {heads['classes'][1]}; pass a 1-D list of names")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in heads}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"dataset {path} cannot be read ({one_line(err)})") from None
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    labels = {s: _labels(path, f"y_{s}", arrays[f"y_{s}"], classes) for s in ("train", "test")}
    n = len(classes) if classes is not None else int(max(int(y.max()) for y in labels.values())) + 1
    if n < 2:
        raise _bad(path, "y_train", "holds one class; a classifier needs at least 2")
    split = {}
    for s in ("train", "test"):
        x = _images(path, f"x_{s}", arrays.pop(f"x_{s}"), shapes[s][1])
        split[s] = TensorImageDataset(_adapt(x, image_size, channels), labels[s], n)
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(n))
    return path_spec(path, split["train"], split["test"], names, opts)


def _labels(path: Path, key: str, y: np.ndarray, classes: list[str] | None) -> Tensor:
    y = y.reshape(-1)
    lo, hi = int(y.min()), int(y.max())
    bound = len(classes) if classes is not None else MAX_CLASSES
    if lo < 0 or hi >= bound:
        what = f"the {bound} names in classes" if classes is not None else f"{MAX_CLASSES:,}"
        raise _bad(
            path, key, f"holds labels in [{lo}, {hi}]; they must be class indices 0.. below {what}"
        )
    return torch.from_numpy(y.astype(np.int64))


def _images(path: Path, key: str, x: np.ndarray, layout: str) -> Tensor:
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise _bad(path, key, "holds NaN or inf values; pass finite pixels in [0, 1]")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise _bad(
                path,
                key,
                f"holds floats in [{lo:.3g}, {hi:.3g}]; scale them to [0, 1] (or store uint8 0..255)",
            )
        x = x.astype(np.float32, copy=False)
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def _adapt(x: Tensor, image_size: int | None, channels: int | None, chunk: int = 1024) -> Tensor:
    """``x`` (NCHW, uint8 or floats) with ``channels`` channels and ``image_size`` sides,
    converted chunk by chunk; the dtype is kept."""
    c, h, w = x.shape[1:]
    if (channels in (None, c)) and (image_size is None or (h, w) == (image_size, image_size)):
        return x
    out = []
    for part in x.split(chunk):
        y = part.float() / 255.0 if x.dtype == torch.uint8 else part.float()
        if channels == 1 and c == 3:
            y = (y * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif channels == 3 and c == 1:
            y = y.expand(-1, 3, -1, -1)
        if image_size is not None:
            size = (image_size, image_size)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)
        y = y.clamp(0.0, 1.0)
        out.append((y * 255).round().to(torch.uint8) if x.dtype == torch.uint8 else y)
    return torch.cat(out)


def path_spec(
    path: Path,
    train: TensorImageDataset,
    test: TensorImageDataset,
    classes: tuple[str, ...],
    options: dict[str, Any],
) -> DatasetSpec:
    """The spec of a path dataset: named by its absolute path, normalised as asked."""
    c = int(train.images.shape[1])
    normalize = options.get("normalize", "auto")
    if normalize == "imagenet" and c != 3:
        raise ParamError(
            f"normalize 'imagenet' needs 3 channels; dataset {path} has {c}: pass channels 3 "
            "(--channels 3) or normalize auto"
        )
    if normalize == "auto":
        mean, std = _mean_std(train.images)
        std = tuple(s if s > 0 else 1.0 for s in std)  # a constant channel is left unscaled
    elif normalize == "none":
        mean, std = (0.0,) * c, (1.0,) * c
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if options.get("normalize") == "auto":
        options = {k: v for k, v in options.items() if k != "normalize"}
    return DatasetSpec(
        name=str(path),
        shape=tuple(int(v) for v in train.images.shape[1:]),  # type: ignore[arg-type]
        classes=classes,
        mean=mean,
        std=std,
        train=train,
        test=test,
        augment=(),
        default_epochs=10,
        source=str(path),
        options=options,
    )
