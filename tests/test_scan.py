"""``eviltwins scan``: one verdict from the model inspectors, its files, and the exit codes a CI
pipeline gates on. Budgets are cut (NeuralCleanse 60 steps of 16 images, ABS 3 candidates)
so the BadNet digits model is flagged by both and the clean one by neither."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import eviltwins as et
from eviltwins.cli import main
from eviltwins.detectors import InspectionReport
from eviltwins.detectors.scan import ScanReport, inspectors
from eviltwins.errors import DataError, ParamError
from eviltwins.io import read_json
from eviltwins.report.scan import scan_page

CPU = ["--device", "cpu", "-q"]
CONFIG = (
    "neural-cleanse: {steps: 60, batch_size: 16}\n"
    "abs: {steps: 150, top_k: 3, seeds_per_class: 3, n_eval: 200}\n"
)
VERDICT = re.compile(
    r"backdoor suspected \(an inspector flags; uncalibrated\): label 0 \(NeuralCleanse index (\d+\.\d\d), ABS REASR (\d\.\d\d)\)"
)


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("eviltwins: error: ") and "\n" not in err.strip(), err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scan_config") / "scan.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def scanned(digits_badnet_folder, config, tmp_path_factory):
    """``scan --fail-on-detect`` of the BadNet model: (exit code, stdout, out folder)."""
    out = tmp_path_factory.mktemp("scan_out") / "scan"
    argv = [
        "scan",
        "--model",
        str(digits_badnet_folder),
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    code = main([*argv, "--fail-on-detect", *CPU])
    return code, out


def test_backdoored_model_is_flagged_and_fails_on_detect(scanned, capsys):
    code, out = scanned
    assert code == 3
    data = read_json(out / "scan.json")
    match = VERDICT.fullmatch(data["verdict"])
    assert match, data["verdict"]
    assert float(match[1]) > 2 and float(match[2]) >= 0.8
    assert data["flagged"] == [0] and data["is_backdoored"] is True
    assert data["reports"]["neural-cleanse"]["details"]["budget_steps"] == 60
    assert data["params"]["abs"]["top_k"] == 3  # the parameters each inspector ran with


def test_clean_model_exits_0_with_fail_on_detect(digits_clean, tmp_path, capsys):
    _, folder = digits_clean
    argv = ["scan", "--model", str(folder), "--detectors", "neural-cleanse"]
    cfg = tmp_path / "nc.yaml"
    cfg.write_text(CONFIG.splitlines()[0] + "\n")
    code = main([*argv, "--config", str(cfg), "--out", str(tmp_path / "s"), "--fail-on-detect"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == "clean (no inspector flags; uncalibrated)"
    data = read_json(tmp_path / "s" / "scan.json")
    assert list(data["reports"]) == ["neural-cleanse"] and data["flagged"] == []


def test_scan_json_round_trips(scanned):
    _, out = scanned
    data = read_json(out / "scan.json")
    report = ScanReport.from_dict(data, "scan.json")
    assert report.to_dict() == data
    assert list(report.reports) == ["neural-cleanse", "abs"]
    assert report.reports["abs"].anomaly_of(0) >= 0.8
    with pytest.raises(DataError, match="scan.json.reports"):
        ScanReport.from_dict({**data, "reports": [1]}, "scan.json")
    with pytest.raises(DataError, match="scan.json.classes"):
        ScanReport.from_dict({**data, "classes": "0123"}, "scan.json")


def test_scan_writes_a_page_and_each_inspectors_report(scanned):
    _, out = scanned
    page = (out / "scan.html").read_text()
    verdict = read_json(out / "scan.json")["verdict"]
    assert f"verdict: {verdict}" in page
    assert page.count("<h2>") == 2  # one section per inspector
    # per inspector: its anomaly chart and its reversed triggers, embedded
    assert page.count('src="data:image/png;base64,') == 4
    assert "NeuralCleanse index per label" in page and "ABS REASR per label" in page
    for name in ("neural-cleanse", "abs"):
        assert (out / name / "reversed.png").is_file()
        assert read_json(out / name / "report.json")["detector"] == name


def test_json_prints_the_report(digits_badnet_folder, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("neural-cleanse: {steps: 2}\n")
    argv = ["scan", "--model", str(digits_badnet_folder), "--detectors", "neural-cleanse", "--json"]
    code = main([*argv, "--config", str(cfg), "--out", str(tmp_path / "s"), *CPU])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    assert printed == read_json(tmp_path / "s" / "scan.json")
    assert printed["schema"] == "eviltwins.scan/1"


def test_hostile_class_names_and_paths_are_escaped(digits_clean, tmp_path):
    _, folder = digits_clean
    model = tmp_path / "<b>model"
    shutil.copytree(folder, model)
    card = read_json(model / "model.json")
    card["classes"] = ["<script>alert(1)</script>", *card["classes"][1:]]
    (model / "model.json").write_text(json.dumps(card))
    rep = et.scan(
        model,
        detectors="neural-cleanse",
        params={"neural-cleanse": {"steps": 2}},
        out=tmp_path / "s",
        device="cpu",
        quiet=True,
    )
    assert rep.classes[0] == "<script>alert(1)</script>"
    page = (tmp_path / "s" / "scan.html").read_text()
    assert "<script>" not in page and "<b>model" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;model" in page


def test_verdict_names_the_inspectors_that_flagged():
    labels = list(range(10))
    nc = InspectionReport("neural-cleanse", [9.0] * 10, [3.456] + [0.2] * 9, [0], 2.0)
    abs_ = InspectionReport(
        "abs", [0.0] * 10, [0.0] * 10, [], 0.8, details={"tested_labels": [4]}, labels=labels
    )
    rep = ScanReport("m", "digits", {"neural-cleanse": nc, "abs": abs_})
    assert rep.verdict == (
        "backdoor suspected (an inspector flags; uncalibrated): label 0 (NeuralCleanse index "
        "3.46, ABS REASR untested; "
        "flagged by NeuralCleanse only)"
    )
    both = InspectionReport("abs", [0.9] * 10, [0.91] + [0.0] * 9, [0], 0.8, labels=labels)
    two = ScanReport("m", "digits", {"neural-cleanse": nc, "abs": both})
    assert two.verdict == (
        "backdoor suspected (an inspector flags; uncalibrated): label 0 (NeuralCleanse index "
        "3.46, ABS REASR 0.91)"
    )
    calm = InspectionReport("neural-cleanse", [9.0] * 10, [0.5] * 10, [], 2.0)
    assert ScanReport("m", "d", {"neural-cleanse": calm}).verdict == (
        "clean (no inspector flags; uncalibrated)"
    )
    page = scan_page(ScanReport("m", "d", {"neural-cleanse": calm}))
    assert page.count('src="data:image/png;base64,') == 1  # no reversed triggers to show


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--detectors", "neural-cleanse,strip"], ["strip is an input filter", "--trigger"]),
        (["--detectors", "nc"], ["unknown detector 'nc'", "abs, neural-cleanse"]),
        (["--detectors", "neural-clense"], ["did you mean 'neural-cleanse'?"]),
    ],
)
def test_bad_detectors_are_one_line(argv, needles, tmp_path, capsys):
    code = main(["scan", "--model", str(tmp_path), *argv, "--out", str(tmp_path / "s")])
    _one_line_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "s").exists()


def test_bad_config_and_out_are_one_line(digits_clean, tmp_path, capsys):
    _, folder = digits_clean
    cfg = tmp_path / "c.yaml"
    cfg.write_text("neural-cleanse: {stepz: 3}\n")
    argv = ["scan", "--model", str(folder), "--config", str(cfg)]
    _one_line_error(main(argv), capsys.readouterr().err, "no parameter 'stepz'", "'steps'")
    cfg.write_text("devcie: cpu\n")
    _one_line_error(main(argv), capsys.readouterr().err, "'devcie' is neither an option")
    cfg.write_text("detectors: [abs]\nneural-cleanse: {steps: 3}\n")
    _one_line_error(main(argv), capsys.readouterr().err, "this scan does not run")
    out = ["scan", "--model", str(folder), "--out", str(folder)]
    _one_line_error(main(out), capsys.readouterr().err, "folder of the input model")


def test_api_refuses_bad_params_before_loading(tmp_path):
    with pytest.raises(ParamError, match="must map a detector name"):
        et.scan(tmp_path, params=[("abs", {})])
    with pytest.raises(ParamError, match="steps"):
        et.scan(tmp_path, params={"abs": {"steps": 0}})
    assert list(inspectors(["abs", "abs", "neural_cleanse"])) == ["abs", "neural-cleanse"]
