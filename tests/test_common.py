"""Checks every registered attack (and later detector) must pass, scikit-learn style."""

from __future__ import annotations

import hashlib
import inspect
import json

import pytest
import torch

from eviltwins.attacks import ATTACKS
from eviltwins.base import init_param_names
from eviltwins.detectors import DETECTORS, InputFilter
from eviltwins.errors import ParamError

FAST = {
    "badnet": {"max_steps": 3},
    "trojannn": {"max_steps": 3, "trigger_steps": 2},
    "imc": {
        "outer_iters": 1,
        "retrain_steps": 3,
        "trigger_steps": 2,
        "init_trigger_steps": 2,
        "monitor_size": 50,
    },
}


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
    a = ATTACKS.get(name)(seed=3, quiet=True, **FAST[name]).fit(model, small)
    b = ATTACKS.get(name)(seed=3, quiet=True, **FAST[name]).fit(model, small)
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
