"""Tests of the dataset layer: the registry's loaders (on real files or small files written in
the real on-disk formats), batched augmentation, batch iteration, subsets and image checks.

Nothing here touches the network: every loader runs with ``download=False``.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import TensorDataset

import eviltwins.data.datasets
from eviltwins.data import (
    DATASETS,
    DatasetSpec,
    TensorImageDataset,
    augment_batch,
    check_images,
    iter_batches,
    load_all,
    load_dataset,
    resolve_data_root,
)
from eviltwins.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from eviltwins.errors import DataError, ParamError

# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------


def test_registry_lists_every_dataset():
    assert set(DATASETS.names()) == {
        "digits",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "gtsrb",
        "imagefolder",
    }


# ----------------------------------------------------------------------------------------------
# digits (bundled with scikit-learn)
# ----------------------------------------------------------------------------------------------


def test_digits_shapes_range_and_classes(digits_spec):
    spec = digits_spec
    assert spec.name == "digits"
    assert spec.shape == (1, 32, 32)
    assert spec.num_classes == 10
    assert spec.classes == tuple(str(i) for i in range(10))
    assert len(spec.train) == 1437
    assert len(spec.test) == 360
    for ds, n in ((spec.train, 1437), (spec.test, 360)):
        x, y = load_all(ds)
        assert x.shape == (n, 1, 32, 32)
        assert x.dtype == torch.float32
        assert float(x.min()) == 0.0
        assert float(x.max()) == 1.0
        assert y.dtype == torch.int64
        assert set(y.tolist()) == set(range(10))
    # per-channel statistics describe the training images
    x, _ = load_all(spec.train)
    assert spec.mean == pytest.approx((float(x.mean()),), abs=1e-3)
    assert spec.std == pytest.approx((float(x.std()),), abs=1e-3)


def test_digits_is_deterministic(digits_spec):
    # different global RNG states before each load: the split must not depend on them
    loads = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        loads.append(load_dataset("digits"))
    for spec in loads:
        for a, b in ((digits_spec.train, spec.train), (digits_spec.test, spec.test)):
            xa, ya = load_all(a)
            xb, yb = load_all(b)
            assert torch.equal(xa, xb)
            assert torch.equal(ya, yb)


def test_digits_split_is_stratified_and_complete(digits_spec):
    from sklearn.datasets import load_digits

    target = torch.from_numpy(load_digits().target.astype(np.int64))
    _, y_train = load_all(digits_spec.train)
    _, y_test = load_all(digits_spec.test)
    # the two splits together hold every image's label exactly once
    assert torch.equal(
        torch.bincount(y_train, minlength=10) + torch.bincount(y_test, minlength=10),
        torch.bincount(target, minlength=10),
    )
    # stratified: every class in test, each with ~20% of its images
    per_class = torch.bincount(target, minlength=10).float()
    in_test = torch.bincount(y_test, minlength=10).float()
    assert bool((in_test > 0).all())
    assert torch.all((in_test - 0.2 * per_class).abs() <= 1.0)


def test_digits_other_image_size_and_bad_size():
    spec = load_dataset("digits", image_size=16)
    x, _ = load_all(spec.test)
    assert spec.shape == (1, 16, 16)
    assert x.shape == (360, 1, 16, 16)
    with pytest.raises(ParamError):
        load_dataset("digits", image_size=4)


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST from the real files
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_spec(data_root):
    return load_dataset("mnist", data_root=data_root)


@pytest.fixture(scope="module")
def fashion_spec(data_root):
    return load_dataset("fashion-mnist", data_root=data_root)


@pytest.mark.parametrize(
    "which, first_train_label, first_test_label",
    [("mnist_spec", 5, 7), ("fashion_spec", 9, 9)],
)
def test_mnist_like_real_files(request, which, first_train_label, first_test_label):
    spec = request.getfixturevalue(which)
    assert spec.shape == (1, 28, 28)
    assert spec.num_classes == 10
    assert len(spec.train) == 60000
    assert len(spec.test) == 10000
    assert spec.train.images.shape == (60000, 1, 28, 28)
    assert spec.train.images.dtype == torch.uint8
    x, y = load_all(spec.test)
    assert x.shape == (10000, 1, 28, 28)
    assert x.dtype == torch.float32
    assert float(x.min()) == 0.0
    assert float(x.max()) == 1.0
    for labels in (spec.train.labels, y):
        assert labels.dtype == torch.int64
        assert int(labels.min()) == 0
        assert int(labels.max()) == 9
        assert set(labels.tolist()) == set(range(10))
    # the well-known first labels of the official files
    assert int(spec.train.labels[0]) == first_train_label
    assert int(y[0]) == first_test_label
    # dataset[i] gives a float image in [0, 1] and an int label
    img, label = spec.train[0]
    assert img.shape == (1, 28, 28)
    assert img.dtype == torch.float32
    assert 0.0 <= float(img.min()) <= float(img.max()) <= 1.0
    assert label == first_train_label


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "gtsrb"])
def test_missing_dataset_error_is_one_actionable_line(tmp_path, name):
    empty = tmp_path / "nothing here"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset(name, data_root=empty)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(empty) in msg
    assert "--data-root" in msg
    assert "--download" in msg


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("EVILTWINS_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("EVILTWINS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root(None) == tmp_path / "cache" / "eviltwins" / "data"


# ----------------------------------------------------------------------------------------------
# CIFAR-10 from small files in the real on-disk format
# ----------------------------------------------------------------------------------------------

CIFAR_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


class SmallCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 with the md5 checks bypassed: the test writes its own small files
    (in the real format) whose checksums cannot match the official ones. Everything else,
    including reading the batches and the meta file, is torchvision's own code."""

    def _check_integrity(self) -> bool:
        return True  # bypass the md5 check: the test writes its own small files

    def _load_meta(self) -> None:
        # torchvision's _load_meta also md5-checks batches.meta via the module-level function
        with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True):
            super()._load_meta()


def _write_cifar(root: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0):
    """cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} as pickled dicts.

    The official files are Python 2 pickles that torchvision loads with ``encoding="latin1"``,
    which gives ``str`` keys; these Python 3 pickles have the same keys and value types.
    Returns the train and test (data, labels) as written.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_data, train_labels = [], []
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        entry = {
            "batch_label": f"training batch {b} of 5",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
        }
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(entry, protocol=2))
        train_data.append(data)
        train_labels.extend(labels)
    test_data = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, size=n_test)]
    entry = {
        "batch_label": "testing batch 1 of 1",
        "labels": test_labels,
        "data": test_data,
        "filenames": [f"test_{i}.png" for i in range(n_test)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return (np.concatenate(train_data), train_labels), (test_data, test_labels)


def test_cifar10_small_files_in_real_format(tmp_path, monkeypatch):
    monkeypatch.setattr(eviltwins.data.datasets, "CIFAR10_CLASS", SmallCIFAR10)
    (train_data, train_labels), (test_data, test_labels) = _write_cifar(tmp_path)
    # a known pixel of the first training image: channel 1 (green), row 5, column 7
    train_data[0, 1 * 1024 + 5 * 32 + 7] = 200
    batch1 = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    batch1["data"][0, 1 * 1024 + 5 * 32 + 7] = 200
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch1, 2))

    spec = load_dataset("cifar10", data_root=tmp_path)
    assert spec.shape == (3, 32, 32)
    assert spec.classes == tuple(CIFAR_NAMES)
    assert spec.augment == ("crop", "flip")
    assert len(spec.train) == 15
    assert len(spec.test) == 4
    x, y = load_all(spec.train)
    assert x.shape == (15, 3, 32, 32)
    assert x.dtype == torch.float32
    assert float(x[0, 1, 5, 7]) == pytest.approx(200 / 255, abs=1e-7)
    assert y.tolist() == train_labels
    # every pixel round-trips: CIFAR rows are 1024 R, then 1024 G, then 1024 B, row-major
    expected = torch.from_numpy(train_data.reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(x, expected)
    xt, yt = load_all(spec.test)
    assert torch.equal(xt, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)).float() / 255)
    assert yt.tolist() == test_labels


def test_cifar10_real_class_checks_md5(tmp_path):
    """Without the subclass, small files fail torchvision's md5 check: a one-line DataError."""
    _write_cifar(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_root=tmp_path)
    assert "\n" not in str(info.value)
    assert str(tmp_path) in str(info.value)


# ----------------------------------------------------------------------------------------------
# GTSRB from small files in the real on-disk layout
# ----------------------------------------------------------------------------------------------


GTSRB_CSV_HEADER = [
    "Filename",
    "Width",
    "Height",
    "Roi.X1",
    "Roi.Y1",
    "Roi.X2",
    "Roi.Y2",
    "ClassId",
]


def _colour(label: int, k: int = 0) -> tuple[int, int, int]:
    """A distinct solid colour per (class, image)."""
    return (5 * label + 10, 250 - 5 * label, 40 * k + 7)


def _write_gtsrb(root: Path):
    """root/gtsrb/GTSRB/Training/<5-digit class>/*.ppm (one folder per class, as torchvision's
    make_dataset maps sorted folder names to labels) and root/gtsrb/GTSRB/Final_Test/Images/
    *.ppm with root/gtsrb/GT-final_test.csv. Returns the (label, colour) lists written."""
    base = root / "gtsrb"
    train = []
    for label in range(43):
        folder = base / "GTSRB" / "Training" / f"{label:05d}"
        folder.mkdir(parents=True)
        n = 2 if label in (0, 7, 42) else 1
        for k in range(n):
            size = (40 + label % 5, 35 + 3 * k)  # varied, non-square (W, H)
            Image.new("RGB", size, _colour(label, k)).save(folder / f"{k:05d}_00000.ppm")
            train.append((label, _colour(label, k)))
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    test = []
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(GTSRB_CSV_HEADER)
        for i, label in enumerate([3, 42, 0, 17, 3]):
            size = (31 + 4 * i, 50 - 3 * i)
            colour = _colour(label, 3)
            name = f"{i:05d}.ppm"
            Image.new("RGB", size, colour).save(test_dir / name)
            w.writerow([name, size[0], size[1], 5, 5, size[0] - 5, size[1] - 5, label])
            test.append((label, colour))
    return train, test


def test_gtsrb_small_files_in_real_layout(tmp_path):
    train, test = _write_gtsrb(tmp_path)
    spec = load_dataset("gtsrb", data_root=tmp_path)
    assert spec.shape == (3, 32, 32)
    assert spec.num_classes == 43
    assert spec.augment == ("crop",)
    assert "flip" not in spec.augment
    assert len(spec.train) == len(train) == 46
    assert len(spec.test) == len(test) == 5
    for ds, written in ((spec.train, train), (spec.test, test)):
        x, y = load_all(ds)
        assert x.shape == (len(written), 3, 32, 32)
        assert sorted(y.tolist()) == sorted(label for label, _ in written)
        # each image is its label's solid colour, unchanged by resizing
        for img, label in zip(x, y.tolist(), strict=True):
            colours = {c for lab, c in written if lab == label}
            got = tuple(int(v) for v in (img * 255).round().flatten(1).unique(dim=1).flatten())
            assert got in colours
    # test labels come from the CSV, in its order
    _, yt = load_all(spec.test)
    assert yt.tolist() == [label for label, _ in test]


def test_gtsrb_swappable_class(tmp_path, monkeypatch):
    """GTSRB_CLASS is the class the loader uses (tests may swap it)."""
    _write_gtsrb(tmp_path)
    calls = []

    class Counting(torchvision.datasets.GTSRB):
        def __init__(self, *args, **kwargs):
            calls.append(kwargs["split"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(eviltwins.data.datasets, "GTSRB_CLASS", Counting)
    spec = load_dataset("gtsrb", data_root=tmp_path, image_size=24)
    assert sorted(calls) == ["test", "train"]
    assert load_all(spec.test)[0].shape == (5, 3, 24, 24)


# ----------------------------------------------------------------------------------------------
# imagefolder
# ----------------------------------------------------------------------------------------------

FOLDER_COLOURS = {"cat": (200, 30, 60), "dog": (20, 150, 240)}


def _write_imagefolder(root: Path, splits=("train", "val")) -> None:
    for split in splits:
        for cls, colour in FOLDER_COLOURS.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            n = 3 if split == "train" else 2
            for k in range(n):
                w, h = (60 + 10 * k, 40 + 5 * k) if cls == "cat" else (40, 70 + 3 * k)
                im = Image.new("RGB", (w, h), colour)
                # black 5 px bands at both ends of the long side, outside the central square
                # that a resize of the shorter side plus a centre crop keeps
                black = Image.new("RGB", (5, h) if w > h else (w, 5))
                im.paste(black, (0, 0))
                im.paste(black, (w - 5, 0) if w > h else (0, h - 5))
                im.save(folder / f"{k}.png")


def test_imagefolder_tree(tmp_path):
    _write_imagefolder(tmp_path)
    spec = load_dataset("imagefolder", data_root=tmp_path, image_size=48)
    assert spec.shape == (3, 48, 48)
    assert spec.classes == ("cat", "dog")
    assert spec.mean == IMAGENET_MEAN
    assert spec.std == IMAGENET_STD
    assert len(spec.train) == 6
    assert len(spec.test) == 4
    x, y = load_all(spec.train)
    assert x.shape == (6, 3, 48, 48)
    assert x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    xt, yt = load_all(spec.test)
    assert xt.shape == (4, 3, 48, 48)
    assert yt.tolist() == [0, 0, 1, 1]
    # resized on the shorter side and centre-cropped: the black end bands are cut off, and
    # what is left is the class's solid colour
    for img, label in zip(torch.cat([x, xt]), torch.cat([y, yt]).tolist(), strict=True):
        colour = torch.tensor(FOLDER_COLOURS[spec.classes[label]], dtype=torch.float32) / 255
        assert torch.allclose(img, colour[:, None, None].expand_as(img), atol=1 / 255)
    # streaming batches through a DataLoader, with batched augmentation (the crop pads with
    # zeros, which the loaded images do not contain), keeps the shape
    g = torch.Generator().manual_seed(0)
    batches = list(iter_batches(spec.train, 4, shuffle=True, generator=g, augment=spec.augment))
    assert [len(b[1]) for b in batches] == [4, 2]
    assert all(b[0].shape[1:] == (3, 48, 48) for b in batches)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert float(x.min()) > 0.0
    assert any(bool((b[0] == 0).any()) for b in batches)
    plain = list(iter_batches(spec.train, 6))
    assert torch.equal(plain[0][0], x)


def test_imagefolder_uses_test_when_no_val(tmp_path):
    _write_imagefolder(tmp_path, splits=("train", "test"))
    spec = load_dataset("imagefolder", data_root=tmp_path, image_size=32)
    assert len(spec.test) == 4


def test_imagefolder_missing_val_names_the_path(tmp_path):
    _write_imagefolder(tmp_path, splits=("train",))
    with pytest.raises(DataError) as info:
        load_dataset("imagefolder", data_root=tmp_path, image_size=48)
    assert str(tmp_path / "val") in str(info.value)


def test_imagefolder_needs_a_data_root(monkeypatch):
    monkeypatch.delenv("EVILTWINS_DATA", raising=False)
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("imagefolder")


def test_imagefolder_different_classes(tmp_path):
    _write_imagefolder(tmp_path)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "fox")
    with pytest.raises(DataError, match="different class folders"):
        load_dataset("imagefolder", data_root=tmp_path, image_size=32)


# ----------------------------------------------------------------------------------------------
# augment_batch
# ----------------------------------------------------------------------------------------------


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` moved by (dy, dx) pixels with zeros filled in."""
    _, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = img[
        :, max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def test_crop_is_a_random_shift_of_at_most_h_over_8():
    x = torch.rand(64, 3, 32, 32) * 0.9 + 0.1  # no zeros in the input
    out = augment_batch(x, ("crop",), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    pad = 32 // 8
    shifts = set()
    for img, src in zip(out, x, strict=True):
        found = [
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(img, _shift(src, dy, dx))
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10  # offsets are drawn per image


def test_crop_of_ones_has_zeros_only_in_borders():
    h = w = 32
    pad = h // 8
    x = torch.ones(32, 1, h, w)
    out = augment_batch(x, ("crop",), torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    saw_zeros = False
    for img in out[:, 0]:
        # the ones form one rectangle; the zero bands are at most pad wide, at the top or the
        # bottom and at the left or the right, never in the middle
        ones_rows = torch.nonzero(img.bool().any(dim=1)).flatten()
        ones_cols = torch.nonzero(img.bool().any(dim=0)).flatten()
        r0, r1 = int(ones_rows[0]), int(ones_rows[-1]) + 1
        c0, c1 = int(ones_cols[0]), int(ones_cols[-1]) + 1
        assert r0 == 0 or r1 == h
        assert c0 == 0 or c1 == w
        assert h - (r1 - r0) <= pad
        assert w - (c1 - c0) <= pad
        expected = torch.zeros(h, w)
        expected[r0:r1, c0:c1] = 1
        assert torch.equal(img, expected)
        saw_zeros |= bool((img == 0).any())
    assert saw_zeros


def test_crop_is_deterministic_with_a_generator():
    x = torch.rand(16, 3, 32, 32)
    a = augment_batch(x, ("crop", "flip"), torch.Generator().manual_seed(5))
    b = augment_batch(x, ("crop", "flip"), torch.Generator().manual_seed(5))
    c = augment_batch(x, ("crop", "flip"), torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flip_flips_exactly_the_chosen_images():
    x = torch.rand(64, 3, 8, 8)
    out = augment_batch(x, ("flip",), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    flipped = []
    for img, src in zip(out, x, strict=True):
        same, mirrored = torch.equal(img, src), torch.equal(img, src.flip(-1))
        assert same != mirrored  # exactly one of the two (random images are not symmetric)
        flipped.append(mirrored)
    assert 0 < sum(flipped) < len(flipped)
    again = augment_batch(x, ("flip",), torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_no_ops_is_identity():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(augment_batch(x, ()), x)
    assert torch.equal(augment_batch(x, []), x)


# ----------------------------------------------------------------------------------------------
# iter_batches and subsets
# ----------------------------------------------------------------------------------------------


def _arange_dataset(n: int) -> TensorImageDataset:
    """Image i is filled with the value i (uint8), label i."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 4, 4).clone()
    return TensorImageDataset(images, torch.arange(n))


def _check_pairs(x: torch.Tensor, y: torch.Tensor) -> None:
    assert torch.equal((x * 255).round().long()[:, 0, 0, 0], y)


def test_iter_batches_shuffled_covers_every_index_once():
    ds = _arange_dataset(23)
    batches = list(iter_batches(ds, 5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels.sort().values, torch.arange(23))
    assert not torch.equal(labels, torch.arange(23))  # actually shuffled
    for x, y in batches:
        assert x.dtype == torch.float32
        assert x.shape[1:] == (1, 4, 4)
        _check_pairs(x, y)


def test_iter_batches_in_order_without_shuffle():
    labels = torch.cat([y for _, y in iter_batches(_arange_dataset(10), 4)])
    assert torch.equal(labels, torch.arange(10))


@pytest.mark.parametrize("wrap", [False, True])
def test_iter_batches_drop_last(wrap):
    ds = _arange_dataset(23)
    if wrap:  # a plain torch dataset streams through a DataLoader
        ds = TensorDataset(ds.images.float() / 255, ds.labels)
    kept = list(iter_batches(ds, 5, shuffle=True, drop_last=True))
    assert [len(y) for _, y in kept] == [5, 5, 5, 5]
    labels = torch.cat([y for _, y in kept])
    assert len(set(labels.tolist())) == 20
    for x, y in kept:
        _check_pairs(x, y)
    full = list(iter_batches(ds, 5, shuffle=True, drop_last=False))
    assert torch.equal(torch.cat([y for _, y in full]).sort().values, torch.arange(23))


def _spec(n_train: int, n_test: int) -> DatasetSpec:
    return DatasetSpec(
        name="toy",
        shape=(1, 4, 4),
        classes=("a",),
        mean=(0.5,),
        std=(0.5,),
        train=_arange_dataset(n_train),
        test=_arange_dataset(n_test),
    )


def test_subset_sizes_and_determinism():
    spec = _spec(50, 30)
    # different global RNG states: the subset must depend on the seed only
    torch.manual_seed(1)
    a = spec.subset(train=20, test=7, seed=3)
    torch.manual_seed(2)
    b = spec.subset(train=20, test=7, seed=3)
    c = spec.subset(train=20, test=7, seed=4)
    assert len(a.train) == 20
    assert len(a.test) == 7
    assert torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.labels, c.train.labels)
    for ds, n in ((a.train, 50), (a.test, 30)):
        labels = ds.labels.tolist()
        assert len(set(labels)) == len(labels)  # no repeats
        assert all(0 <= v < n for v in labels)
        _check_pairs(*ds.tensors())  # images stay with their labels
    assert a.to_dict()["n_train"] == 20
    assert a.to_dict()["n_test"] == 7
    # None or a size >= len keeps everything; the original spec is not changed
    full = spec.subset(train=None, test=1000)
    assert len(full.train) == 50
    assert len(full.test) == 30
    assert len(spec.train) == 50
    with pytest.raises(ParamError):
        spec.subset(train=0)


def test_subset_of_a_streamed_dataset():
    spec = DatasetSpec(
        name="toy",
        shape=(1, 2, 2),
        classes=("a",),
        mean=(0.5,),
        std=(0.5,),
        train=TensorDataset(torch.rand(40, 1, 2, 2), torch.arange(40)),
        test=TensorDataset(torch.rand(10, 1, 2, 2), torch.arange(10)),
    )
    a = spec.subset(train=12, test=3, seed=1)
    b = spec.subset(train=12, test=3, seed=1)
    assert len(a.train) == 12
    assert len(a.test) == 3
    assert torch.equal(load_all(a.train)[1], load_all(b.train)[1])


def test_digits_subset(digits_spec):
    a = digits_spec.subset(train=100, test=50, seed=0)
    b = digits_spec.subset(train=100, test=50, seed=0)
    assert (len(a.train), len(a.test)) == (100, 50)
    assert torch.equal(load_all(a.train)[0], load_all(b.train)[0])
    assert torch.equal(load_all(a.test)[1], load_all(b.test)[1])


def test_load_all_limit():
    ds = _arange_dataset(10)
    x, y = load_all(ds, limit=4)
    assert x.shape == (4, 1, 4, 4)
    assert torch.equal(y, torch.arange(4))
    streamed = TensorDataset(torch.rand(300, 1, 2, 2), torch.arange(300))
    x, y = load_all(streamed, limit=260)
    assert torch.equal(y, torch.arange(260))


def test_tensor_dataset_validates():
    with pytest.raises(DataError):
        TensorImageDataset(torch.zeros(3, 4, 4), torch.zeros(3))
    with pytest.raises(DataError):
        TensorImageDataset(torch.zeros(3, 1, 4, 4), torch.zeros(2))


# ----------------------------------------------------------------------------------------------
# check_images
# ----------------------------------------------------------------------------------------------


def test_check_images_accepts_a_valid_batch():
    check_images(torch.rand(2, 3, 8, 8), shape=(3, 8, 8))
    check_images(torch.zeros(0, 1, 4, 4))


def test_check_images_rejects_3d():
    with pytest.raises(DataError, match="4-D"):
        check_images(torch.rand(3, 8, 8))


@pytest.mark.parametrize("bad", [1.5, -0.1, 255.0])
def test_check_images_rejects_out_of_range(bad):
    x = torch.rand(2, 3, 8, 8)
    x[1, 2, 3, 4] = bad
    with pytest.raises(DataError) as info:
        check_images(x)
    assert "normalisation" in str(info.value)


def test_check_images_rejects_wrong_shape():
    with pytest.raises(DataError, match=r"\(3, 32, 32\)"):
        check_images(torch.rand(2, 1, 28, 28), shape=(3, 32, 32))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_check_images_rejects_integer_dtype(dtype):
    with pytest.raises(DataError, match="float"):
        check_images(torch.zeros(2, 3, 8, 8, dtype=dtype), shape=(3, 8, 8))


def test_check_images_rejects_non_tensor():
    with pytest.raises(DataError):
        check_images(np.zeros((2, 3, 8, 8), dtype=np.float32))
