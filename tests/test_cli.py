"""The command line: end-to-end runs and one-line, exit-2 user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eviltwins.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_evaluate(tmp_path, capsys):
    out_dir = tmp_path / "clean"
    code, out, _ = _run(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--train-limit",
        "400",
        "--out",
        str(out_dir),
        "--quiet",
        "--json",
        "--device",
        "cpu",
    )
    assert code == 0
    res = json.loads(out)
    assert res["card"]["dataset"] == "digits" and res["card"]["training"]["epochs"] == 2
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "model.json").is_file()
    code, out, _ = _run(capsys, "evaluate", "--model", str(out_dir), "--json")
    assert code == 0
    assert json.loads(out)["accuracy"] == pytest.approx(res["metrics"]["test_acc"])


def test_config_file_with_flag_override(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("dataset: digits\nepochs: 5\ntrain-limit: 200\nseed: 3\n")
    code, out, _ = _run(
        capsys,
        "train",
        "--config",
        str(cfg),
        "--epochs",
        "1",
        "--quiet",
        "--json",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 0
    d = json.loads(out)
    assert d["card"]["training"]["epochs"] == 1 and d["card"]["seed"] == 3
    assert d["metrics"]["n_train"] == 200


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--dataset", "mnst"], "did you mean 'mnist'"),
        (["train", "--model", "resnet19"], "did you mean 'resnet18'"),
        (["train", "--epochs", "-1"], "'epochs'"),
        (["evaluate", "--model", "/no/such/model"], "does not exist"),
        (["train", "--config", "/no/such.yaml"], "does not exist"),
        (["train", "--bogus-flag"], "No such option"),
        (["list", "attackz"], "cannot list"),
        (["train", "--dataset", "mnist", "--data-root", "/no/data"], "--download"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, needle, capsys, monkeypatch):
    monkeypatch.delenv("EVILTWINS_DATA", raising=False)
    code, out, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eviltwins: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_unreadable_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    code, _, err = _run(capsys, "train", "--config", str(bad))
    assert code == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epoch: 3\n")
    code, _, err = _run(capsys, "train", "--config", str(unknown))
    assert code == 2 and "unknown option 'epoch'" in err


def test_wrong_input_shape_for_model(digits_clean, data_root, capsys):
    _, out_dir = digits_clean
    code, _, err = _run(
        capsys,
        "evaluate",
        "--model",
        str(out_dir),
        "--dataset",
        "mnist",
        "--data-root",
        str(data_root),
    )
    assert code == 2 and "expects" in err


def test_console_script_runs_as_a_process():
    proc = subprocess.run(
        [sys.executable, "-m", "eviltwins.cli", "list", "datasets"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.split() == [
        "cifar10",
        "digits",
        "fashion-mnist",
        "gtsrb",
        "imagefolder",
        "mnist",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "eviltwins.cli", "train", "--epochs", "-3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
