"""Hostile and malformed inputs to the data and trigger loaders (issue 12).

Every bad idx file, trigger file, pattern image or array must raise one
:class:`~eviltwins.errors.EviltwinsError` line (never another exception, never a traceback),
and nothing a file's header declares may size an allocation before it is checked against the
file. The property-based tests at the end feed random mutations to every public loader.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import struct
import tempfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eviltwins.data import (
    DatasetSpec,
    TensorImageDataset,
    iter_batches,
    load_all,
    load_dataset,
)
from eviltwins.errors import DataError, EviltwinsError, ParamError
from eviltwins.triggers import Trigger

FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
N_TRAIN, N_TEST = 12, 6
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def _peak_mib(fn: Callable[[], object]) -> float:
    """Peak Python-allocated MiB while ``fn`` runs (it is expected to raise)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(EviltwinsError):
            fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST idx files
# ----------------------------------------------------------------------------------------------


def idx_images(n: int, rows: int = 28, cols: int = 28, magic: int = 0x803, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=n * rows * cols, dtype=np.uint8).tobytes()
    return struct.pack(">IIII", magic, n, rows, cols) + pixels


def idx_labels(n: int, magic: int = 0x801, high: int = 10) -> bytes:
    return struct.pack(">II", magic, n) + bytes(i % high for i in range(n))


def valid_files() -> dict[str, bytes]:
    return {
        "train_images": idx_images(N_TRAIN),
        "train_labels": idx_labels(N_TRAIN),
        "test_images": idx_images(N_TEST, seed=1),
        "test_labels": idx_labels(N_TEST),
    }


def write_tree(root: Path, dataset: str, files: dict[str, bytes], gz: frozenset = frozenset()):
    """A data root in torchvision's layout: <root>/<Folder>/raw/<stem>[.gz]."""
    raw = root / FOLDERS[dataset] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, blob in files.items():
        if key in gz:
            (raw / f"{STEMS[key]}.gz").write_bytes(blob)
        else:
            (raw / STEMS[key]).write_bytes(blob)
    return raw


@pytest.mark.parametrize("dataset", sorted(FOLDERS))
@pytest.mark.parametrize("compressed", [False, True])
def test_small_valid_idx_tree_loads(tmp_path, dataset, compressed):
    files = valid_files()
    if compressed:
        files = {k: gzip.compress(v) for k, v in files.items()}
    write_tree(tmp_path, dataset, files, frozenset(files) if compressed else frozenset())
    spec = load_dataset(dataset, data_root=tmp_path)
    assert (len(spec.train), len(spec.test)) == (N_TRAIN, N_TEST)
    assert spec.train.images.shape == (N_TRAIN, 1, 28, 28)
    assert spec.train.images.dtype == torch.uint8
    expect = torch.frombuffer(bytearray(valid_files()["train_images"][16:]), dtype=torch.uint8)
    assert torch.equal(spec.train.images.flatten(), expect)
    assert spec.train.labels.tolist() == [i % 10 for i in range(N_TRAIN)]


def _gzip_bomb(path: Path, header: bytes, zeros: int) -> None:
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        chunk = b"\0" * 2**20
        for _ in range(zeros // len(chunk)):
            f.write(chunk)


# (case id, key of the bad file, bad bytes or a writer, written as .gz?, words in the message)
IDX_CASES = [
    ("empty", "train_images", b"", False, "truncated"),
    ("short-header", "test_labels", b"\0\0\x08\x01\0\0", False, "truncated"),
    ("random-bytes", "train_labels", os.urandom(100) + b"\x12", False, "magic"),
    ("wrong-magic", "train_images", idx_images(N_TRAIN, magic=0x0D03), False, "magic"),
    ("labels-as-images", "train_images", idx_labels(N_TRAIN), False, "magic"),
    ("truncated-payload", "train_images", idx_images(N_TRAIN)[:-5], False, "declares"),
    ("trailing-bytes", "test_images", idx_images(N_TEST) + b"x", False, "declares"),
    ("billion-images", "train_images", struct.pack(">IIII", 0x803, 10**9, 28, 28), False, "items"),
    ("million-claimed", "train_images", struct.pack(">IIII", 0x803, 10**6, 28, 28), False, "declares"),
    ("zero-images", "train_images", struct.pack(">IIII", 0x803, 0, 28, 28), False, "items"),
    ("wrong-dims", "train_images", idx_images(N_TRAIN, rows=27), False, "shape"),
    ("label-count", "train_labels", idx_labels(N_TRAIN + 1), False, "labels for"),
    ("label-range", "test_labels", idx_labels(N_TEST, high=256)[:8] + b"\x63" * N_TEST, False, "label 99"),
    ("not-gzip", "train_images", b"this is not gzip at all", True, "cannot be read"),
    ("gz-truncated", "train_labels", gzip.compress(idx_labels(N_TRAIN))[:-12], True, "cannot be read"),
    ("gz-random", "test_images", b"\x1f\x8b\x08\0" + os.urandom(64), True, "cannot be read"),
    ("gz-short", "test_images", gzip.compress(idx_images(N_TEST)[:-100]), True, "truncated"),
    ("gz-billion", "train_images", gzip.compress(struct.pack(">IIII", 0x803, 10**9, 28, 28)), True, "items"),
    ("gz-million-claimed", "train_images", gzip.compress(struct.pack(">IIII", 0x803, 10**6, 28, 28) + b"\0" * 4096), True, "truncated"),
    (
        "gz-bomb",
        "train_images",
        lambda p: _gzip_bomb(p, struct.pack(">IIII", 0x803, N_TRAIN, 28, 28), 64 * 2**20),
        True,
        "more data than declared",
    ),
]  # fmt: skip


@pytest.mark.parametrize("dataset", sorted(FOLDERS))
@pytest.mark.parametrize(
    ("key", "bad", "compressed", "needle"),
    [c[1:] for c in IDX_CASES],
    ids=[c[0] for c in IDX_CASES],
)
def test_garbage_idx_file_is_one_line_naming_the_file(
    tmp_path, dataset, key, bad, compressed, needle
):
    files = valid_files()
    del files[key]
    raw = write_tree(tmp_path, dataset, files)
    target = raw / (f"{STEMS[key]}.gz" if compressed else STEMS[key])
    if callable(bad):
        bad(target)
    else:
        target.write_bytes(bad)

    def load() -> None:
        load_dataset(dataset, data_root=tmp_path)

    with pytest.raises(DataError) as info:
        load()
    msg = _one_line(info.value)
    assert str(target) in msg
    assert needle in msg
    assert "--download" in msg and "delete" in msg
    # the valid files are 12 + 6 images: nothing header-sized (up to 10^9 x 784 B) is allocated
    peak = _peak_mib(load)
    assert peak < 24, f"{peak:.1f} MiB allocated for a {target.stat().st_size} B file"


@pytest.mark.parametrize("dataset", sorted(FOLDERS))
def test_directory_in_place_of_an_idx_file(tmp_path, dataset):
    files = valid_files()
    del files["test_images"]
    raw = write_tree(tmp_path, dataset, files)
    (raw / STEMS["test_images"]).mkdir()
    with pytest.raises(DataError) as info:
        load_dataset(dataset, data_root=tmp_path)
    assert "not a regular file" in _one_line(info.value)


def test_missing_idx_file_still_says_not_found(tmp_path):
    files = valid_files()
    del files["train_labels"]
    write_tree(tmp_path, "mnist", files)
    with pytest.raises(DataError, match="not found") as info:
        load_dataset("mnist", data_root=tmp_path)
    assert "--download" in _one_line(info.value)


@pytest.mark.parametrize("dataset", sorted(FOLDERS))
def test_download_fetches_then_the_checked_reader_parses(tmp_path, monkeypatch, dataset):
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}
    calls = []

    def fake_download(self) -> None:  # torchvision's download, offline: it writes the files
        calls.append(Path(self.raw_folder))
        write_tree(Path(self.root), dataset, valid_files())

    monkeypatch.setattr(cls[dataset], "download", fake_download)
    spec = load_dataset(dataset, data_root=tmp_path, download=True)
    assert calls == [tmp_path / FOLDERS[dataset] / "raw"]
    assert len(spec.train) == N_TRAIN

    def failing_download(self) -> None:
        raise RuntimeError("Error downloading x.gz:\nTried https://a, got:\nno network\n")

    monkeypatch.setattr(cls[dataset], "download", failing_download)
    with pytest.raises(DataError) as info:
        load_dataset(dataset, data_root=tmp_path / "other", download=True)
    assert "could not be downloaded" in _one_line(info.value)


def test_corrupt_image_in_an_imagefolder_is_one_line(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (12, 12), (10, 20, 30)).save(folder / "ok.png")
    bad = tmp_path / "val" / "b" / "zz.png"
    bad.write_bytes(png_declaring(30000, 30000))
    spec = load_dataset("imagefolder", data_root=tmp_path, image_size=8)
    assert load_all(spec.train)[0].shape == (2, 3, 8, 8)
    with pytest.raises(DataError) as info:
        load_all(spec.test)
    assert str(bad) in _one_line(info.value)


def test_real_mnist_still_loads_from_the_checked_reader(data_root):
    spec = load_dataset("fashion-mnist", data_root=data_root)
    assert spec.train.images.shape == (60000, 1, 28, 28)
    assert int(spec.train.labels[0]) == 9


# ----------------------------------------------------------------------------------------------
# pattern images (BadNet --pattern)
# ----------------------------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` grey pixels (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# an EPS file: PIL would hand it to Ghostscript (code from the file would run) if allowed
EPS = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n%%EOF\n"


def _valid_png(path: Path) -> bytes:
    from PIL import Image

    Image.new("RGB", (9, 9), (255, 0, 0)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("width", "height"),
    [(30000, 30000), (10000, 10000), (5000, 5000), (4097, 8), (1, 70000)],
)
def test_oversized_pattern_is_refused_before_decoding(tmp_path, width, height, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(width, height))
    from PIL import Image

    def no_decoding(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(ParamError) as info:
        Trigger.square((3, 32, 32), 0.2, pattern=bomb)
    msg = _one_line(info.value)
    assert str(bomb) in msg and "pixels" in msg


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_bytes(os.urandom(300)), "not an image"),
        (lambda p: p.write_bytes(b""), "not an image"),
        (lambda p: p.write_text("<svg></svg>"), "not an image"),
        (lambda p: p.write_text(EPS), "not an image"),
        (lambda p: p.write_bytes(_valid_png(p)[:48]), "corrupt"),
        (lambda p: p.write_bytes(png_declaring(64, 64)), "corrupt"),
        (lambda p: p.write_bytes(png_declaring(0, 0)), "image"),
        (lambda p: p.mkdir(), "not a file"),
    ],
    ids=["random", "empty", "svg-text", "eps", "truncated", "bad-idat", "zero-size", "directory"],
)
def test_bad_pattern_file_is_one_line(tmp_path, make, needle):
    path = tmp_path / "pattern.png"
    make(path)
    with pytest.raises(ParamError) as info:
        Trigger.square((1, 28, 28), 0.2, pattern=path)
    msg = _one_line(info.value)
    assert str(path) in msg and needle in msg


def test_missing_or_mistyped_pattern(tmp_path):
    with pytest.raises(ParamError, match="no such file"):
        Trigger.square((1, 28, 28), 0.2, pattern=tmp_path / "nope.png")
    with pytest.raises(ParamError, match="got int"):
        Trigger.square((1, 28, 28), 0.2, pattern=5)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="finite"):
        Trigger.square((1, 10, 10), 0.3, pattern=torch.full((1, 3, 3), float("nan")))
    with pytest.raises(ParamError, match="shape"):
        Trigger.square((1, 10), 0.3)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="at most"):
        Trigger.square((3, 10**6, 10**6), 0.3)


def test_a_normal_pattern_image_still_works(tmp_path):
    _valid_png(tmp_path / "red.png")
    t = Trigger.square((3, 16, 16), 0.25, pattern=tmp_path / "red.png")
    assert torch.allclose(t.pattern[:, t.region[0]].mean(1), torch.tensor([1.0, 0.0, 0.0]))


def test_read_image_limits(tmp_path):
    from eviltwins.data import read_image

    big = tmp_path / "big.png"
    big.write_bytes(png_declaring(3000, 3000))
    with pytest.raises(DataError, match="more than the limit"):
        read_image(big, "L", max_pixels=1000 * 1000)


# ----------------------------------------------------------------------------------------------
# trigger files: the exact path, then hostile contents
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def saved_trigger(tmp_path) -> Path:
    return Trigger.square((3, 8, 8), 0.5, 0.2, pattern="random").save(tmp_path / "trig")


def test_load_reads_exactly_the_path_given(saved_trigger):
    pt = saved_trigger.with_suffix(".pt")
    pt.write_bytes(b"a pickle would be here")
    with pytest.raises(ParamError) as info:
        Trigger.load(pt)  # used to read trig.safetensors instead, silently
    msg = _one_line(info.value)
    assert str(pt) in msg and ".safetensors files written by eviltwins" in msg
    with pytest.raises(ParamError, match="preview"):
        Trigger.load(saved_trigger.with_suffix(".png"))
    with pytest.raises(ParamError):
        Trigger.load(saved_trigger.parent / "trig.safetensors.bak")
    # the documented shorthand: no suffix at all means <path>.safetensors
    assert Trigger.load(saved_trigger.with_suffix("")).shape == (3, 8, 8)
    assert Trigger.load(saved_trigger).shape == (3, 8, 8)


def safetensors_blob(
    tensors: dict[str, tuple[str, list[int], bytes]],
    header_extra: dict | None = None,
    raw_header: bytes | None = None,
) -> bytes:
    """A safetensors file written by hand: ``name -> (dtype, shape, data)``."""
    header: dict = dict(header_extra or {})
    data, off = b"", 0
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(payload)]}
        data += payload
        off += len(payload)
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def f32(*values: float) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _good(c: int = 1, h: int = 2, w: int = 2) -> dict[str, tuple[str, list[int], bytes]]:
    return {
        "mask": ("F32", [1, h, w], f32(*[1.0] * (h * w))),
        "pattern": ("F32", [c, h, w], f32(*[0.5] * (c * h * w))),
    }


TRIGGER_CASES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "too short"),
    ("garbage", os.urandom(64), "header"),
    ("header-len-huge", struct.pack("<Q", 2**62) + b"{}", "header length"),
    ("not-json", safetensors_blob({}, raw_header=b"{not json at all"), "not JSON"),
    ("not-utf8", safetensors_blob({}, raw_header=b"\xff\xfe\x00{}"), "not JSON"),
    ("json-list", safetensors_blob({}, raw_header=b"[1, 2, 3]"), "JSON object"),
    ("deep-json", safetensors_blob({}, raw_header=b"[" * 100000), "not JSON"),
    ("bad-metadata", safetensors_blob(_good(), {"__metadata__": {"a": 1}}), "metadata"),
    ("no-mask", safetensors_blob({"pattern": _good()["pattern"]}), "'mask'"),
    ("no-tensors", safetensors_blob({}), "'mask' or 'pattern'"),
    ("extra-tensor", safetensors_blob({**_good(), "evil": ("F32", [1, 1, 1], f32(0))}), "evil"),
    ("int-mask", safetensors_blob({**_good(), "mask": ("I32", [1, 2, 2], b"\0" * 16)}), "dtype"),
    ("list-dtype", safetensors_blob({}, raw_header=json.dumps({"mask": {"dtype": [1], "shape": [1, 1, 1], "data_offsets": [0, 4]}, "pattern": {}}).encode()), "dtype"),
    ("entry-not-dict", safetensors_blob({}, raw_header=b'{"mask": 3, "pattern": 4}'), "no dtype"),
    ("float-region", safetensors_blob({**_good(), "region": ("F32", [1, 2, 2], f32(1, 1, 1, 1))}), "dtype"),
    ("2d-mask", safetensors_blob({**_good(), "mask": ("F32", [2, 2], f32(1, 1, 1, 1))}), "(C, H, W)"),
    ("neg-shape", safetensors_blob({**_good(), "mask": ("F32", [1, -2, -2], f32(1, 1, 1, 1))}), "shape"),
    ("huge-shape", safetensors_blob({**_good(), "mask": ("F32", [1, 100000, 100000], f32(1))}), "declares shape"),
    ("many-channels", safetensors_blob({**_good(), "pattern": ("F32", [64, 2, 2], f32(*[0.5] * 256))}), "declares shape"),
    ("offsets-lie", safetensors_blob({**_good(), "mask": ("F32", [1, 2, 2], f32(1, 1))}), "offsets"),
    ("shape-mismatch", safetensors_blob({"mask": _good()["mask"], "pattern": _good(1, 3, 3)["pattern"]}), "do not match"),
    ("mask-channels", safetensors_blob({"mask": ("F32", [3, 2, 2], f32(*[1.0] * 12)), "pattern": _good(3)["pattern"]}), "do not match"),
    ("region-shape", safetensors_blob({**_good(), "region": ("U8", [1, 3, 3], b"\1" * 9)}), "region"),
    ("trailing-bytes", safetensors_blob(_good()) + b"\0" * 8, "accounts for"),
    ("nan-mask", safetensors_blob({**_good(), "mask": ("F32", [1, 2, 2], f32(1, float("nan"), 1, 1))}), "finite"),
    ("inf-pattern", safetensors_blob({**_good(), "pattern": ("F32", [1, 2, 2], f32(0, float("inf"), 0, 0))}), "finite"),
    ("pattern-above-1", safetensors_blob({**_good(), "pattern": ("F32", [1, 2, 2], f32(0, 2.5, 0, 0))}), "[0, 1]"),
    ("mask-negative", safetensors_blob({**_good(), "mask": ("F64", [1, 2, 2], np.asarray([-1.0, 1, 1, 1]).tobytes())}), "[0, 1]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("blob", "needle"), [c[1:] for c in TRIGGER_CASES], ids=[c[0] for c in TRIGGER_CASES]
)
def test_hostile_trigger_file_is_one_line(tmp_path, blob, needle):
    path = tmp_path / "trigger.safetensors"
    path.write_bytes(blob)
    with pytest.raises(DataError) as info:
        Trigger.load(path)
    msg = _one_line(info.value)
    assert str(path) in msg and needle in msg
    with pytest.raises(DataError) as info:
        Trigger.from_bytes(blob)
    assert needle in _one_line(info.value)


def test_huge_declared_trigger_allocates_nothing(tmp_path):
    blob = safetensors_blob(
        {
            "mask": ("F32", [1, 4000, 4000], b""),
            "pattern": ("F32", [3, 4000, 4000], b""),
        }
    )
    path = tmp_path / "t.safetensors"
    path.write_bytes(blob)
    assert _peak_mib(lambda: Trigger.load(path)) < 8
    assert _peak_mib(lambda: Trigger.from_bytes(blob)) < 8


def test_trigger_directory_missing_and_wrong_types(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(DataError, match="not a file"):
        Trigger.load(folder)
    with pytest.raises(DataError, match="does not exist"):
        Trigger.load(tmp_path / "missing.safetensors")
    with pytest.raises(ParamError):
        Trigger.load(3)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="bytes"):
        Trigger.from_bytes("not bytes")  # type: ignore[arg-type]


def test_a_hand_written_valid_trigger_loads(tmp_path):
    blob = safetensors_blob({**_good(3), "region": ("U8", [1, 2, 2], b"\1\0\1\0")})
    t = Trigger.from_bytes(blob)
    assert t.shape == (3, 2, 2) and t.region.dtype == torch.bool
    assert t.region.flatten().tolist() == [True, False, True, False]


def test_trigger_for_another_input_shape_is_refused(saved_trigger):
    trig = Trigger.load(saved_trigger)
    trig.check_shape((3, 8, 8))
    with pytest.raises(DataError) as info:
        trig.check_shape((1, 28, 28), "model mnist-cnn")
    msg = _one_line(info.value)
    assert "(3, 8, 8)" in msg and "(1, 28, 28)" in msg and "model mnist-cnn" in msg
    with pytest.raises(DataError, match="made for"):
        trig.stamp(torch.rand(2, 1, 28, 28))
    with pytest.raises(DataError):
        trig.stamp(np.zeros((2, 3, 8, 8)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mask": np.ones((1, 2, 2))}, "torch.Tensor"),
        ({"mask": torch.ones(1, 2, 2, dtype=torch.long)}, "float"),
        ({"pattern": torch.full((1, 2, 2), float("nan"))}, "finite"),
        ({"region": torch.ones(1, 3, 3, dtype=torch.bool)}, "region"),
    ],
)
def test_trigger_constructor_checks(kwargs, needle):
    args = {"mask": torch.ones(1, 2, 2), "pattern": torch.zeros(1, 2, 2), **kwargs}
    with pytest.raises(ParamError, match=needle):
        Trigger(**args)


# ----------------------------------------------------------------------------------------------
# arrays passed from Python
# ----------------------------------------------------------------------------------------------


def _imgs(*shape: int, fill: float | None = None) -> torch.Tensor:
    x = torch.rand(*shape)
    return x if fill is None else x.fill_(fill)


ARRAY_CASES = [
    ("nan", _imgs(2, 1, 4, 4, fill=float("nan")), torch.zeros(2, dtype=torch.long), None, "NaN"),
    ("inf", _imgs(2, 1, 4, 4, fill=float("inf")), torch.zeros(2, dtype=torch.long), None, "NaN"),
    ("above-1", _imgs(2, 1, 4, 4, fill=3.0), torch.zeros(2, dtype=torch.long), None, "[0, 1]"),
    ("negative", _imgs(2, 1, 4, 4, fill=-0.5), torch.zeros(2, dtype=torch.long), None, "[0, 1]"),
    ("3d", _imgs(2, 4, 4), torch.zeros(2, dtype=torch.long), None, "4-D"),
    ("5d", _imgs(2, 1, 1, 4, 4), torch.zeros(2, dtype=torch.long), None, "4-D"),
    ("count", _imgs(3, 1, 4, 4), torch.zeros(2, dtype=torch.long), None, "3 images but 2"),
    ("label-neg", _imgs(2, 1, 4, 4), torch.tensor([0, -1]), None, "class indices"),
    ("label-high", _imgs(2, 1, 4, 4), torch.tensor([0, 10]), 10, "[0, 10)"),
    ("label-float", _imgs(2, 1, 4, 4), torch.tensor([0.0, 1.5]), None, "integer"),
    ("label-bool", _imgs(2, 1, 4, 4), torch.tensor([True, False]), None, "integer"),
    ("label-2d", _imgs(2, 1, 4, 4), torch.zeros(2, 1, dtype=torch.long), None, "1-D"),
    ("empty", _imgs(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), None, "no pixels"),
    ("empty-hw", _imgs(2, 1, 0, 4), torch.zeros(2, dtype=torch.long), None, "no pixels"),
    ("int-images", torch.zeros(2, 1, 4, 4, dtype=torch.int32), torch.zeros(2, dtype=torch.long), None, "uint8"),
    ("bool-images", torch.zeros(2, 1, 4, 4, dtype=torch.bool), torch.zeros(2, dtype=torch.long), None, "uint8"),
    ("complex", torch.zeros(2, 1, 4, 4, dtype=torch.complex64), torch.zeros(2, dtype=torch.long), None, "uint8"),
    ("numpy", np.zeros((2, 1, 4, 4), dtype=np.float32), torch.zeros(2, dtype=torch.long), None, "torch.from_numpy"),
    ("strings", np.array([["a"]], dtype=object), torch.zeros(1, dtype=torch.long), None, "torch.Tensor"),
    ("list-labels", _imgs(2, 1, 4, 4), [0, 1], None, "torch.Tensor"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("images", "labels", "num_classes", "needle"),
    [c[1:] for c in ARRAY_CASES],
    ids=[c[0] for c in ARRAY_CASES],
)
def test_bad_arrays_are_one_data_error(images, labels, num_classes, needle):
    with pytest.raises(DataError) as info:
        TensorImageDataset(images, labels, num_classes)
    assert needle in _one_line(info.value)


def test_valid_arrays_still_work():
    ds = TensorImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2]), 3)
    assert len(ds) == 3 and ds.labels.dtype == torch.long
    assert len(ds.subset([2, 0])) == 2
    with pytest.raises(ParamError, match="lie in"):
        ds.subset([5])
    with pytest.raises(ParamError, match="1-D"):
        ds.subset([[0]])
    with pytest.raises(ParamError, match="integer positions"):
        ds.subset(["a"])  # type: ignore[list-item]
    with pytest.raises(ParamError, match="num_classes"):
        TensorImageDataset(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), 0)


def test_spec_and_batch_helpers_check_their_inputs():
    ds = TensorImageDataset(torch.rand(4, 1, 4, 4), torch.arange(4))
    base = {"name": "toy", "classes": ("a", "b"), "train": ds, "test": ds}
    DatasetSpec(shape=(1, 4, 4), mean=(0.5,), std=(0.5,), **base)
    bad = [
        ({"shape": (1, 4), "mean": (0.5,), "std": (0.5,)}, ParamError, "3 positive ints"),
        ({"shape": (3, 4, 4), "mean": (0.5,) * 3, "std": (0.5,) * 3}, DataError, "spec says"),
        ({"shape": (1, 4, 4), "mean": (0.5, 0.5), "std": (0.5,)}, ParamError, "one per channel"),
        ({"shape": (1, 4, 4), "mean": (0.5,), "std": (0.0,)}, ParamError, "positive"),
        ({"shape": (1, 4, 4), "mean": (float("nan"),), "std": (0.5,)}, ParamError, "finite"),
        ({"shape": (1, 4, 4), "mean": ("x",), "std": (0.5,)}, ParamError, "numbers"),
    ]
    for kwargs, cls, needle in bad:
        with pytest.raises(cls, match=needle):
            DatasetSpec(**{**base, **kwargs})
    with pytest.raises(ParamError, match="train"):
        DatasetSpec(shape=(1, 4, 4), mean=(0.5,), std=(0.5,), **{**base, "train": 3})
    with pytest.raises(ParamError, match="augmentation"):
        DatasetSpec(shape=(1, 4, 4), mean=(0.5,), std=(0.5,), augment=("rotate",), **base)
    spec = DatasetSpec(shape=(1, 4, 4), mean=(0.5,), std=(0.5,), **base)
    with pytest.raises(ParamError, match="int or None"):
        spec.subset(train=2.5)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="batch_size"):
        next(iter_batches(ds, 0))
    with pytest.raises(ParamError, match="limit"):
        load_all(ds, limit=-1)


# ----------------------------------------------------------------------------------------------
# property-based: whatever the bytes, only EviltwinsError comes out
# ----------------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _mutate(blob: bytes, data: st.DataObject) -> bytes:
    """Keep, truncate, flip bytes in, or append to ``blob``, as hypothesis chooses."""
    how = data.draw(st.sampled_from(["keep", "truncate", "flip", "append", "header"]))
    if how == "keep" or not blob:
        return blob
    if how == "truncate":
        return blob[: data.draw(st.integers(0, max(0, len(blob) - 1)))]
    if how == "append":
        return blob + data.draw(st.binary(min_size=1, max_size=64))
    out = bytearray(blob)
    limit = min(len(out), 24) if how == "header" else len(out)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, limit - 1))
        out[i] = data.draw(st.integers(0, 255))
    return bytes(out)


def _only_eviltwins_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except EviltwinsError as err:
        _one_line(err)


@FUZZ
@given(
    data=st.data(),
    key=st.sampled_from(sorted(STEMS)),
    compressed=st.booleans(),
    dataset=st.sampled_from(sorted(FOLDERS)),
)
def test_fuzzed_idx_files_only_raise_eviltwins_errors(data, key, compressed, dataset):
    files = valid_files()
    blob = gzip.compress(files[key]) if compressed else files[key]
    files[key] = _mutate(blob, data)
    with tempfile.TemporaryDirectory() as tmp:
        write_tree(Path(tmp), dataset, files, frozenset({key}) if compressed else frozenset())
        _only_eviltwins_errors(lambda: load_dataset(dataset, data_root=tmp))


@FUZZ
@given(data=st.data())
def test_fuzzed_trigger_files_only_raise_eviltwins_errors(data):
    good = Trigger.square((3, 6, 6), 0.5, 0.3, pattern="random").to_bytes()
    blob = data.draw(st.one_of(st.binary(max_size=256), st.just(good)))
    blob = _mutate(blob, data)
    _only_eviltwins_errors(lambda: Trigger.from_bytes(blob))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.safetensors"
        path.write_bytes(blob)
        _only_eviltwins_errors(lambda: Trigger.load(path))


@FUZZ
@given(data=st.data())
def test_fuzzed_pattern_images_only_raise_eviltwins_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.png"
        base = data.draw(
            st.sampled_from(["png", "bomb", "random"]),
        )
        if base == "png":
            blob = _valid_png(path)
        elif base == "bomb":
            w = data.draw(st.integers(1, 2**31 - 1))
            h = data.draw(st.integers(1, 2**31 - 1))
            blob = png_declaring(w, h)
        else:
            blob = data.draw(st.binary(max_size=512))
        path.write_bytes(_mutate(blob, data))
        _only_eviltwins_errors(lambda: Trigger.square((3, 16, 16), 0.3, pattern=path))


_dtypes = st.sampled_from(
    [torch.uint8, torch.int8, torch.int64, torch.float16, torch.float32, torch.float64, torch.bool]
)


@FUZZ
@given(
    img_shape=st.lists(st.integers(0, 4), min_size=0, max_size=5),
    n_labels=st.integers(0, 5),
    img_dtype=_dtypes,
    lab_dtype=_dtypes,
    fill=st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float("nan"), float("inf")]),
    label=st.integers(-3, 12),
    num_classes=st.one_of(st.none(), st.integers(-1, 12)),
)
def test_fuzzed_arrays_only_raise_eviltwins_errors(
    img_shape, n_labels, img_dtype, lab_dtype, fill, label, num_classes
):
    if img_dtype.is_floating_point:
        images = torch.full(img_shape, fill, dtype=img_dtype)
    else:
        images = torch.zeros(img_shape, dtype=img_dtype)
    labels = torch.full((n_labels,), label).to(lab_dtype)

    def build() -> None:
        ds = TensorImageDataset(images, labels, num_classes)
        x, y = load_all(ds)
        assert x.is_floating_point() and 0 <= float(x.min()) <= float(x.max()) <= 1
        assert y.dtype == torch.long and int(y.min()) >= 0
        assert num_classes is None or int(y.max()) < num_classes

    _only_eviltwins_errors(build)
