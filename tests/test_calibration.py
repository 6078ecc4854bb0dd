"""A scan's calibrated p(trojan): the logistic model on the inspectors' largest statistics, its
out-of-fold scores, its JSON file (read as a stranger's), ``eviltwins calibrate`` on sweep
folders and ``eviltwins scan --calibration``. Synthetic populations are seeded numpy draws;
the sweeps are cell files written in the store's on-disk format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from eviltwins.cli import main
from eviltwins.detectors import InspectionReport
from eviltwins.detectors.calibration import (
    Calibration,
    fit_calibration,
    load_calibration,
    model_statistic,
    out_of_fold_p,
    parse_calibration,
)
from eviltwins.detectors.calibration_choice import (
    matching_calibration,
    scan_calibration,
    shipped_calibrations,
)
from eviltwins.detectors.scan import ScanReport, inspectors
from eviltwins.errors import DataError, ParamError
from eviltwins.experiments.store import read_cell
from eviltwins.io import read_json
from eviltwins.report.scan import scan_page

DETS = ["neural-cleanse", "abs"]
PARAMS = {"neural-cleanse": {"steps": 200}, "abs": {}}
CPU = ["--device", "cpu", "-q"]


def _population(n_clean: int, n_bad: int, overlap: float = 0.0, seed: int = 0):
    """(stats rows, truth): NeuralCleanse-like indices and ABS-like REASRs; ``overlap`` in
    [0, 1] moves the backdoored models' statistics towards the clean ones'."""
    rng = np.random.default_rng(seed)
    nc = np.r_[rng.normal(1.3, 0.4, n_clean), rng.normal(4.5 - 3 * overlap, 1.0, n_bad)]
    reasr = np.r_[rng.uniform(0.3, 0.65, n_clean), rng.uniform(0.75 - 0.4 * overlap, 1.0, n_bad)]
    return np.c_[nc, reasr], np.r_[np.zeros(n_clean, bool), np.ones(n_bad, bool)]


def _fit(x, y, **kw) -> Calibration:
    return fit_calibration(x, y, DETS, (1, 32, 32), PARAMS, **kw)


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("eviltwins: error: ") and "\n" not in err.strip(), err
    for needle in needles:
        assert needle in err, err


# --- the statistic ---------------------------------------------------------------------------
def test_the_statistic_is_the_largest_anomaly_and_0_without_a_candidate():
    nc = InspectionReport("neural-cleanse", [9.0] * 3, [0.5, 3.2, 1.0], [1], 2.0)
    assert model_statistic(nc) == pytest.approx(3.2)
    assert model_statistic(nc.to_dict()) == pytest.approx(3.2)  # as a sweep cell stores it
    none = InspectionReport("abs", [0.0] * 3, [0.0] * 3, [], 0.8, details={"no_candidate": True})
    assert model_statistic(none) == 0.0 and model_statistic(none.to_dict()) == 0.0
    assert math.isnan(model_statistic({"details": {}}))  # nothing measured


# --- fitting ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overlap", [0.0, 0.8])
def test_coefficients_are_positive_and_p_rises_with_each_statistic(overlap):
    x, y = _population(12, 30, overlap)
    cal = _fit(x, y)
    assert all(c > 0 for c in cal.coef)
    assert (cal.n_models, cal.n_trojaned) == (42, 30)
    base = {"neural-cleanse": 2.0, "abs": 0.6}
    for name, step in (("neural-cleanse", 0.5), ("abs", 0.05)):
        ps = [cal.p_trojan({**base, name: base[name] + k * step}) for k in range(6)]
        assert all(a < b for a, b in zip(ps, ps[1:], strict=False)), ps
    aucs = cal.cv["auc"]
    assert (aucs > 0.95) if overlap == 0 else (0.5 < aucs < 1.0)


def test_a_statistic_that_falls_with_backdoors_gets_a_negative_coefficient():
    x, y = _population(15, 15)
    cal = _fit(np.c_[x[:, 0], -x[:, 1]], y)
    assert cal.coef[0] > 0 > cal.coef[1]


def test_stored_model_is_plain_logistic_on_raw_statistics():
    x, y = _population(10, 20, 0.5)
    cal = _fit(x, y)
    s = {"neural-cleanse": 3.0, "abs": 0.7}
    z = cal.intercept + cal.coef[0] * 3.0 + cal.coef[1] * 0.7
    assert cal.p_trojan(s) == pytest.approx(1 / (1 + math.exp(-z)))
    assert cal.p_trojan({"neural-cleanse": math.inf, "abs": 1.0}) == pytest.approx(1.0)


def test_out_of_fold_scores_match_sklearn_on_the_same_predictions():
    x, y = _population(10, 25, 0.7, seed=3)
    cal = _fit(x, y, folds=4, seed=7)
    p = out_of_fold_p(x, y, folds=4, seed=7)
    assert cal.cv["auc"] == pytest.approx(roc_auc_score(y, p))
    assert cal.cv["cross_entropy"] == pytest.approx(log_loss(y, p))
    assert cal.cv["brier"] == pytest.approx(float(np.mean((p - y) ** 2)))
    assert cal.cv["folds"] == 4
    assert np.array_equal(p, out_of_fold_p(x, y, folds=4, seed=7))  # seeded


def test_folds_are_lowered_to_the_smaller_class_and_too_few_models_refused():
    x, y = _population(3, 10)
    assert _fit(x, y, folds=5).cv["folds"] == 3
    x, y = _population(1, 10)
    with pytest.raises(ParamError, match="at least 2 clean and 2 backdoored"):
        _fit(x, y)
    with pytest.raises(ParamError, match="folds"):
        _fit(*_population(5, 5), folds=1)
    with pytest.raises(ParamError, match="statistic for every detector"):
        _fit(np.c_[[1.0, math.nan, 2, 3], [0.1, 0.2, 0.3, 0.4]], [0, 0, 1, 1])


# --- the file --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cal_dict() -> dict:
    return _fit(*_population(10, 20, 0.3), source="synthetic").to_dict()


def test_json_round_trip(cal_dict, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cal_dict))
    cal = load_calibration(path)
    assert cal.to_dict() == cal_dict
    assert cal == Calibration.from_dict(json.loads(json.dumps(cal_dict)))
    assert cal.params["neural-cleanse"]["steps"] == 200 and cal.source == "synthetic"


BAD = [
    ("coef", ["1", "2"], "coef"),
    ("coef", [1.0], "coef"),
    ("intercept", 1e300, "intercept"),
    ("detectors", ["neural-cleanse"] * 10_000, "detectors"),
    ("detectors", ["__import__('os').system('x')", "abs"], "detectors"),
    ("input_shape", [1, 32], "input_shape"),
    ("input_shape", [1, 10**9, 10**9], "input_shape"),
    ("n_trojaned", 1, "n_trojaned"),
    ("params", {"neural-cleanse": {"steps": {"deep": 1}}, "abs": {}}, "params.neural-cleanse"),
    ("params", {"neural-cleanse": {"x": list(range(5000))}, "abs": {}}, "params.neural-cleanse"),
    ("cv", {"auc": 2.0, "folds": 5}, "cv.auc"),
    ("cv", {"auc": 0.9}, "cv"),
    ("source", "line\nline", "source"),
    ("schema", "eviltwins.calibration/9", "schema"),
    ("exec", "__import__('os').system('rm -rf /')", "unknown field 'exec'"),
]


@pytest.mark.parametrize(("key", "value", "needle"), BAD)
def test_malformed_fields_are_one_line(cal_dict, key, value, needle):
    with pytest.raises(DataError, match="is not a usable calibration") as err:
        parse_calibration(json.dumps({**cal_dict, key: value}).encode(), "c.json")
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"coef": [NaN]}', "not valid JSON"),
        (b'{"coef": [Infinity]}', "not valid JSON"),
        (b"[" * 600_000 + b"]" * 600_000, "over"),
        (b"[" * 50_000 + b"]" * 50_000, "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b"", "not valid JSON"),
    ],
)
def test_broken_files_are_one_line(raw, needle):
    with pytest.raises(DataError, match=needle) as err:
        parse_calibration(raw, "c.json")
    assert "\n" not in str(err.value)


def test_a_bad_calibration_file_stops_scan_in_one_line(cal_dict, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cal_dict, "coef": [None, 1]}))
    argv = ["scan", "--model", str(tmp_path / "m"), "--calibration", str(bad)]
    _one_line_error(main(argv), capsys.readouterr().err, "not a usable calibration", "coef")
    argv[-1] = str(tmp_path / "missing.json")
    _one_line_error(main(argv), capsys.readouterr().err, "missing.json")


# --- which calibration applies ----------------------------------------------------------------
def _resolved(params=None) -> dict:
    faithful = {"schedule": "full", "precision": "fp32"}  # the class defaults, not scan's
    own = {"abs": {"seed_batch": None}}
    params = {d: {**faithful, **own.get(d, {}), **(params or {}).get(d, {})} for d in DETS}
    dets = inspectors(DETS, params)
    return {
        n: {k: v for k, v in d.resolved_params().items() if k != "quiet"} for n, d in dets.items()
    }


def test_the_shipped_digits_calibration_needs_its_own_settings():
    shipped = shipped_calibrations()
    assert shipped, "no calibration shipped"
    digits = next(c for c in shipped if c.input_shape == (1, 32, 32))
    assert digits.detectors == ("neural-cleanse", "abs") and digits.cv["auc"] > 0.9
    cal, why = matching_calibration((1, 32, 32), DETS, _resolved())  # the default budget
    assert cal is None and "with these settings" in why and "steps 200, not None" in why
    cal, _ = matching_calibration((1, 32, 32), DETS, _resolved({"neural-cleanse": {"steps": 200}}))
    assert cal == digits
    # settings that leave the statistic unchanged do not matter
    neutral = {"neural-cleanse": {"steps": 200, "pass_images": 16}, "abs": {"threshold": 0.5}}
    assert matching_calibration((1, 32, 32), DETS, _resolved(neutral))[0] == digits
    cal, why = matching_calibration((3, 32, 32), DETS, _resolved())
    assert cal is None and why == "no calibration for neural-cleanse, abs on 3x32x32 inputs"
    assert scan_calibration("none", DETS, {}, (1, 32, 32))[1]["reason"].startswith("calibration")


# --- the verdict -----------------------------------------------------------------------------
def _scan(nc_flags, abs_flags, p, nc_top=4.1, abs_top=0.92) -> ScanReport:
    labels = list(range(10))
    nc_anomaly = [0.3] * 10
    nc_anomaly[3] = nc_top
    abs_anomaly = [0.1] * 10
    abs_anomaly[8] = abs_top
    nc = InspectionReport("neural-cleanse", [9.0] * 10, nc_anomaly, nc_flags, 2.0, labels=labels)
    abs_ = InspectionReport("abs", [0.0] * 10, abs_anomaly, abs_flags, 0.8, labels=labels)
    about = {"detectors": DETS, "coef": [0.5, 10.0], "intercept": -9.0, "cv": {"auc": 0.99}}
    return ScanReport(
        "m", "digits", {"neural-cleanse": nc, "abs": abs_}, p_trojan=p, calibration=about
    )


def test_calibrated_verdicts_state_p_and_each_inspectors_flags():
    both = _scan([3], [3], 0.97)
    assert both.verdict == (
        "backdoor suspected (p(trojan) 0.97, calibrated): label 3 (NeuralCleanse index 4.10, "
        "ABS REASR 0.10)"
    )
    assert both.is_backdoored and both.rule == "p(trojan) >= 0.5 (calibrated)"
    # p >= 0.5, nothing flagged: ABS adds most (10 x 0.7 > 0.5 x 1.5): its top label
    quiet = _scan([], [], 0.71, nc_top=1.5, abs_top=0.7)
    assert quiet.verdict == (
        "backdoor suspected (p(trojan) 0.71, calibrated): label 8 (NeuralCleanse index 0.30, "
        "ABS REASR 0.70; flagged by no inspector)"
    )
    alone = _scan([], [8], 0.12)
    assert alone.verdict == "clean (p(trojan) 0.12, calibrated; flagged by ABS alone: label 8)"
    assert not alone.is_backdoored and alone.flagged == [8]
    assert _scan([], [], 0.04).verdict == "clean (p(trojan) 0.04, calibrated)"
    two = _scan([3], [3, 8], 0.3)
    assert two.verdict.endswith("flagged by NeuralCleanse and ABS: label 3; by ABS alone: label 8)")
    union = _scan([3], [], None)  # no calibration: today's rule
    assert union.verdict.startswith(
        "backdoor suspected (an inspector flags; uncalibrated): label 3"
    )
    assert union.is_backdoored


def test_scan_json_round_trips_and_old_files_still_read():
    rep = _scan([], [8], 0.12)
    data = json.loads(json.dumps(rep.to_dict()))
    assert data["p_trojan"] == 0.12 and data["calibration"]["coef"] == [0.5, 10.0]
    assert ScanReport.from_dict(data).to_dict() == data
    old = {k: v for k, v in data.items() if k not in ("p_trojan", "calibration", "rule")}
    back = ScanReport.from_dict(old)
    assert (
        back.p_trojan is None
        and back.verdict
        == "backdoor suspected (an inspector flags; uncalibrated): label 8 (NeuralCleanse index "
        "0.30, ABS REASR 0.92; flagged by ABS only)"
    )
    with pytest.raises(DataError, match="p_trojan"):
        ScanReport.from_dict({**data, "p_trojan": 3})
    with pytest.raises(DataError, match="calibration"):
        ScanReport.from_dict({**data, "calibration": {"detectors": "abs"}})


def test_the_page_says_what_p_means_or_why_there_is_none():
    page = scan_page(_scan([], [8], 0.12))
    assert "p(trojan) = 0.120" in page and "out of fold" in page and "logistic" in page
    none = ScanReport("m", "d", _scan([], [], None).reports, calibration={"reason": "no <b>x"})
    page = scan_page(none)
    assert "No p(trojan): no &lt;b&gt;x." in page and "any inspector flags" in page


# --- eviltwins calibrate on sweep folders ----------------------------------------------------
def _cell(attack: str, seed: int, nc: float, reasr: float, nc_params=None, model="cnn") -> dict:
    def det(name, top, params):
        return {
            "kind": "inspection",
            "max_anomaly": top,
            "flagged": [],
            "details": {"params": {**params, "quiet": True}, "no_candidate": False},
        }

    return {
        "schema": "eviltwins.cell/1",
        "status": "ok",
        "cell": {
            "dataset": "digits",
            "model": model,
            "attack": attack,
            "label": {"none": "clean"}.get(attack, attack.upper()),
            "seed": seed,
            "detectors": [
                {"name": "neural-cleanse", "label": "NC", "params": {"steps": 200}},
                {"name": "abs", "label": "ABS", "params": {}},
                {"name": "strip", "label": "STRIP", "params": {}},
            ],
        },
        "target": 0,
        "attack": {"metrics": {"asr": 1.0}},
        "detectors": {
            "NC": det("neural-cleanse", nc, nc_params or {"steps": 200, "seed": 0}),
            "ABS": det("abs", reasr, {"steps": 200, "seed": 0}),
            "STRIP": {"skipped": "input filters need a trigger; clean-model cell"},
        },
    }


def _sweep(root: Path, shapes=None, **cell_kw) -> Path:
    (root / "cells").mkdir(parents=True)
    x, y = _population(6, 12, 0.4)
    for i, ((nc, reasr), bad) in enumerate(zip(x, y, strict=True)):
        data = _cell("badnet" if bad else "none", i, float(nc), float(reasr), **cell_kw)
        (root / "cells" / f"c{i:02d}.json").write_text(json.dumps(data))
    failed = {"schema": "eviltwins.cell/1", "status": "error", "error": "boom"}
    failed["cell"] = _cell("badnet", 99, 1.0, 1.0)["cell"]
    (root / "cells" / "failed.json").write_text(json.dumps(failed))
    for model, shape in (shapes or {"cnn": [1, 32, 32]}).items():
        card = {"architecture": model, "dataset": "digits", "input_shape": shape}
        (root / "clean" / f"digits__{model}").mkdir(parents=True)
        (root / "clean" / f"digits__{model}" / "model.json").write_text(json.dumps(card))
    (root / "sweep.json").write_text(json.dumps({"name": "tiny"}))
    return root


def test_calibrate_fits_a_sweep_and_writes_the_file(tmp_path, capsys):
    run = _sweep(tmp_path / "run")
    assert read_cell(run / "cells" / "c00.json").ok  # the store reads the files as written
    out = tmp_path / "cal.json"
    code = main(["calibrate", str(run), "--out", str(out), "--folds", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = captured.out.strip()
    assert "\n" not in line and "out-of-fold AUC" in line and "cross-entropy" in line
    assert "skipped 1 failed cells" in line
    cal = load_calibration(out)
    assert (cal.n_models, cal.n_trojaned, cal.input_shape) == (18, 12, (1, 32, 32))
    assert cal.detectors == ("neural-cleanse", "abs") and cal.cv["folds"] == 3
    assert cal.params["abs"]["steps"] == 200 and "quiet" not in cal.params["abs"]
    assert cal.source.startswith("sweep tiny: 18 models on digits (cnn), 6 clean, 12 backdoored")
    _one_line_error(
        main(["calibrate", str(run), "--out", str(out)]), capsys.readouterr().err, "--overwrite"
    )
    assert main(["calibrate", str(run), "--out", str(out), "--overwrite", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["skipped"] == {"failed cells": 1} and printed["n_models"] == 18
    other = tmp_path / "notes.json"
    other.write_text("{}")
    argv = ["calibrate", str(run), "--out", str(other), "--overwrite"]
    _one_line_error(main(argv), capsys.readouterr().err, "not an eviltwins calibration")
    assert other.read_text() == "{}"


@pytest.mark.parametrize(
    ("setup", "argv", "needles"),
    [
        ({"nc_params": None}, ["--detectors", "tabor"], ["has no tabor"]),
        ({"nc_params": None}, ["--detectors", "strip"], ["strip is an input filter"]),
        ({"nc_params": None}, ["--folds", "1"], ["--folds"]),
        ({"model": "other"}, [], ["holds no model card of other"]),
        ({"nc_params": None, "out_inside": True}, [], ["never writes into what a command reads"]),
    ],
)
def test_calibrate_refusals_are_one_line(setup, argv, needles, tmp_path, capsys):
    run = _sweep(tmp_path / "run", model=setup.get("model", "cnn"))
    out = run / "cal.json" if setup.get("out_inside") else tmp_path / "cal.json"
    code = main(["calibrate", str(run), "--out", str(out), *argv])
    _one_line_error(code, capsys.readouterr().err, *needles)
    assert not out.exists()


def test_calibrate_refuses_mixed_settings_and_shapes(tmp_path, capsys):
    one = _sweep(tmp_path / "one")
    two = _sweep(tmp_path / "two", nc_params={"steps": 500, "seed": 0})
    code = main(["calibrate", str(one), str(two), "--out", str(tmp_path / "c.json")])
    _one_line_error(
        code, capsys.readouterr().err, "different neural-cleanse settings", "steps 200, not 500"
    )
    three = _sweep(tmp_path / "three", shapes={"cnn": [1, 28, 28]})
    code = main(["calibrate", str(one), str(three), "--out", str(tmp_path / "c.json")])
    _one_line_error(code, capsys.readouterr().err, "different inputs", "1x32x32", "1x28x28")


# --- eviltwins scan --calibration FILE -------------------------------------------------------
def _nc_calibration(
    path: Path, intercept: float, shape=(1, 32, 32), detectors=("neural-cleanse",)
) -> Path:
    data = {
        "schema": "eviltwins.calibration/1",
        "detectors": list(detectors),
        "coef": [0.0] * len(detectors),
        "intercept": intercept,
        "input_shape": list(shape),
        "params": {d: {"steps": 2} for d in detectors},
        "n_models": 10,
        "n_trojaned": 5,
        "cv": {"auc": 0.9, "cross_entropy": 0.3, "folds": 5},
        "source": "a test population",
    }
    path.write_text(json.dumps(data))
    return path


def test_scan_with_a_calibration_file_follows_p(small_model, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("neural-cleanse: {steps: 2}\n")
    base = ["scan", "--model", str(small_model), "--detectors", "neural-cleanse"]
    base += ["--config", str(cfg), *CPU]
    high = _nc_calibration(tmp_path / "high.json", 4.0)
    code = main(
        [*base, "--calibration", str(high), "--out", str(tmp_path / "s1"), "--fail-on-detect"]
    )
    captured = capsys.readouterr()
    assert code == 3, captured.err
    data = read_json(tmp_path / "s1" / "scan.json")
    assert data["p_trojan"] == pytest.approx(1 / (1 + math.exp(-4.0)))
    assert data["verdict"].startswith("backdoor suspected (p(trojan) 0.98, calibrated): label ")
    assert captured.out.strip() == data["verdict"] and data["rule"].startswith("p(trojan) >= 0.5")
    about = data["calibration"]
    assert about["source"] == "a test population" and about["origin"] == f"file {high}"
    assert "p(trojan) = 0.982" in (tmp_path / "s1" / "scan.html").read_text()
    low = _nc_calibration(tmp_path / "low.json", -4.0)
    code = main(
        [*base, "--calibration", str(low), "--out", str(tmp_path / "s2"), "--fail-on-detect"]
    )
    assert code == 0, capsys.readouterr().err
    assert read_json(tmp_path / "s2" / "scan.json")["verdict"].startswith(
        "clean (p(trojan) 0.02, calibrated"
    )
    # auto: nothing shipped for these settings; the reason is recorded, the union rule stated
    assert main([*base, "--out", str(tmp_path / "s3")]) == 0
    data = read_json(tmp_path / "s3" / "scan.json")
    assert (
        data["p_trojan"] is None and "no calibration for neural-cleanse on 1x32x32" in data["rule"]
    )
    wrong = _nc_calibration(tmp_path / "w.json", 1.0, shape=(1, 28, 28))
    code = main([*base, "--calibration", str(wrong), "--out", str(tmp_path / "s4")])
    _one_line_error(code, capsys.readouterr().err, "fitted for 1x28x28 inputs", "takes 1x32x32")


def test_scan_refuses_a_calibration_of_detectors_it_does_not_run(tmp_path, capsys):
    cal = _nc_calibration(tmp_path / "c.json", 0.0, detectors=("neural-cleanse", "abs"))
    argv = ["scan", "--model", str(tmp_path / "m"), "--detectors", "neural-cleanse"]
    code = main([*argv, "--calibration", str(cal), "--out", str(tmp_path / "s")])
    _one_line_error(code, capsys.readouterr().err, "does not run abs")


def test_a_default_scan_of_a_28x28_model_gets_the_shipped_population_calibration():
    from eviltwins.detectors.scan import scan_settings

    fast = inspectors(DETS)  # scan's speed defaults: k-arm schedule, bfloat16 where native
    assert fast["neural-cleanse"].schedule == "k-arm" and fast["abs"].precision == "auto"
    dets, params, cal, why = scan_settings(fast, "auto", (1, 28, 28))
    assert cal is not None, why
    # the calibration was fitted with the full budget in float32: the scan runs it so
    assert dets["neural-cleanse"].schedule == "full" and dets["abs"].precision == "fp32"
    assert fast["abs"].seed_batch == 50 and dets["abs"].seed_batch is None
    assert scan_settings(fast, "auto", (3, 32, 32))[0]["neural-cleanse"].schedule == "k-arm"
    assert cal.n_models == 60 and cal.n_trojaned == 30 and cal.cv["auc"] > 0.8
    assert all(c > 0 for c in cal.coef)  # a larger anomaly never lowers p(trojan)
    assert cal.p_trojan({"neural-cleanse": 4.0, "abs": 1.0}) > 0.9
    assert cal.p_trojan({"neural-cleanse": 0.5, "abs": 0.3}) < 0.1
    other = {**params, "abs": {**params["abs"], "mask_bound": 0.12}}
    assert matching_calibration((1, 28, 28), list(dets), other)[0] is None
