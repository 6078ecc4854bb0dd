"""The user's own data: a .npz of arrays and a class-per-folder image tree, named by path from
the CLI, the API and sweep specs; bad arrays are one line; a model trained on one records it."""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import eviltwins as et
from eviltwins.cli import main
from eviltwins.data import load_dataset, npz_dataset
from eviltwins.errors import DataError, ParamError
from eviltwins.experiments import cells, load_spec
from eviltwins.io import ModelCard


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _shapes(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` grey uint8 images (N, size, size) of 3 easy classes (vertical bar, horizontal bar,
    hollow square) with a little noise, and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = np.zeros((n, size, size), np.int64)
    a, b, c, d = size // 5, size - size // 5, size // 2 - 2, size // 2 + 2
    for i, label in enumerate(y):
        if label == 0:
            x[i, a:b, c:d] = 220
        elif label == 1:
            x[i, c:d, a:b] = 220
        else:
            x[i, a:b, a:b] = 220
            x[i, a + 3 : b - 3, a + 3 : b - 3] = 0
    x = np.clip(x + rng.integers(0, 35, x.shape), 0, 255).astype(np.uint8)
    return x, y


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture
def good_arrays():
    xt, yt = _shapes(60, 0)
    xs, ys = _shapes(24, 1)
    return {"x_train": xt, "y_train": yt, "x_test": xs, "y_test": ys}


def test_npz_layouts_round_trip_to_the_same_tensors(tmp_path, good_arrays):
    ref = npz_dataset(_npz(tmp_path / "nhw.npz", **good_arrays))
    assert ref.shape == (1, 28, 28) and ref.classes == ("0", "1", "2")
    assert ref.train.images.dtype == torch.uint8
    assert torch.equal(ref.train.images[:, 0], torch.from_numpy(good_arrays["x_train"]))
    f = {k: v for k, v in good_arrays.items()}
    f["x_train"] = (good_arrays["x_train"] / 255.0).astype(np.float32)[..., None]  # NHWC float
    f["x_test"] = (good_arrays["x_test"] / 255.0).astype(np.float32)[..., None]
    f["y_train"] = good_arrays["y_train"][:, None]  # Keras' (N, 1) labels
    nhwc = npz_dataset(_npz(tmp_path / "nhwc.npz", **f))
    f["x_train"], f["x_test"] = (
        f["x_train"].transpose(0, 3, 1, 2),
        f["x_test"].transpose(0, 3, 1, 2),
    )
    nchw = npz_dataset(_npz(tmp_path / "nchw.npz", **f))
    for spec in (nhwc, nchw):
        assert spec.train.images.dtype == torch.float32  # floats stay floats, exactly
        assert torch.equal(spec.train.tensors()[0], ref.train.tensors()[0])
        assert torch.equal(spec.test.tensors()[1], ref.test.tensors()[1])
        assert spec.mean == ref.mean and spec.std == ref.std
    colour = {**good_arrays, "classes": np.array(["v", "h", "sq"])}
    colour["x_train"] = np.stack([good_arrays["x_train"]] * 3, axis=-1)  # NHWC colour
    colour["x_test"] = np.stack([good_arrays["x_test"]] * 3, axis=1)  # NCHW colour
    spec = npz_dataset(_npz(tmp_path / "colour.npz", **colour))
    assert spec.shape == (3, 28, 28) and spec.classes == ("v", "h", "sq")
    assert spec.name == str((tmp_path / "colour.npz").resolve())


def test_options_resize_convert_normalise_and_are_recorded(tmp_path, good_arrays):
    path = _npz(tmp_path / "d.npz", **good_arrays)
    spec = load_dataset(str(path), image_size=16, channels=3, normalize="imagenet")
    assert spec.shape == (3, 16, 16) and spec.train.images.dtype == torch.uint8
    assert spec.mean == (0.485, 0.456, 0.406)
    assert spec.options == {"image_size": 16, "channels": 3, "normalize": "imagenet"}
    assert load_dataset(str(path), normalize="none").mean == (0.0,)
    assert load_dataset(str(path)).options == {}
    with pytest.raises(ParamError, match="3 channels"):
        load_dataset(str(path), normalize="imagenet")
    with pytest.raises(ParamError, match="takes no option 'channels'"):
        load_dataset("mnist", channels=3)
    assert load_dataset("digits", image_size=16).options == {"image_size": 16}


def _raw_npz(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _lying_header(shape: tuple[int, ...]) -> bytes:
    """A .npy v1.0 header declaring ``shape`` uint8, followed by 10 bytes of data."""
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(10)


BAD_ARRAYS = [
    ("missing", lambda a: a.pop("y_test"), "y_test is missing"),
    ("extra", lambda a: a.update(X_train=a["x_train"]), "'X_train.npy' is not an array"),
    ("ragged", lambda a: a.update(x_train=np.array([np.zeros(3), np.zeros(4)], object)), "x_train holds Python objects"),
    ("mismatched", lambda a: a.update(x_test=np.zeros((24, 32, 32), np.uint8)), "x_test images are"),
    ("length", lambda a: a.update(y_train=a["y_train"][:-1]), "y_train holds 59 labels for 60"),
    ("float-labels", lambda a: a.update(y_train=a["y_train"].astype(float)), "y_train must be integer"),
    ("negative", lambda a: a["y_test"].__setitem__(0, -1), "y_test holds labels in [-1"),
    ("out-of-range", lambda a: a.update(classes=np.array(["a", "b"])), "y_train holds labels in [0, 2]"),
    ("nan", lambda a: a.update(x_train=np.full((60, 28, 28), np.nan, np.float32)), "x_train holds NaN"),
    ("range", lambda a: a.update(x_test=np.full((24, 28, 28), 2.0)), "x_test holds floats in [2, 2]"),
    ("layout", lambda a: a.update(x_train=np.zeros((60, 28, 28, 5), np.uint8)), "x_train has shape"),
    ("int16", lambda a: a.update(x_train=a["x_train"].astype(np.int16)), "x_train must be uint8"),
    ("one-class", lambda a: (a["y_train"].fill(0), a["y_test"].fill(0)), "at least 2"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "spoil", "needle"), BAD_ARRAYS, ids=[c[0] for c in BAD_ARRAYS])
def test_bad_arrays_fail_with_one_line_from_the_cli(
    tmp_path, capsys, good_arrays, case, spoil, needle
):
    spoil(good_arrays)
    path = _npz(tmp_path / "bad.npz", **good_arrays)
    code, _, err = _run(capsys, "train", "--dataset", path, "--out", tmp_path / "m", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("eviltwins: error: "), err
    assert needle in lines[0] and str(path) in lines[0]


def test_hostile_npz_files_are_refused_before_any_array_is_read(tmp_path, monkeypatch):
    not_zip = tmp_path / "text.npz"
    not_zip.write_text("hello")
    with pytest.raises(DataError, match="not a .npz archive"):
        load_dataset(str(not_zip))
    x, y = _shapes(3, 0)
    members = {"x_test.npy": _npy_bytes(x), "y_test.npy": _npy_bytes(y)}
    members.update({"y_train.npy": _npy_bytes(y), "x_train.npy": _lying_header((10**9, 28, 28))})
    lying = _raw_npz(tmp_path / "lying.npz", members)
    with pytest.raises(DataError, match="x_train declares 784,000,000,000 bytes"):
        load_dataset(str(lying))
    monkeypatch.setattr("eviltwins.data.files.MAX_DATA_BYTES", 1000)
    xt, yt = _shapes(60, 0)
    big = _npz(tmp_path / "big.npz", x_train=xt, y_train=yt, x_test=xt, y_test=yt)
    with pytest.raises(DataError, match="past the limit of 1,000 bytes"):
        load_dataset(str(big))


def _tree(root, sizes=None):
    """A 28x28 grey class-per-folder tree: train/ 3 classes x 20, val/ 3 classes x 6 PNGs."""
    for split, n, seed in (("train", 60, 0), ("val", 18, 1)):
        x, y = _shapes(n, seed)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            folder = root / split / ("vertical", "horizontal", "square")[label]
            folder.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(img, "L")
            if sizes is not None and i == 0:
                im = im.resize(sizes)
            im.save(folder / f"{i:03d}.png")
    (root / "train" / "vertical" / "notes.txt").write_text("not an image")
    return root


def test_image_tree_reads_grey_and_colour(tmp_path, monkeypatch):
    root = _tree(tmp_path / "tree")
    spec = load_dataset(str(root))
    assert spec.shape == (1, 28, 28) and spec.classes == ("horizontal", "square", "vertical")
    assert (len(spec.train), len(spec.test)) == (60, 18)
    assert load_dataset(str(root), channels=3, image_size=20).shape == (3, 20, 20)
    with pytest.raises(DataError, match="pass --image-size"):
        load_dataset(str(_tree(tmp_path / "mixed", sizes=(30, 30))))
    (root / "val" / "extra").mkdir()
    with pytest.raises(DataError, match="'extra' is in only one of them"):
        load_dataset(str(root))
    (root / "val" / "extra").rmdir()
    monkeypatch.setattr("eviltwins.data.folders.MAX_DATA_BYTES", 10_000)
    with pytest.raises(DataError, match="pass --image-size"):
        load_dataset(str(root))


@pytest.mark.parametrize("kind", ["npz", "tree"])
def test_trained_and_attacked_from_the_cli(tmp_path, capsys, good_arrays, kind):
    if kind == "npz":
        data, extra = _npz(tmp_path / "shapes.npz", **good_arrays), ["--image-size", "16"]
    else:
        data, extra = _tree(tmp_path / "tree"), []
    model, atk = tmp_path / "model", tmp_path / "atk"
    code, out, err = _run(
        capsys, "train", "--dataset", data, *extra, "--model", "cnn", "--epochs", "2",
        "--out", model, "--quiet", "--json", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    card = json.loads(out)["card"]
    assert card["dataset"] == str(data.resolve())
    assert card["dataset_options"] == ({"image_size": 16} if kind == "npz" else {})
    # the dataset (and its options) come from the card
    code, out, err = _run(
        capsys, "attack", "badnet", "--model", model, "--out", atk, "--quiet", "--json",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert (atk / "metrics.json").is_file() and 0 <= json.loads(out)["metrics"]["asr"] <= 1
    code, out, err = _run(capsys, "evaluate", "--model", model, "--json")
    assert code == 0 and json.loads(out)["dataset"] == str(data.resolve()), err


def test_api_records_the_options_and_reloads_them(tmp_path, good_arrays):
    path = _npz(tmp_path / "d.npz", **good_arrays)
    res = et.train(
        str(path), "cnn", epochs=1, device="cpu", quiet=True, out=tmp_path / "m",
        dataset_options={"channels": 3, "normalize": "none"},
    )  # fmt: skip
    assert res.card.input_shape == (3, 28, 28) and res.card.mean == (0.0, 0.0, 0.0)
    assert et.evaluate(tmp_path / "m").n == 24
    with pytest.raises(ParamError, match="unknown dataset option 'size'"):
        et.evaluate(tmp_path / "m", dataset_options={"size": 3})


def test_cards_with_and_without_dataset_options():
    base = {"architecture": "cnn", "input_shape": [1, 8, 8], "num_classes": 2, "mean": [0], "std": [1]}  # fmt: skip
    assert ModelCard.from_dict(base).dataset_options == {}
    card = ModelCard.from_dict({**base, "dataset_options": {"image_size": 8}})
    assert ModelCard.from_dict(card.to_dict()) == card
    for bad in ([1], {"image_size": [8]}, {"not a name": 1}):
        with pytest.raises(DataError, match="dataset_options"):
            ModelCard.from_dict({**base, "dataset_options": bad})


def test_sweep_spec_with_a_npz_path_has_filename_safe_keys(tmp_path, capsys, good_arrays):
    path = _npz(tmp_path / "my data.npz", **good_arrays)
    raw = {
        "name": "mine",
        "datasets": [str(path), "digits"],
        "dataset_options": {"image_size": 16},
        "attacks": [{"name": "badnet"}, {"name": "none"}],
    }
    spec = load_spec(raw)
    assert spec.datasets[0] == str(path.resolve())
    keys = [c.key(spec) for c in cells(spec)]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", k) for k in keys), keys
    assert keys[0].startswith("my-data-") and any(k.startswith("digits__") for k in keys)
    other = load_spec({**raw, "dataset_options": {"image_size": 20}})
    assert [c.key(other) for c in cells(other)][0] != keys[0]  # options change the key
    yaml = tmp_path / "sweep.yaml"
    yaml.write_text(json.dumps(raw))
    code, out, err = _run(capsys, "sweep", yaml, "--check", "--json")
    assert code == 0 and json.loads(out)["cells"] == keys, err
    for bad, needle in (
        ({**raw, "datasets": [str(tmp_path / "gone.npz")]}, "does not exist"),
        ({**raw, "datasets": ["digits"]}, "none is named"),
        ({**raw, "dataset_options": {"channels": 2}}, "channels must be 1"),
    ):
        with pytest.raises(ParamError, match=needle):
            load_spec(bad)


def test_a_sweep_runs_on_a_npz_path(tmp_path, good_arrays):
    path = _npz(tmp_path / "d.npz", **good_arrays)
    raw = {"name": "u", "datasets": [str(path)], "dataset_options": {"image_size": 16}}
    raw.update(attacks=[{"name": "badnet"}], clean={"epochs": 1})
    summary = et.sweep(raw, tmp_path / "run", quiet=True, report=False)
    assert len(summary.ran) == 1 and not summary.failed, summary.failed
    (clean,) = (tmp_path / "run" / "clean").iterdir()
    card = json.loads((clean / "model.json").read_text())
    assert card["dataset_options"] == {"image_size": 16} and card["input_shape"] == [1, 16, 16]
