"""Checks every registered attack, detector and evasion term must pass, scikit-learn style.

Each estimator is found in its registry and run with the configuration it declares itself
(``fast_params``): adding one in its own file is enough for these checks to cover it."""

from __future__ import annotations

import hashlib
import inspect
import json

import pytest
import torch

from eviltwins.attacks import ATTACKS
from eviltwins.base import init_param_names
from eviltwins.detectors import DETECTORS, InputFilter, run_detector
from eviltwins.errors import ParamError
from eviltwins.evasion import EVASIONS


def _fast(cls, **extra):
    """The estimator ``cls`` in its own smallest configuration, seeded."""
    params = {**cls.fast_params, "seed": 3, **extra}
    if "quiet" in init_param_names(cls):
        params["quiet"] = True
    return cls(**params)


def _hash(model):
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_constructor_stores_params_only(name):
    cls = ATTACKS.get(name)
    est = cls()
    sig = inspect.signature(cls.__init__)
    for pname in init_param_names(cls):
        assert (
            getattr(est, pname) is sig.parameters[pname].default
            or getattr(est, pname) == sig.parameters[pname].default
        )
    assert set(vars(est)) == set(init_param_names(cls))  # nothing else set in __init__
    clone = cls(**est.get_params())
    assert clone.get_params() == est.get_params()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_typo_in_parameter_is_refused(name):
    est = ATTACKS.get(name)()
    with pytest.raises(ParamError, match="did you mean 'target'"):
        est.set_params(targt=1)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_constraint_rejects_a_bad_value_naming_it(name, digits_clean, digits_spec):
    res, _ = digits_clean
    cls = ATTACKS.get(name)
    for pname, rule in cls._constraints.items():
        est = cls().set_params(**{pname: rule.invalid_example()})
        with pytest.raises(ParamError, match=f"'{pname}' parameter of {cls.__name__}"):
            est.fit(res.model, digits_spec)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_fit_leaves_model_and_data_alone_and_is_reproducible(name, digits_clean, digits_spec):
    res, _ = digits_clean
    model = res.model
    small = digits_spec.subset(train=256, test=100)
    before_model = _hash(model)
    before_data = small.train.images.clone()
    a = _fast(ATTACKS.get(name)).fit(model, small)
    b = _fast(ATTACKS.get(name)).fit(model, small)
    assert _hash(model) == before_model
    assert torch.equal(small.train.images, before_data)
    assert a.model is not model
    assert a.metrics == b.metrics and torch.equal(a.trigger.pattern, b.trigger.pattern)
    assert json.loads(json.dumps(a.to_dict()))["schema"] == "eviltwins.backdoor/1"


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_constructor_and_params(name):
    cls = DETECTORS.get(name)
    est = cls()
    assert set(vars(est)) == set(init_param_names(cls))
    assert cls(**est.get_params()).get_params() == est.get_params()
    with pytest.raises(ParamError, match="did you mean 'seed'"):
        est.set_params(sead=1)


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_constraints_reject_bad_values(name, digits_clean, digits_spec):
    res, _ = digits_clean
    cls = DETECTORS.get(name)
    x = digits_spec.test.tensors()[0][:20]
    for pname, rule in cls._constraints.items():
        est = cls().set_params(**{pname: rule.invalid_example()})
        with pytest.raises(ParamError, match=f"'{pname}' parameter of {cls.__name__}"):
            if isinstance(est, InputFilter):
                est.fit(res.model, x)
            else:
                est.inspect(res.model, digits_spec)


@pytest.mark.parametrize("name", ATTACKS.names() + DETECTORS.names())
def test_fast_params_are_valid_parameters(name):
    cls = ATTACKS.get(name) if name in ATTACKS else DETECTORS.get(name)
    est = _fast(cls)  # an unknown name raises in set_params
    est._validate_params()


@pytest.mark.parametrize("name", DETECTORS.names())
def test_detector_leaves_model_alone_is_reproducible_and_its_report_round_trips(
    name, digits_badnet, digits_spec
):
    model = digits_badnet.model
    small = digits_spec.subset(train=64, test=200)
    before = _hash(model)
    kw = {"trigger": digits_badnet.trigger, "target": digits_badnet.target, "n_clean": 80}
    a = run_detector(_fast(DETECTORS.get(name)), model, small, seed=1, **kw)
    b = run_detector(_fast(DETECTORS.get(name)), model, small, seed=1, **kw)
    assert _hash(model) == before
    assert a.detector == name
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("seconds", None)
        for noisy in ("fit_seconds", "seconds_per_label"):
            (d.get("details") or {}).pop(noisy, None)
    assert json.dumps(da, sort_keys=True, default=str) == json.dumps(
        db, sort_keys=True, default=str
    )
    text = json.dumps(a.to_dict(), sort_keys=True, default=str)
    back = type(a).from_dict(json.loads(text))
    assert json.dumps(back.to_dict(), sort_keys=True, default=str) == text
    params = a.details["params"]  # every report records the values the detector ran with
    fast = DETECTORS.get(name).fast_params
    assert all(params[k] == (list(v) if isinstance(v, tuple) else v) for k, v in fast.items())
    presets = DETECTORS.get(name)._presets
    if presets is not None:  # a value a preset fills is recorded as used, never as None
        key, table = presets
        filled = set(table[params[key]]) & set(params)
        assert filled and all(params[k] is not None for k in filled)


@pytest.mark.parametrize("name", EVASIONS.names())
def test_every_evasion_term_runs_in_imc_and_is_recorded(name, digits_clean, digits_spec):
    """Each registered term runs through IMC's loop on its step, is recorded in the history
    under its name with a finite value, and leaves the caller's model alone."""
    res, _ = digits_clean
    term = EVASIONS.create(name)
    assert term.trigger_loss is not None or term.model_loss is not None
    small = digits_spec.subset(train=256, test=100)
    before = _hash(res.model)
    mode = "opacity" if term.needs_learned_mask else "fixed"
    imc = _fast(ATTACKS.get("imc"), evade={name: 2 * term.default_weight}, mode=mode)
    out = imc.fit(res.model, small)
    assert _hash(res.model) == before
    assert out.extra["evasion_weights"] == {name: 2 * term.default_weight}
    value = out.history[-1][f"{name}_loss"]
    assert value == value and abs(value) < float("inf")
    if term.needs_learned_mask:
        with pytest.raises(ParamError, match="fixed mask"):
            ATTACKS.get("imc")(evade=[name], mode="fixed")._validate_params()
