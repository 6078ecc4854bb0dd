"""Output paths against everything a command reads: every command that writes resolves its output
folder fully (``..`` through a folder not yet created, symlinks) before any check or write, and
refuses a folder that is, contains or lies inside what it reads (the input model, a dataset, a
trigger image, a config, a sweep's spec and cells), with one line, before any work, leaving the
inputs' bytes as they were and no folder behind.

Before the fix, ``attack badnet --model base --out o_x/../base`` (``o_x`` missing) replaced the
clean model in ``base/`` and left an empty ``o_x/``, and ``scan --model bad --out bad/scan`` wrote
inside the model's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

import eviltwins as et
from eviltwins.cli import main

CPU = ["--device", "cpu", "-q"]
#: Two spellings of a folder F that reach it only once a missing folder is created, and a link.
SPELLINGS = ("o_x/../{}", "o_x/o_y/../../{}", "lnk_{}")


@pytest.fixture
def here(tmp_path, monkeypatch, small_model) -> Path:
    """A working folder holding ``base/`` (a copy of the clean model) and ``lnk_base`` (a
    symlink to it); relative paths below are read from here."""
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base"
    base.mkdir()
    for f in small_model.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    os.symlink("base", tmp_path / "lnk_base")
    return tmp_path


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work fails the test: a refusal must come before it."""
    import eviltwins.api.models as models
    import eviltwins.detectors as detectors
    import eviltwins.experiments.reporting as reporting
    import eviltwins.experiments.runner as runner
    import eviltwins.io as io
    from eviltwins.attacks.badnet import BadNet

    def ran(*a, **k):
        pytest.fail("the command did work before refusing its --out")

    monkeypatch.setattr(BadNet, "fit", ran)
    monkeypatch.setattr(detectors, "run_detector", ran)
    monkeypatch.setattr("eviltwins.detectors.scan.run_scan", ran)
    monkeypatch.setattr(models, "train_clean", ran)
    monkeypatch.setattr(io, "import_model", ran)
    monkeypatch.setattr(runner, "_run_locked", ran)
    monkeypatch.setattr(reporting, "build_report", ran)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _refused(capsys, argv: list[str], *needles: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert err.startswith("eviltwins: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (argv, err)
    return err


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's real digits as uint8 grey 28x28 images (upscaled from 8x8), and labels."""
    d = load_digits()
    small = (d.images[:150] * 16).clip(0, 255).astype(np.uint8)
    x = np.stack([np.asarray(Image.fromarray(a).resize((28, 28), Image.BILINEAR)) for a in small])
    return x, d.target[:150].astype(np.int64)


def _npz(path: Path) -> Path:
    x, y = _digits_images()
    np.savez(path, x_train=x[:60], y_train=y[:60], x_test=x[60:90], y_test=y[60:90])
    return path


def _tree(root: Path) -> Path:
    """A class-per-folder PNG tree of real digits (classes 0-2)."""
    x, y = _digits_images()
    for split, part in (("train", slice(0, 90)), ("val", slice(90, 150))):
        for i, (img, label) in enumerate(zip(x[part], y[part], strict=True)):
            if label < 3:
                folder = root / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def _model_cases(here: Path) -> list[tuple[str, str]]:
    """(out, what the refusal says) for output folders reaching ``base/`` (the input model)."""
    cases = [(s.format("base"), "is the folder of the input model") for s in SPELLINGS]
    cases += [
        ("base/scan", "lies inside the folder of the input model"),
        ("o_x/../base/sub", "lies inside the folder of the input model"),
        ("lnk_base/sub", "lies inside the folder of the input model"),
        (".", "contains the folder of the input model"),
        ("o_x/..", "contains the folder of the input model"),
    ]
    return cases


# --- the input model: attack, detect, scan -------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["attack", "badnet"],
        ["attack", "badnet", "--overwrite"],
        ["detect", "neural-cleanse"],
        ["detect", "strip"],
        ["scan"],
        ["scan", "--overwrite"],
    ],
)
def test_no_spelling_of_the_model_folder_is_an_output(here, no_work, capsys, command):
    before = _snapshot(here / "base")
    for out, needle in _model_cases(here):
        _refused(capsys, [*command, "--model", "base", "--out", out, *CPU], needle)
        assert not (here / "o_x").exists(), out
    assert _snapshot(here / "base") == before
    assert sorted(p.name for p in here.iterdir()) == ["base", "lnk_base"]


def test_a_bare_weights_file_keeps_its_folder_apart(here, no_work, capsys):
    """``--model base/model.safetensors --arch cnn``: its folder, and any above it."""
    weights = ["--model", "base/model.safetensors", "--arch", "cnn", "--dataset", "digits"]
    before = _snapshot(here / "base")
    for command in (["attack", "badnet"], ["detect", "abs"], ["scan"]):
        _refused(capsys, [*command, *weights, "--out", "o_x/../base", *CPU], "is the folder of")
        _refused(capsys, [*command, *weights, "--out", "o_x/..", *CPU], "contains the input model")
    _refused(
        capsys,
        ["attack", "badnet", *weights, "--out", "base/model.safetensors", *CPU],
        "is the input model",
    )
    assert _snapshot(here / "base") == before and not (here / "o_x").exists()


def test_import_model_never_writes_beside_its_weights(here, no_work, capsys):
    argv = ["import-model", "--arch", "cnn", "--weights", "base/model.safetensors"]
    argv += ["--dataset", "digits"]
    before = _snapshot(here / "base")
    for out in ("o_x/../base", "lnk_base", "o_x/.."):
        _refused(capsys, [*argv, "--out", out, "--overwrite", *CPU], "the weights file")
    assert _snapshot(here / "base") == before and not (here / "o_x").exists()


def test_trigger_and_mask_images_keep_their_folders(here, no_work, capsys):
    """A pattern trigger and its mask are inputs too: ``--overwrite`` into their folder could
    otherwise delete a trigger.safetensors the detector was about to read."""
    pats = here / "pats"
    pats.mkdir()
    x, _ = _digits_images()
    Image.fromarray(x[0]).save(pats / "pattern.png")
    Image.fromarray(x[1]).save(pats / "mask.png")
    base = ["detect", "strip", "--model", "base", "--trigger", "pats/pattern.png"]
    for out in ("o_x/../pats", "o_x/o_y/../../pats"):
        _refused(capsys, [*base, "--out", out, *CPU], "is the folder of the trigger")
    masked = [*base[:-1], "o_z/../pats/pattern.png", "--trigger-mask", "pats/mask.png"]
    _refused(capsys, [*masked, "--out", "o_x/../pats", *CPU], "is the folder of the trigger")
    assert sorted(p.name for p in pats.iterdir()) == ["mask.png", "pattern.png"]
    assert not (here / "o_x").exists() and not (here / "o_z").exists()


# --- datasets and configs: train, and the card's dataset ------------------------------------------
def test_train_never_writes_into_its_dataset_or_beside_its_config(here, no_work, capsys):
    data = here / "data"
    data.mkdir()
    _npz(data / "d.npz")
    _tree(here / "tree")
    (here / "cfgs").mkdir()
    (here / "cfgs" / "train.yaml").write_text("epochs: 1\n")
    before = {d: _snapshot(here / d) for d in ("data", "tree", "cfgs")}
    train = ["train", "--epochs", "1"]
    cases = [
        (["--dataset", "data/d.npz"], "o_x/../data", "is the folder of the dataset"),
        (["--dataset", "data/d.npz"], "o_x/..", "contains the dataset"),
        (["--dataset", "tree"], "o_x/../tree/train/3", "lies inside the folder of the dataset"),
        (["--dataset", "tree"], "tree", "is the folder of the dataset"),
        (["--dataset", "o_y/../tree"], "o_x/..", "contains the folder of the dataset"),
        (["--config", "cfgs/train.yaml", "--dataset", "digits"], "o_x/../cfgs", "config file"),
    ]
    for flags, out, needle in cases:
        _refused(capsys, [*train, *flags, "--out", out, *CPU], needle)
    assert {d: _snapshot(here / d) for d in before} == before
    assert not (here / "o_x").exists() and not (here / "o_y").exists()


def test_a_registered_dataset_folder_under_the_data_root_is_kept_apart(here, no_work, capsys):
    raw = here / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    argv = ["train", "--dataset", "mnist", "--data-root", "root", "--epochs", "1"]
    _refused(capsys, [*argv, "--out", "o_x/../root/MNIST/raw/run", *CPU], "the dataset")
    assert list(raw.iterdir()) == [] and not (here / "o_x").exists()


def test_a_dataset_named_by_the_model_card_is_checked_before_any_work(here, request, capsys):
    """A received card may name a dataset path: the output is kept apart from it too."""
    tree = _tree(here / "tree")
    et.train(str(tree), "cnn", epochs=1, device="cpu", out=here / "treemodel", quiet=True)
    request.getfixturevalue("no_work")
    before = _snapshot(tree)
    for command in (["attack", "badnet"], ["detect", "neural-cleanse"], ["scan"]):
        argv = [*command, "--model", "treemodel", "--out", "o_x/../tree/train/new", *CPU]
        _refused(capsys, argv, "lies inside the folder of the dataset")
    assert _snapshot(tree) == before and not (here / "o_x").exists()
    assert sorted(p.name for p in (tree / "train").iterdir()) == ["0", "1", "2"]


# --- sweeps, reports and the demo -----------------------------------------------------------------
ONE = {
    "name": "one",
    "datasets": ["digits"],
    "train_limit": 200,
    "test_limit": 100,
    "clean": {"epochs": 1},
    "attacks": [{"name": "badnet", "params": {"epochs": 1}}],
    "sizes": [0.2],
    "transparencies": [0.0],
    "detectors": [{"name": "strip"}],
    "n_clean": 30,
}


def test_sweep_never_runs_in_its_spec_or_dataset_folders(here, no_work, capsys):
    (here / "specs").mkdir()
    spec = here / "specs" / "one.yaml"
    spec.write_text(yaml.safe_dump(ONE))
    tree = _tree(here / "tree")
    on_tree = here / "specs" / "tree.yaml"
    on_tree.write_text(yaml.safe_dump({**ONE, "datasets": [str(tree)]}))
    before = {d: _snapshot(here / d) for d in ("specs", "tree")}
    for extra in ([], ["--check"]):
        for out in ("o_x/../specs", "o_x/.."):
            _refused(capsys, ["sweep", spec, "--out", out, *extra], "the sweep spec")
        _refused(
            capsys,
            ["sweep", on_tree, "--out", "o_x/../tree/train/run", *extra],
            "lies inside the folder of the dataset",
        )
    assert {d: _snapshot(here / d) for d in before} == before
    assert not (here / "o_x").exists()


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """A finished one-cell sweep (BadNet and STRIP on digits, a few seconds), written through a
    path that reaches its folder only through a missing one."""
    root = tmp_path_factory.mktemp("one_run")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        summary = et.sweep(ONE, "o_x/../run", threads=1, quiet=True)
    finally:
        os.chdir(cwd)
    assert not (root / "o_x").exists() and (root / "run" / "sweep.json").is_file()
    assert summary.out == "run" and len(summary.ran) == 1
    return root / "run"


def test_report_stays_out_of_the_run_it_reads(one_run, here, no_work, capsys):
    os.symlink(one_run, here / "run")
    before = _snapshot(one_run)
    cases = [
        ("o_x/../run", "is the folder of the sweep spec"),
        ("run/cells", "is the folder of the sweep's cells"),
        ("o_x/../run/cells/x", "lies inside the folder of the sweep's cells"),
        ("run/clean", "the sweep's clean models"),
        (str(one_run.parent), "contains the sweep spec"),
        ("base", "holds a model folder"),
    ]
    for out, needle in cases:
        _refused(capsys, ["report", "run", "--out", out], needle)
    assert _snapshot(one_run) == before and not (here / "o_x").exists()
    assert sorted(p.name for p in (here / "base").iterdir()) == ["model.json", "model.safetensors"]


def test_report_writes_through_a_missing_folder_to_where_the_path_leads(one_run, here, capsys):
    assert main(["report", str(one_run), "--out", "o_x/../rep"]) == 0
    assert "report rep:" in capsys.readouterr().out
    assert (here / "rep" / "report.md").is_file() and not (here / "o_x").exists()
    assert main(["report", str(one_run)]) == 0  # its own report/ folder, again
    assert (one_run / "report" / "report.html").is_file()


def test_demo_resolves_its_out_before_checking_it(here, no_work, monkeypatch, capsys):
    import eviltwins.experiments.demo as demo

    monkeypatch.setattr(demo, "demo_spec", lambda **kw: ONE)
    before = _snapshot(here / "base")
    for spelling in SPELLINGS:
        _refused(capsys, ["demo", "--out", spelling.format("base"), "-q"], "not a sweep run folder")
    assert _snapshot(here / "base") == before and not (here / "o_x").exists()


# --- a path through a missing folder lands where it leads, and leaves nothing behind ------------
def test_every_writer_lands_where_the_path_leads(here, capsys):
    """The same spelling that is refused when it reaches an input writes to the folder it
    names otherwise, without creating the missing folder on the way."""

    def ok(*argv: str) -> None:
        code = main([*argv, *CPU])
        assert code == 0, capsys.readouterr().err
        capsys.readouterr()

    ok("train", "--dataset", "digits", "--epochs", "1", "--train-limit", "60", "--out", "o_x/../m")
    ok(
        "attack",
        "badnet",
        "--model",
        "m",
        "--epochs",
        "1",
        "--train-limit",
        "60",
        "--out",
        "o_x/../a",
    )
    ok("detect", "neural-cleanse", "--model", "a", "--steps", "2", "--out", "o_x/o_y/../../nc")
    ok("detect", "strip", "--model", "a", "--n-clean", "20", "--out", "lnk_base/../st")
    cfg = here / "scan.yaml"
    cfg.write_text("detectors: [neural-cleanse]\nneural-cleanse: {steps: 2}\n")
    ok("scan", "--model", "a", "--config", str(cfg), "--out", "o_x/../sc")
    weights = ["--weights", "m/model.safetensors", "--dataset", "digits"]
    ok("import-model", "--arch", "cnn", *weights, "--out", "o_x/../imp")
    assert not (here / "o_x").exists()
    assert (here / "m" / "model.json").is_file() and (here / "a" / "trigger.safetensors").is_file()
    assert (here / "nc" / "report.json").is_file() and (here / "st" / "report.json").is_file()
    assert (here / "sc" / "scan.json").is_file() and (here / "sc" / "neural-cleanse").is_dir()
    assert (here / "imp" / "model.json").is_file()
