"""Refusals that name the real cause in one line (issue: "refusals that mislead or break the
one-line rule").

Before the fix: random bytes, an empty file and a plain ``pickle.dump`` were all "pickled
objects beyond tensors, which could run code" (the plain pickle with two more lines of torch's
UserWarning on stderr); an image that could not be opened for lack of permission was "corrupt
or truncated"; an image-tree class with no training images was accepted without a word;
``trigger.safetensors`` was written with mode 0600; a Ctrl-C while Python shut down after a
command printed a traceback.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eviltwins as et
from eviltwins.cli import main
from eviltwins.data import load_dataset
from eviltwins.errors import DataError, UnsafeFileError
from eviltwins.io import load_state_file, read_json
from eviltwins.triggers import Trigger

WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def _cli(capfd, *argv: object) -> tuple[int, str]:
    """Exit code and stderr (at the file-descriptor level) of ``eviltwins argv``."""
    code = main([str(a) for a in argv])
    return code, capfd.readouterr().err.strip()


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("eviltwins: error: ") and "\n" not in err, err
    assert "Traceback" not in err and "Warning" not in err, err
    for needle in needles:
        assert needle in err, err


# --- 1. weights files ----------------------------------------------------------------------------
class _Payload:
    """Unpickling this would run ``os.system`` (stands for arbitrary code)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _linear_state() -> dict[str, torch.Tensor]:
    return torch.nn.Linear(2, 2).state_dict()


def _torch_saved(path: Path, obj: object, **kwargs) -> bytes:
    torch.save(obj, path, **kwargs)
    return path.read_bytes()


def _pickled(obj: object, protocol: int) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def _zip_without_data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    return path.read_bytes()


#: name -> (how to make the file's bytes, needles of the refusal, its error type).
WEIGHTS_CASES = {
    "random": (
        lambda p: np.random.default_rng(0).bytes(1000),
        ["is not a PyTorch weights file", "neither"],
        DataError,
    ),  # fmt: skip
    "empty": (lambda p: b"", ["is empty"], DataError),
    "plain-pickle-4": (
        lambda p: _pickled({"w": [1, 2]}, 4),
        ["plain Python pickle (protocol 4)", "not a file written by torch.save"],
        DataError,
    ),  # fmt: skip
    "plain-pickle-2": (
        lambda p: _pickled({"w": [1, 2]}, 2),
        ["plain Python pickle (protocol 2)"],
        DataError,
    ),  # fmt: skip
    "cut-pickle": (
        lambda p: _pickled({"w": list(range(50))}, 4)[:40],
        ["corrupt or truncated", "its pickle breaks at byte"],
        DataError,
    ),  # fmt: skip
    "cut-zip": (
        lambda p: _torch_saved(p, _linear_state())[:700],
        ["corrupt or truncated", "zip archive cannot be read"],
        DataError,
    ),  # fmt: skip
    "cut-legacy": (
        lambda p: _torch_saved(p, _linear_state(), _use_new_zipfile_serialization=False)[:200],
        ["corrupt or truncated", "breaks at byte"],
        DataError,
    ),  # fmt: skip
    "foreign-zip": (
        _zip_without_data_pkl,
        ["is a zip archive, not a file written by torch.save"],
        DataError,
    ),  # fmt: skip
    "protocol-4-torch": (
        lambda p: _torch_saved(p, _linear_state(), pickle_protocol=4),
        ["pickle protocol 4", "cannot read"],
        DataError,
    ),  # fmt: skip
    "whole-model": (
        lambda p: _torch_saved(p, torch.nn.Linear(2, 2)),
        ["whole pickled model", "torch.nn.modules.linear.Linear", "not a state_dict"],
        UnsafeFileError,
    ),  # fmt: skip
    "pickled-state": (
        lambda p: _pickled(_linear_state(), 4),
        ["plain Python pickle", "torch.storage._load_from_bytes", "could run code"],
        UnsafeFileError,
    ),  # fmt: skip
    "code": (
        lambda p: _pickled({"w": _Payload(p.with_suffix(".ran"))}, 4),
        ["beyond tensors", "system", "could run code", "nothing in it was run"],
        UnsafeFileError,
    ),  # fmt: skip
    "code-in-zip": (
        lambda p: _torch_saved(p, {"w": _Payload(p.with_suffix(".ran"))}),
        ["beyond tensors", "system", "nothing in it was run"],
        UnsafeFileError,
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Each case of :data:`WEIGHTS_CASES` under each of the four pickle suffixes."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name, (make, _, _) in WEIGHTS_CASES.items():
        for suffix in WEIGHT_SUFFIXES:
            path = folder / f"{name}{suffix}"
            blob = make(path)
            path.write_bytes(blob)
            files[name, suffix] = path
    return files


@pytest.mark.parametrize("suffix", WEIGHT_SUFFIXES)
@pytest.mark.parametrize("case", list(WEIGHTS_CASES))
def test_refused_weights_name_the_real_cause_in_one_line(
    weight_files, case, suffix, tmp_path, capfd, recwarn
):
    path = weight_files[case, suffix]
    _, needles, error = WEIGHTS_CASES[case]
    out = tmp_path / "out"
    code, err = _cli(
        capfd, "import-model", "--arch", "cnn", "--weights", path, "--dataset", "digits",
        "--out", out, "-q",
    )  # fmt: skip
    _one_line_error(code, err, str(path), *needles)
    if case not in ("code", "code-in-zip", "whole-model", "pickled-state"):
        assert "could run code" not in err and "beyond tensors" not in err
    assert "..." not in err.replace(", ...", "")  # no library text cut off
    assert not out.exists()
    code, err2 = _cli(
        capfd, "evaluate", "--model", path, "--arch", "cnn", "--dataset", "digits", "-q"
    )
    _one_line_error(code, err2, *needles)
    assert not path.with_suffix(".ran").exists()  # nothing in the file ran
    assert not [w for w in recwarn if "pickle" in str(w.message)], [str(w.message) for w in recwarn]
    with pytest.raises(error):
        load_state_file(path)


def test_refusal_is_the_same_under_warnings_as_errors(weight_files):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"plain Python pickle \(protocol 4\)"):
            load_state_file(weight_files["plain-pickle-4", ".pt"])


@pytest.mark.parametrize("suffix", WEIGHT_SUFFIXES)
@pytest.mark.parametrize("legacy", [False, True])
def test_files_torch_accepts_are_never_refused(tmp_path, suffix, legacy, recwarn):
    state = _linear_state()
    path = tmp_path / f"good{suffix}"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_state_file(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not [w for w in recwarn if "pickle" in str(w.message)]


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (
            lambda p, good: p.write_bytes(np.random.default_rng(1).bytes(1000)),
            ["is not a safetensors file, or is corrupt or truncated"],
        ),  # fmt: skip
        (lambda p, good: p.write_bytes(b""), ["is empty"]),
        (
            lambda p, good: p.write_bytes(good[:-5]),
            ["truncated or corrupt", "tensor 'weight'", "the file holds"],
        ),  # fmt: skip
    ],
    ids=["random", "empty", "truncated"],
)
def test_refused_safetensors_name_the_real_cause(tmp_path, capfd, make, needles):
    from safetensors.torch import save

    path = tmp_path / "w.safetensors"
    make(path, save(_linear_state()))
    code, err = _cli(
        capfd, "import-model", "--arch", "cnn", "--weights", path, "--dataset", "digits",
        "--out", tmp_path / "out", "-q",
    )  # fmt: skip
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


# --- 2. files that cannot be read ----------------------------------------------------------------
def _png(path: Path, size: int = 3) -> Path:
    Image.new("L", (size, size), 255).save(path)
    return path


def _deny(monkeypatch, module: object, name: str, denied: Path) -> None:
    """``module.name`` (an opener) raising EACCES for ``denied``, as it would for a file its
    user may not read (tests run as root, where chmod 000 denies nothing)."""
    real = getattr(module, name, open)  # a module without its own ``open`` uses the builtin

    def opener(path, *args, **kwargs):
        if Path(os.fspath(path)) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, opener, raising=False)


def test_unreadable_pattern_is_permission_denied_not_corrupt(
    tmp_path, capfd, monkeypatch, small_model
):
    pattern = _png(tmp_path / "pattern.png")
    _deny(monkeypatch, Image, "open", pattern)
    out = tmp_path / "atk"
    code, err = _cli(
        capfd, "attack", "badnet", "--model", small_model, "--pattern", pattern,
        "--out", out, "--device", "cpu", "-q",
    )  # fmt: skip
    _one_line_error(code, err, str(pattern), "cannot be read (permission denied)")
    assert "corrupt" not in err and not out.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_unreadable_pattern_with_real_permissions(tmp_path, capfd, small_model):
    pattern = _png(tmp_path / "pattern.png")
    pattern.chmod(0)
    try:
        code, err = _cli(
            capfd, "attack", "badnet", "--model", small_model, "--pattern", pattern,
            "--out", tmp_path / "atk", "--device", "cpu", "-q",
        )  # fmt: skip
    finally:
        pattern.chmod(0o644)
    _one_line_error(code, err, "cannot be read (permission denied)")
    assert "corrupt" not in err


def _tree(root: Path, counts: dict[str, tuple[int, int]]) -> Path:
    """An image tree: class -> (train images, val images), 8x8 grey PNGs."""
    for cls, (n_train, n_val) in counts.items():
        for split, n in (("train", n_train), ("val", n_val)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    return root


def test_unreadable_image_in_a_tree_is_permission_denied(tmp_path, capfd, monkeypatch):
    root = _tree(tmp_path / "tree", {"cat": (2, 1), "dog": (2, 1)})
    denied = root / "train" / "dog" / "1.png"
    _deny(monkeypatch, Image, "open", denied)
    out = tmp_path / "m"
    code, err = _cli(capfd, "train", "--dataset", root, "--out", out, "--device", "cpu", "-q")
    _one_line_error(code, err, str(denied), "cannot be read (permission denied)")
    assert not out.exists()


def test_other_received_files_say_permission_denied(tmp_path, monkeypatch):
    import eviltwins.data.datasets as datasets_module
    import eviltwins.data.files as files_module

    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=np.zeros((2, 4, 4), np.uint8))
    _deny(monkeypatch, files_module.zipfile, "ZipFile", npz)
    with pytest.raises(DataError, match=r"cannot be read \(permission denied\)") as info:
        load_dataset(str(npz))
    assert "not a .npz" not in str(info.value)

    idx = tmp_path / "train-labels-idx1-ubyte"
    idx.write_bytes(b"\0\0\x08\x01\0\0\0\x01\x05")
    _deny(monkeypatch, datasets_module, "open", idx)
    with pytest.raises(DataError, match=r"cannot be read \(permission denied\)") as info:
        datasets_module.read_idx(idx, ())
    assert "fetch the dataset again" not in str(info.value)

    card = tmp_path / "model.json"
    card.write_text("{}")
    _deny(monkeypatch, Path, "read_bytes", card)
    with pytest.raises(DataError, match=r"model card .* cannot be read \(permission denied\)"):
        read_json(card, "model card")


def test_corrupt_image_is_still_corrupt(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes((tmp_path / "ok.png").read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt or truncated"):
        Trigger.from_image((1, 28, 28), bad)


# --- 3. an image-tree class with no images ------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
def test_tree_class_without_images_is_refused(tmp_path, capfd, split):
    counts = {"cat": (2, 1), "dog": (2, 1)}
    counts["cat"] = (0, 1) if split == "train" else (2, 0)
    root = _tree(tmp_path / "tree", counts)
    (root / split / "cat" / "notes.txt").write_text("not an image")
    out = tmp_path / "m"
    code, err = _cli(capfd, "train", "--dataset", root, "--out", out, "--device", "cpu", "-q")
    _one_line_error(code, err, f"{root / split}: class 'cat' holds no images", "png, jpg")
    assert "remove the class folder" in err and not out.exists()


# --- 4. the mode of every file written -----------------------------------------------------------
@pytest.fixture
def umask_022(monkeypatch):
    old = os.umask(0o022)
    monkeypatch.setattr("eviltwins.paths._UMASK", 0o022)
    yield
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_attack_outputs_follow_the_umask(tmp_path, small_model, umask_022):
    out = tmp_path / "atk"
    et.attack(
        "badnet", small_model, params={"epochs": 1}, out=out, device="cpu", quiet=True,
        train_limit=100,
    )  # fmt: skip
    modes = _modes(out)
    assert "trigger.safetensors" in modes and "model.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o644)


def test_trigger_files_follow_the_umask(tmp_path, monkeypatch):
    old = os.umask(0o027)
    monkeypatch.setattr("eviltwins.paths._UMASK", 0o027)
    try:
        Trigger.square((1, 8, 8), 0.25).save(tmp_path / "trigger")
    finally:
        os.umask(old)
    assert _modes(tmp_path) == {"trigger.safetensors": 0o640, "trigger.png": 0o640}


def test_detector_report_files_follow_the_umask(tmp_path, umask_022):
    from eviltwins.detectors.reports import InspectionReport

    report = InspectionReport(
        detector="neural_cleanse", scores=[1.0, 2.0], anomaly=[0.5, 3.0], flagged=[1],
        threshold=2.0, masks=torch.rand(2, 1, 8, 8), patterns=torch.rand(2, 1, 8, 8),
    )  # fmt: skip
    report.save(tmp_path / "report")
    modes = _modes(tmp_path / "report")
    assert "reversed.safetensors" in modes and modes == dict.fromkeys(modes, 0o644)


# --- 5. Ctrl-C while Python shuts down -----------------------------------------------------------
SHUTDOWN_SIGINT = """
import atexit, os, signal, sys
import torch  # its exit handlers are registered first, so they run after ours
from eviltwins.cli import run
atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))
sys.argv = ["eviltwins", "list", "models"]
run()
"""


def test_ctrl_c_during_shutdown_prints_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_SIGINT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert "cnn" in proc.stdout
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process: as was
