"""Diverged training is an error, never a saved model or a reported metric (issue 12, defect 3).

A learning rate of 1e6 leaves the small CNN's weights finite but so large (~1e21) that its
outputs overflow to NaN/inf; a NaN row's argmax is class 0, which used to read as "ASR 1.0000"
for target 0, "no backdoor found" for ABS and "lower lr" for NeuralCleanse.
"""

from __future__ import annotations

import pytest
import torch

import eviltwins as et
from eviltwins.attacks import ATTACKS
from eviltwins.cli import main
from eviltwins.data import load_all
from eviltwins.detectors import ABS, STRIP, NCStripEnsemble, NeuralCleanse
from eviltwins.detectors.base import filter_result
from eviltwins.errors import DataError, EviltwinsError, OptimisationError
from eviltwins.metrics import attack_metrics
from eviltwins.models import build_model
from eviltwins.training import TrainConfig, evaluate, train_model
from eviltwins.triggers import Trigger

FAST = {
    "badnet": {"max_steps": 2},
    "trojannn": {"max_steps": 2, "trigger_steps": 1},
    "imc": {
        "outer_iters": 1,
        "retrain_steps": 2,
        "trigger_steps": 1,
        "init_trigger_steps": 1,
        "monitor_size": 20,
    },
}


@pytest.fixture(scope="module")
def small():
    return et.load_dataset("digits").subset(train=200, test=60)


def _model(spec, broken: str | None = None) -> torch.nn.Module:
    """A randomly initialised small CNN; ``nan``: one weight NaN; ``overflow``: finite weights
    whose outputs overflow to inf (what lr=1e6 leaves behind)."""
    torch.manual_seed(0)
    model = build_model("cnn", spec.shape, spec.num_classes, spec.mean, spec.std)
    with torch.no_grad():
        if broken == "nan":
            model.net.features.conv1.weight[0, 0, 0, 0] = float("nan")
        elif broken == "overflow":
            model.net.classifier.fc1.weight.mul_(1e30)
            model.net.classifier.fc2.weight.mul_(1e30)
    return model


def test_api_train_diverging_raises_and_saves_nothing(tmp_path):
    with pytest.raises(OptimisationError, match=r"diverged at epoch 1, step \d.*lower the lea"):
        et.train("digits", train_limit=200, lr=1e6, epochs=1, out=tmp_path, quiet=True)
    assert not (tmp_path / "model.safetensors").exists()


def test_cli_train_diverging_exits_2_with_one_line(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--train-limit", "200", "--lr", "1e6"]
    argv += ["--epochs", "1", "--out", str(tmp_path), "-q", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eviltwins: error: training diverged"), err
    assert not (tmp_path / "model.safetensors").exists()


def test_train_model_refuses_finite_loss_with_overflowing_outputs(small):
    """The loss stays finite at lr=1e6; the broken weights show in the outputs afterwards."""
    model = _model(small)
    with pytest.raises(OptimisationError, match="NaN/inf"):
        train_model(model, small, TrainConfig(epochs=1, lr=1e6), eval_each_epoch=False, quiet=True)


@pytest.mark.parametrize("broken", ["nan", "overflow"])
def test_evaluate_and_attack_metrics_refuse_non_finite_outputs(small, broken):
    model = _model(small, broken)
    with pytest.raises(DataError, match="non-finite"):
        evaluate(model, small.test)
    trig = Trigger.square(small.shape, 0.15, 0.0, "bottom-right", "white")
    with pytest.raises(DataError, match="non-finite"):
        attack_metrics(model, small.test, trig, 0)


@pytest.mark.parametrize("broken", ["nan", "overflow"])
@pytest.mark.parametrize("name", ["badnet", "trojannn", "imc"])
def test_attack_refuses_a_broken_model_up_front(small, name, broken):
    atk = ATTACKS.get(name)(quiet=True, **FAST[name])
    with pytest.raises(DataError, match="non-finite") as info:
        atk.fit(_model(small, broken), small)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["badnet", "trojannn", "imc"])
def test_attack_retraining_diverging_raises(small, name):
    atk = ATTACKS.get(name)(quiet=True, lr=1e6, **FAST[name])
    with pytest.raises(OptimisationError, match=r"diverged.*lr") as info:
        atk.fit(_model(small), small)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("broken", ["nan", "overflow"])
def test_inspectors_refuse_a_broken_model(small, broken):
    model = _model(small, broken)
    for det in (NeuralCleanse(steps=2, quiet=True), ABS(steps=2, quiet=True)):
        with pytest.raises(DataError, match="non-finite") as info:
            det.inspect(model, small)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("broken", ["nan", "overflow"])
def test_input_filters_refuse_a_broken_model(small, broken):
    model = _model(small, broken)
    x, _ = load_all(small.test)
    trig = Trigger.square(small.shape, 0.15, 0.0, "bottom-right", "white")
    for fit in (
        lambda: STRIP().fit(model, x),
        lambda: NCStripEnsemble().fit(model, x, trigger=trig),
        lambda: NCStripEnsemble().fit(model, x, data=small),
    ):
        with pytest.raises(DataError, match="non-finite"):
            fit()


def test_filter_metrics_refuse_nan_scores():
    with pytest.raises(EviltwinsError, match="NaN/inf"):
        filter_result(torch.tensor([0.1, float("nan")]), torch.tensor([0.5]), 0.3)
