"""TABOR, SCALE-UP and Blended end to end from the command line, as a user runs them: found by
name in their registries, with options generated from their classes, in ``scan`` and in
IMC's ``--evade`` / ``--init``."""

from __future__ import annotations

import json

from eviltwins.cli import main

CPU = ["--device", "cpu", "-q"]
IMC_FAST = [
    "--outer-iters",
    "1",
    "--retrain-steps",
    "3",
    "--trigger-steps",
    "2",
    "--init-trigger-steps",
    "2",
    "--monitor-size",
    "50",
]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_scan_with_tabor_flags_the_badnet_target(digits_badnet_folder, tmp_path, capsys):
    config = tmp_path / "scan.yaml"
    # the budget the TABOR tests use for a verdict on digits
    config.write_text(
        "tabor: {steps: 100, n_inputs: 96, batch_size: 16, check_every: 5, patience: 2}\n"
    )
    argv = [
        "scan",
        "--model",
        str(digits_badnet_folder),
        "--detectors",
        "tabor",
        "--config",
        str(config),
    ]
    code = main([*argv, "--fail-on-detect", *CPU])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "backdoor suspected (an inspector flags; uncalibrated): label 0 (TABOR index" in out


def test_detect_scale_up_on_the_badnet_model(digits_badnet_folder, capsys):
    code = main(["detect", "scale-up", "--model", str(digits_badnet_folder), "--json", *CPU])
    assert code == 0
    rep = _json(capsys)
    assert rep["detector"] == "scale-up" and rep["protocol"] == "effective"
    assert rep["details"]["params"]["scales"] == [3, 5, 7, 9, 11]
    assert rep["metrics"]["auc"] > 0.55  # stamped inputs keep their label more than clean ones


def test_blended_attack_and_blended_start_of_imc(digits_clean, tmp_path, capsys):
    _, model_dir = digits_clean
    code = main(
        ["attack", "blended", "--model", str(model_dir), "--max-steps", "3"]
        + ["--out", str(tmp_path / "blended"), "--json", *CPU]
    )
    assert code == 0
    res = _json(capsys)
    assert res["attack"] == "blended" and "size" not in res["params"]
    assert (tmp_path / "blended" / "trigger.png").is_file()
    code = main(
        ["attack", "imc", "--init", "blended", "--model", str(model_dir), "--transparency", "0.8"]
        + ["--out", str(tmp_path / "imc"), "--json", *IMC_FAST, *CPU]
    )
    assert code == 0
    res = _json(capsys)
    assert res["extra"]["init"] == "blended"
    assert res["extra"]["init_trigger"]["pattern"] == "noise"


def test_evade_takes_the_new_terms_with_weights(digits_clean, tmp_path, capsys):
    _, model_dir = digits_clean
    code = main(
        ["attack", "imc", "--model", str(model_dir), "--mode", "opacity"]
        + ["--evade", "tabor=0.5,scale-up", "--out", str(tmp_path / "imc"), "--json"]
        + IMC_FAST
        + CPU
    )
    assert code == 0
    res = _json(capsys)
    assert res["extra"]["evasion_weights"] == {"tabor": 0.5, "scale-up": 0.6}
    assert {"tabor_loss", "scale-up_loss"} <= set(res["history"][-1])
    argv = ["attack", "imc", "--model", str(model_dir), "--evade", "tabor"]
    code = main([*argv, "--out", str(tmp_path / "fixed"), *CPU])
    err = capsys.readouterr().err
    assert code == 2 and "mode 'opacity' or 'size'" in err and "\n" not in err.strip()
