"""The command line: end-to-end runs and one-line, exit-2 user errors."""

from __future__ import annotations

import inspect
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


# --- attack / detect options generated from the estimators' signatures ---------------------------
def _estimators():
    from eviltwins.attacks import ATTACKS
    from eviltwins.detectors import DETECTORS

    return [
        (verb, name, reg.get(name))
        for verb, reg in (("attack", ATTACKS), ("detect", DETECTORS))
        for name in reg.names()
    ]


def _shown(value, flag):
    """How --help spells a signature default (a bool flag: the switch that gives it)."""
    if isinstance(value, bool):
        return flag[2:] if value else f"no-{flag[2:]}"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "()"
    return str(value)


def _help_lines(verb, name, capsys):
    from eviltwins.cli import cli

    cli.main(
        [verb, name, "--help"],
        prog_name="eviltwins",
        standalone_mode=False,
        terminal_width=2000,
        max_content_width=2000,
    )
    records = []  # one per option: a long option's help stands on the next line
    for line in capsys.readouterr().out.splitlines():
        if line.strip().startswith("-") or not records:
            records.append(line.strip())
        else:
            records[-1] += " " + line.strip()
    return records


@pytest.fixture()
def built(monkeypatch):
    """``api.attack`` / ``api.detect`` replaced by a stub that only builds the estimator, as
    they do, from the parameters the command passes; the estimators built are collected."""
    import eviltwins.api
    from eviltwins.attacks import ATTACKS
    from eviltwins.detectors import DETECTORS
    from eviltwins.errors import ParamError

    made = []

    def stub(registry):
        def fake(name, model, dataset=None, *, params=None, quiet=None, **_):
            made.append(registry.build(name, params, quiet))
            raise ParamError("built, not run")

        return fake

    monkeypatch.setattr(eviltwins.api, "attack", stub(ATTACKS))
    monkeypatch.setattr(eviltwins.api, "detect", stub(DETECTORS))
    return made


def _build(built, capsys, verb, name, *flags):
    argv = [verb, name, "--model", "m", *flags]
    code, _, err = _run(capsys, *(argv + (["--out", "o"] if verb == "attack" else [])))
    assert code == 2 and "built, not run" in err, err
    return built.pop()


@pytest.mark.parametrize(("verb", "name", "cls"), _estimators())
def test_every_estimator_parameter_is_an_option_with_its_default(verb, name, cls, built, capsys):
    """Every __init__ parameter is reachable from `eviltwins VERB NAME` (quiet through
    --quiet), --help shows the signature's default, no option passes the estimator's default
    through, and that default given back as a flag yields the same value."""
    sig = inspect.signature(cls.__init__)
    lines = _help_lines(verb, name, capsys)
    defaults, flags = {}, []
    for p in list(sig.parameters.values())[1:]:
        defaults[p.name] = p.default
        flag = "--" + p.name.replace("_", "-")
        first = "-q," if p.name == "quiet" else flag  # the estimator's quiet is --quiet
        line = next((ln.strip() for ln in lines if ln.strip().split(" ")[0] == first), None)
        assert line is not None, f"{verb} {name}: no option for {p.name!r}"
        if p.name == "quiet":
            continue
        shown = _shown(p.default, flag)
        assert line.endswith(f"[default: {shown}]"), line
        if isinstance(p.default, bool):
            flags.append(flag if p.default else f"--no-{flag[2:]}")
        elif p.default is not None and shown != "()":
            flags += [flag, shown]
    assert _build(built, capsys, verb, name).get_params() == defaults
    assert _build(built, capsys, verb, name, *flags).get_params() == defaults


def test_generated_options_parse_lists_and_keep_words(built, capsys):
    est = _build(built, capsys, "detect", "neural-cleanse", "--labels", "1,2", "--steps", "3")
    assert est.labels == (1, 2) and est.steps == 3
    assert _build(built, capsys, "detect", "neural-cleanse", "--labels", "all").labels == "all"
    est = _build(built, capsys, "attack", "trojannn", "--position", "3,4", "--no-footprint")
    assert est.position == "3,4" and est.footprint is False
    est = _build(
        built, capsys, "attack", "imc", "--evade", "neural-cleanse,strip", "--mode", "size", "-q"
    )
    assert est.evade == "neural-cleanse,strip" and est.quiet is True
    assert _build(built, capsys, "detect", "strip", "--threshold", "fixed").threshold == "fixed"
    assert _build(built, capsys, "detect", "abs", "--threshold", "0.5").threshold == 0.5


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["attack", "badnet", "--outer-iters", "3"], ["--outer-iters", "--poison-rate"]),
        (["detect", "neural-cleanse", "--n-clean", "5"], ["--n-clean", "--preset"]),
        (["detect", "abs", "--variant", "imc"], ["--variant", "--top-k"]),
        (["attack", "IMC", "--model", "m", "--out", "o", "--mode", "bogus"], ["'mode'"]),
        (["detect", "zzzz", "--model", "m"], ["unknown detector 'zzzz'"]),
    ],
)
def test_an_option_the_estimator_does_not_take_is_one_line(argv, needles, capsys):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(n in err for n in needles), err
