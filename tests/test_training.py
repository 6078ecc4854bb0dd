"""Training and evaluation reach the accuracies the foundation issue asks for."""

from __future__ import annotations

import pytest
import torch

import eviltwins as et
from eviltwins.errors import OptimisationError, ParamError
from eviltwins.training import TrainConfig, Trainer, evaluate, train_model
from eviltwins.utils import PrivateRNG


def test_digits_reaches_95_percent(digits_clean):
    res, out = digits_clean
    assert res.metrics["test_acc"] >= 0.95
    assert len(res.history) == 20
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    again = et.evaluate(out, device="cpu")
    assert again.accuracy == pytest.approx(res.metrics["test_acc"])
    assert again.n == 360


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
    cfg = TrainConfig(epochs=1)
    object.__setattr__(cfg, "lr", 1e30)  # past MAX_LR (a config cannot ask for it): NaN loss
    with pytest.raises(OptimisationError, match="lower the learning rate"):
        train_model(model, small, cfg, quiet=True)


def _dropout_masks(spec, device, calls=2, seed=0):
    """The dropout masks of ``calls`` consecutive ``Trainer.steps(1)`` on the same batch; checks
    that the caller's global RNG (CPU, and the device's on CUDA) is left untouched."""
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(32 * 32, 10)
    ).to(device)
    masks = []
    model[1].register_forward_hook(lambda _m, _i, out: masks.append((out == 0).cpu()))
    x = torch.ones(8, *spec.shape, device=device)
    y = torch.zeros(8, dtype=torch.long, device=device)
    cpu_before = torch.get_rng_state()
    dev_before = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    trainer = Trainer(
        model, spec, TrainConfig(batch_size=8, lr=1e-3, seed=seed), batch_hook=lambda *_: (x, y)
    )
    for _ in range(calls):
        trainer.steps(1, quiet=True)
    assert torch.equal(torch.get_rng_state(), cpu_before)
    if dev_before is not None:
        assert torch.equal(torch.cuda.get_rng_state(device), dev_before)
    return masks


def _check_fresh_masks(spec, device):
    first, second = _dropout_masks(spec, device)
    assert not torch.equal(first, second)  # the second call does not replay the first's masks
    assert torch.equal(_dropout_masks(spec, device, calls=1)[0], first)  # same seed, same masks


def test_consecutive_steps_draw_fresh_dropout_masks(digits_spec):
    _check_fresh_masks(digits_spec.subset(train=16, test=8), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_consecutive_steps_draw_fresh_dropout_masks_on_cuda(digits_spec):
    _check_fresh_masks(digits_spec.subset(train=16, test=8), torch.device("cuda:0"))


def test_private_rng_carries_the_device_generator(monkeypatch):
    """On a CUDA device the private state holds the device's generator as well as the CPU's
    (dropout on CUDA draws from it); checked with a stand-in device generator, no CUDA needed."""
    import eviltwins.utils as utils

    fake = torch.Generator().manual_seed(123)  # stands for the global generator of cuda:0
    monkeypatch.setattr(utils, "_device_rng_state", lambda d: fake.get_state())
    monkeypatch.setattr(utils, "_set_device_rng_state", lambda s, d: fake.set_state(s))
    monkeypatch.setattr(
        utils,
        "_seeded_device_rng_state",
        lambda seed, d: torch.Generator().manual_seed(seed).get_state(),
    )
    rng = PrivateRNG(7, "cuda:0")
    assert rng.devices == [torch.device("cpu"), torch.device("cuda:0")]
    caller_cpu, caller_dev = torch.get_rng_state(), fake.get_state()
    draws = []
    for _ in range(2):
        with rng:
            draws.append((torch.rand(4), torch.rand(4, generator=fake)))
        assert torch.equal(torch.get_rng_state(), caller_cpu)
        assert torch.equal(fake.get_state(), caller_dev)
    seeded = torch.Generator().manual_seed(7)
    assert torch.equal(draws[0][1], torch.rand(4, generator=seeded))  # seeded from `seed`
    assert torch.equal(draws[1][1], torch.rand(4, generator=seeded))  # and carried on
    assert not torch.equal(draws[0][0], draws[1][0])
    assert PrivateRNG(7).devices == [torch.device("cpu")]


def test_invalid_config_is_refused_before_any_work():
    with pytest.raises(ParamError, match=r"'epochs'.*an int in \[0, 10000\]"):
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
    assert et.evaluate(tmp_path, data_root=data_root, device="cpu").accuracy >= 0.98


@pytest.mark.slow
def test_fashion_mnist_85_percent_in_two_epochs(data_root):
    res = et.train("fashion-mnist", "cnn", epochs=2, data_root=data_root, device="cpu", quiet=True)
    assert res.metrics["test_acc"] >= 0.85
    test = et.load_dataset("fashion-mnist", data_root).test
    assert evaluate(res.model, test)["accuracy"] == pytest.approx(res.metrics["test_acc"])
