"""The sweep report's table of the model inspectors over the sweep's models: each attack's
backdoored models ranked against the clean ones by the inspector's largest anomaly."""

from __future__ import annotations

from eviltwins.report.cells import shown_detectors
from eviltwins.report.population import POPULATION_HEAD, population_table


def _row(attack: str, target: int, nc: float, flagged: str, abs_reasr=None, no_candidate=False):
    return {
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
    shown = shown_detectors({"neural-cleanse": "NC", "abs": "ABS"})
    table = population_table(ROWS, shown)
    by = {(r[0], r[1]): dict(zip(POPULATION_HEAD, r, strict=True)) for r in table}
    assert [k[1] for k in by if k[0] == "NC"] == ["BadNet", "TrojanNN", "all attacks"]
    nc_bad = by[("NC", "BadNet")]
    assert nc_bad["backdoored / clean models"] == "2 / 3"
    assert nc_bad["AUC"] == "1.000" and nc_bad["FPR at 95% TPR"] == "0.00"
    assert nc_bad["flags backdoored"] == "1.00" and nc_bad["flags clean"] == "0.33"
    assert nc_bad["target among flagged"] == "1.00"
    nc_trojannn = by[("NC", "TrojanNN")]  # scores 2.0 and 5.0 against 1.0, 1.5, 2.5
    assert nc_trojannn["AUC"] == f"{5 / 6:.3f}" and nc_trojannn["target among flagged"] == "0.00"
    # ABS with no candidate neuron scores 0 (nothing tested, nothing found)
    assert by[("ABS", "all attacks")]["AUC"] == f"{(3 + 3 + 3 + 1) / 12:.3f}"


def test_no_table_without_clean_or_backdoored_models():
    shown = shown_detectors({"neural-cleanse": "NC"})
    assert population_table([r for r in ROWS if r["attack"] != "none"], shown) == []
    assert population_table([r for r in ROWS if r["attack"] == "none"], shown) == []
    filters = shown_detectors({"strip": "STRIP"})
    assert population_table(ROWS, filters) == []  # input filters score inputs, not models
