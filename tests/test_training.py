"""Training and evaluation reach the accuracies the foundation issue asks for."""

from __future__ import annotations

import pytest
import torch

import eviltwins as et
from eviltwins.errors import OptimisationError, ParamError
from eviltwins.training import TrainConfig, evaluate, train_model


def test_digits_reaches_95_percent(digits_clean):
    res, out = digits_clean
    assert res.metrics["test_acc"] >= 0.95
    assert len(res.history) == 20
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    again = et.evaluate(out, device="cpu")
    assert again["accuracy"] == pytest.approx(res.metrics["test_acc"])
    assert again["n"] == 360


def test_same_seed_same_numbers(digits_spec):
    small = digits_spec.subset(train=300, test=100)
    a = et.train(small, "cnn", epochs=2, seed=5, device="cpu", quiet=True)
    b = et.train(small, "cnn", epochs=2, seed=5, device="cpu", quiet=True)
    assert a.history == b.history
    for va, vb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_nan_loss_stops_with_one_line_error(digits_spec):
    small = digits_spec.subset(train=256, test=64)
    model = et.build_model("cnn", small.shape, 10, small.mean, small.std)
    with pytest.raises(OptimisationError, match="lower the learning rate"):
        train_model(model, small, TrainConfig(epochs=1, lr=1e30), quiet=True)


def test_invalid_config_is_refused_before_any_work():
    with pytest.raises(ParamError, match="'epochs'.*greater than or equal to 0"):
        et.train("digits", epochs=-1)
    with pytest.raises(ParamError, match="'optimizer'"):
        et.train("digits", optimizer="rmsprop")


def test_evaluate_checks_shape_and_classes(digits_clean, data_root):
    _, out = digits_clean
    with pytest.raises(ParamError, match="expects"):
        et.evaluate(out, "mnist", data_root=data_root, device="cpu")


@pytest.mark.slow
def test_mnist_98_percent_in_two_epochs(data_root, tmp_path):
    res = et.train(
        "mnist", "cnn", epochs=2, data_root=data_root, device="cpu", out=tmp_path, quiet=True
    )
    assert res.metrics["test_acc"] >= 0.98
    assert et.evaluate(tmp_path, data_root=data_root, device="cpu")["accuracy"] >= 0.98


@pytest.mark.slow
def test_fashion_mnist_85_percent_in_two_epochs(data_root):
    res = et.train("fashion-mnist", "cnn", epochs=2, data_root=data_root, device="cpu", quiet=True)
    assert res.metrics["test_acc"] >= 0.85
    test = et.load_dataset("fashion-mnist", data_root).test
    assert evaluate(res.model, test)["accuracy"] == pytest.approx(res.metrics["test_acc"])
