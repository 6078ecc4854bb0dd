"""One home per detector and per evasion term: IMC's ``evade`` spec, the facts each detector
declares (scan measure, evasion claim, family, presets resolved in its reports) and the sweep's
grid parameters passed only to the attacks that take them."""

from __future__ import annotations

import ast
import inspect
import math

import pytest

import eviltwins.attacks.imc as imc_module
from eviltwins.attacks import ATTACKS, IMC
from eviltwins.detectors import DETECTORS, STRIP, evaluate_filter
from eviltwins.detectors.scan import measure_name
from eviltwins.errors import ParamError, UnknownNameError
from eviltwins.evasion import EVASIONS, evasion_terms, evasion_weights
from eviltwins.experiments import cells, load_spec
from eviltwins.report.claims import evasion_claims


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        ((), {}),
        ("strip", {"strip": None}),
        ("neural-cleanse, strip=0.2", {"neural-cleanse": None, "strip": 0.2}),
        (["neural-cleanse", "strip=0"], {"neural-cleanse": None, "strip": 0.0}),
        ({"strip": 0.2, "abs": None}, {"strip": 0.2, "abs": None}),
    ],
)
def test_evade_spec_forms(value, expected):
    assert evasion_weights(value) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("strip,strip", "named twice"),
        ({"strip": -1}, "finite number >= 0"),
        ({"strip": math.nan}, "finite number >= 0"),
        ({"strip": math.inf}, "finite number >= 0"),
        ({"strip": True}, "finite number >= 0"),
        ("strip=abc", "finite number >= 0"),
        ([3], "named by a string"),
        (3.5, "evade must be"),
    ],
)
def test_bad_evade_specs_are_one_line(value, needle):
    with pytest.raises(ParamError, match=needle):
        evasion_weights(value)
    with pytest.raises(ParamError, match="'evade' parameter of IMC"):
        IMC(evade=value)._validate_params()


def test_terms_take_their_default_weight_unless_given_and_unknown_names_get_a_hint():
    weights = {t.name: w for t, w in evasion_terms("neural-cleanse,strip=0.2,abs")}
    assert weights == {"neural-cleanse": 1.0, "strip": 0.2, "abs": 1e-4}
    with pytest.raises(UnknownNameError, match="did you mean 'strip'"):
        IMC(evade={"strp": 0.2})._validate_params()


def test_imc_names_no_detector_and_every_term_lives_beside_its_detector():
    tree = ast.parse(inspect.getsource(imc_module))
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    }
    for name in DETECTORS.names() + EVASIONS.names():
        assert name not in literals, name
    for name in EVASIONS.names():
        module = EVASIONS.get(name).__module__
        assert module.startswith("eviltwins.detectors."), (name, module)
        assert EVASIONS.create(name).name == name


def test_detectors_declare_their_scan_measure_claim_and_family():
    assert measure_name("neural-cleanse") == "NeuralCleanse index"
    assert measure_name("abs") == "ABS REASR"
    assert measure_name("tabor") == "TABOR index"
    families = {n: DETECTORS.get(n).family for n in DETECTORS.names()}
    assert families["strip"] == families["scale-up"] == families["ensemble"] == "filter"
    assert families["neural-cleanse"] == families["abs"] == families["tabor"] == "inspector"
    ids = [c.id for c in evasion_claims()]
    assert ids[:3] == ["abs-evaded", "nc-evaded", "strip-f1-lower"]
    assert {c.detector for c in evasion_claims()} <= set(DETECTORS.names())


def test_strip_report_records_the_values_it_ran_with(digits_badnet, digits_spec):
    small = digits_spec.subset(train=64, test=300)
    rep = evaluate_filter(
        STRIP(), digits_badnet.model, small, digits_badnet.trigger, digits_badnet.target, 100
    )
    params = rep.details["params"]
    assert params["n_overlays"] == 8 and params["frr"] == 0.05 and params["threshold"] == "quantile"
    original = STRIP(variant="original", n_overlays=12)
    assert original.resolved_params()["n_overlays"] == 12
    assert original.resolved_params()["frr"] == 0.01
    assert original.get_params()["frr"] is None  # the estimator's parameters stay as given


def test_sweep_gives_size_only_to_attacks_that_take_it():
    spec = load_spec(
        {
            "name": "t",
            "datasets": ["digits"],
            "attacks": [
                {"name": "badnet", "params": {"max_steps": 3}},
                {"name": "blended", "params": {"max_steps": 3}},
            ],
            "sizes": [0.1, 0.2],
            "transparencies": [0.5],
            "detectors": [],
        }
    )
    by_attack: dict[str, list] = {}
    for c in cells(spec):
        by_attack.setdefault(c.attack.name, []).append(c)
    assert [c.size for c in by_attack["badnet"]] == [0.1, 0.2]
    assert [(c.size, c.transparency) for c in by_attack["blended"]] == [(None, 0.5)]
    params = by_attack["blended"][0].attack_params(spec)
    assert "size" not in params and params["transparency"] == 0.5
    assert "sizena" in by_attack["blended"][0].key(spec)
    ATTACKS.build("blended", params)  # what the cell runs is a valid configuration
