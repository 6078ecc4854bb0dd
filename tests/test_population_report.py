"""The sweep report's table of the model inspectors over the sweep's models: each attack's
backdoored models ranked against the clean ones by the inspector's largest anomaly."""

from __future__ import annotations

import numpy as np
import pytest

from eviltwins.detectors.calibration import out_of_fold_p
from eviltwins.metrics import population_scores, roc_curve
from eviltwins.report.population import (
    COMBINED,
    POPULATION_HEAD,
    inspector_labels,
    population_table,
)


def _row(attack: str, target: int, nc: float, flagged: str, abs_reasr=None, no_candidate=False):
    asr = None if attack == "none" else (0.3 if nc == 2.0 else 0.99)
    return {
        "asr": asr,
        "NC.seconds": 10.0,
        "ABS.seconds": 20.0,
        "NC.peak_mb": 700.0,
        "attack": attack,
        "attack_name": "none" if attack == "none" else attack.lower(),
        "target": target,
        "NC.max_anomaly": nc,
        "NC.flagged": flagged,
        "ABS.max_anomaly": abs_reasr,
        "ABS.flagged": "",
        "ABS.no_candidate": no_candidate,
    }


ROWS = [
    _row("none", 0, 1.0, "", 0.5),
    _row("none", 0, 1.5, "", None, no_candidate=True),
    _row("none", 0, 2.5, "3", 0.6),  # a clean model NeuralCleanse flags
    _row("BadNet", 0, 4.0, "0", 0.9),
    _row("BadNet", 0, 3.0, "0 2", 0.7),
    _row("TrojanNN", 1, 2.0, "", 0.95),
    _row("TrojanNN", 1, 5.0, "4", 0.2),
]


def test_each_inspector_ranks_each_attack_against_every_clean_model():
    assert inspector_labels(ROWS) == ["NC", "ABS"]
    table = population_table(ROWS, ["NC", "ABS"])
    by = {(r[0], r[1]): dict(zip(POPULATION_HEAD, r, strict=True)) for r in table}
    assert [k[1] for k in by if k[0] == "NC"] == ["BadNet", "TrojanNN", "all attacks"]
    nc_bad = by[("NC", "BadNet")]
    assert nc_bad["backdoored / clean models"] == "2 / 3"
    assert by[("NC", "TrojanNN")]["ASR below 0.5"] == "1"  # kept, and counted
    assert nc_bad["seconds per model"] == "10.0" and nc_bad["peak MiB"] == "700"
    assert nc_bad["AUC"] == "1.000" and nc_bad["FPR at 95% TPR"] == "0.00"
    assert nc_bad["flags backdoored"] == "1.00" and nc_bad["flags clean"] == "0.33"
    assert nc_bad["target among flagged"] == "1.00"
    nc_trojannn = by[("NC", "TrojanNN")]  # scores 2.0 and 5.0 against 1.0, 1.5, 2.5
    assert nc_trojannn["AUC"] == f"{5 / 6:.3f}" and nc_trojannn["target among flagged"] == "0.00"
    # ABS with no candidate neuron scores 0 (nothing tested, nothing found)
    assert by[("ABS", "all attacks")]["AUC"] == f"{(3 + 3 + 3 + 1) / 12:.3f}"


def test_no_table_without_clean_or_backdoored_models():
    assert population_table([r for r in ROWS if r["attack"] != "none"], ["NC"]) == []
    assert population_table([r for r in ROWS if r["attack"] == "none"], ["NC"]) == []
    assert population_table(ROWS, []) == []  # no model inspector (input filters score inputs)


def test_p_trojan_is_scored_out_of_fold_and_combined_rows_follow_it():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        bad = i % 2 == 1
        nc = float(rng.normal(3.0 if bad else 1.0, 0.8))
        rows.append(
            _row(
                "BadNet" if bad else "none",
                0,
                nc,
                "0" if nc > 2 else "",
                float(rng.uniform(0.2, 1.0)),
            )
        )
    table = population_table(rows, ["NC", "ABS"], combined=["NC", "ABS"])
    by = {(r[0], r[1]): dict(zip(POPULATION_HEAD, r, strict=True)) for r in table}
    y = np.array([r["attack_name"] != "none" for r in rows])
    p = out_of_fold_p(np.array([[r["NC.max_anomaly"]] for r in rows]), y)
    want = population_scores(p, y)
    nc = by[("NC", "BadNet")]
    assert (
        nc["cross-entropy"] == f"{want['cross_entropy']:.3f}"
        and nc["Brier"] == f"{want['brier']:.3f}"
    )
    both = by[(f"{COMBINED}: NC + ABS", "BadNet")]
    assert both["seconds per model"] == "30.0"  # the inspectors' seconds add up
    assert float(both["AUC"]) > 0.8 and float(both["cross-entropy"]) < 0.6931  # beats p = 0.5
    p2 = out_of_fold_p(np.array([[r["NC.max_anomaly"], r["ABS.max_anomaly"]] for r in rows]), y)
    assert both["flags clean"] == f"{np.mean(p2[~y] >= 0.5):.2f}"


def test_roc_curve_runs_from_nothing_flagged_to_everything():
    fpr, tpr = roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert fpr.tolist() == pytest.approx([0, 0, 0.5, 0.5, 1])
    assert tpr.tolist() == pytest.approx([0, 0.5, 0.5, 1, 1])
