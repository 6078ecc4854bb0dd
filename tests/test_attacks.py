"""Attack behaviour on planted backdoors: BadNet and TrojanNN reach their ASR."""

from __future__ import annotations

import json

import pytest
import torch

import eviltwins as et
from eviltwins.attacks import BadNet, TrojanNN
from eviltwins.cli import main
from eviltwins.errors import DataError
from eviltwins.triggers import Trigger, stamp


def test_badnet_on_digits(digits_clean, digits_spec):
    res, _ = digits_clean
    out = BadNet(size=0.15, epochs=10, quiet=True).fit(res.model, digits_spec)
    assert out.metrics["asr"] >= 0.9
    assert out.metrics["acc_drop"] <= 0.03
    assert [h["asr"] for h in out.history][-1] == pytest.approx(out.metrics["asr"])


def test_trojannn_generated_trigger_beats_random_patterns(digits_clean, digits_spec):
    """The generated trigger drives the selected neurons above what any random pattern does."""
    res, _ = digits_clean
    model = res.model
    atk = TrojanNN(size=0.3, transparency=0.0)
    trig, info = atk.generate_trigger(model, digits_spec, torch.Generator().manual_seed(0))
    before = sum(info["activation_before"]) / 2
    after = sum(info["activation_after"]) / 2
    assert after > before + 0.2
    from eviltwins.attacks.trojannn import neuron_activation, trigger_response
    from eviltwins.data import load_all

    x, _ = load_all(digits_spec.train, limit=64)
    fp, _ = trigger_response(model, info["layer"], trig, x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        r = torch.rand(trig.pattern.shape, generator=g) * trig.region
        with et.feature_tap(model, info["layer"]) as tap, torch.no_grad():
            model(stamp(x, trig.mask, r))
        rand_act = neuron_activation(tap["out"], fp)[:, info["neurons"]].mean().item()
        assert after > rand_act


def test_trojannn_most_connected_selection(digits_clean, digits_spec):
    res, _ = digits_clean
    atk = TrojanNN(selection="most-connected", neurons=3)
    _, info = atk.generate_trigger(res.model, digits_spec, torch.Generator().manual_seed(0))
    w = res.model.net.classifier.fc1.weight.abs().view(128, 64, -1).sum(dim=(0, 2))
    assert sorted(info["neurons"]) == sorted(w.argsort(descending=True)[:3].tolist())


def test_target_out_of_range(digits_clean, digits_spec):
    res, _ = digits_clean
    with pytest.raises(DataError, match="target class 12"):
        BadNet(target=12).fit(res.model, digits_spec)


def test_cli_attack_writes_artifacts(digits_clean, tmp_path, capsys):
    _, model_dir = digits_clean
    out = tmp_path / "bad"
    code = main(
        [
            "attack",
            "badnet",
            "--model",
            str(model_dir),
            "--size",
            "0.2",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    d = json.loads(captured.out)
    assert d["attack"] == "badnet" and d["params"]["size"] == 0.2
    for f in (
        "model.safetensors",
        "model.json",
        "trigger.safetensors",
        "trigger.png",
        "metrics.json",
        "examples.png",
    ):
        assert (out / f).is_file(), f
    model, card = et.load_model(out)
    assert card.extra["attack"] == "badnet" and card.metrics["asr"] == d["metrics"]["asr"]
    trig = Trigger.load(out / "trigger.safetensors")
    ds = et.load_dataset("digits")
    assert et.metrics.attack_metrics(model, ds.test, trig, 0)["asr"] == pytest.approx(
        d["metrics"]["asr"]
    )
    code = main(
        [
            "attack",
            "trojannn",
            "--model",
            str(model_dir),
            "--pattern",
            "white",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2 and "no parameter 'pattern'" in capsys.readouterr().err


@pytest.mark.slow
def test_badnet_mnist_asr_and_accuracy(data_root, mnist_clean):
    spec = et.load_dataset("mnist", data_root)
    res = BadNet(size=0.15, transparency=0.0, epochs=1, quiet=True).fit(mnist_clean, spec)
    assert res.metrics["asr"] >= 0.95
    assert res.metrics["acc_drop"] <= 0.01


@pytest.mark.slow
def test_trojannn_mnist_opaque_asr(data_root, mnist_clean):
    spec = et.load_dataset("mnist", data_root)
    res = TrojanNN(size=0.3, transparency=0.0, epochs=1, quiet=True).fit(mnist_clean, spec)
    assert res.metrics["asr"] >= 0.95
    assert res.metrics["acc_drop"] <= 0.01
    assert sum(res.extra["activation_after"]) > sum(res.extra["activation_before"])
