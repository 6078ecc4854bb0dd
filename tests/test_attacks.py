"""Attack behaviour on planted backdoors: BadNet and TrojanNN reach their ASR."""

from __future__ import annotations

import json

import pytest
import torch

import eviltwins as et
from eviltwins.attacks import BadNet, TrojanNN
from eviltwins.cli import main
from eviltwins.errors import DataError, OptimisationError, ParamError
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


@pytest.mark.parametrize("selection", ["least-activated", "most-connected"])
def test_trojannn_reads_a_random_sample_of_a_class_sorted_split(digits_spec, selection):
    """Regression (issue 24, defect 2): neuron selection and trigger generation read a seeded
    random sample of the training images, not the first ones: on a split sorted by class (as
    GTSRB and image folders are) every forward of generate_trigger sees many classes (before
    the fix: the first 16 / 64 images, all of class 0, the target)."""
    from dataclasses import replace

    from eviltwins.data import TensorImageDataset, load_all
    from eviltwins.models import build_model

    x, y = load_all(digits_spec.train)
    order = y.argsort(stable=True)
    spec = replace(digits_spec, train=TensorImageDataset(x[order], y[order]))
    torch.manual_seed(0)
    model = build_model("cnn", spec.shape, 10)
    atk = TrojanNN(size=0.3, selection=selection, trigger_steps=3, seed=0)
    region = Trigger.square(spec.shape, 0.3).region.expand_as(x[0])
    flat = x[:, ~region]  # pixels the trigger never covers identify an image
    classes = []

    def record(module, inp):
        rows = inp[0].detach()[:, ~region]
        nearest = torch.cdist(rows, flat).argmin(1)
        classes.append((len(rows), len(set(y[nearest].tolist()))))

    model.register_forward_pre_hook(record)
    atk.generate_trigger(model, spec, torch.Generator().manual_seed(0))
    assert len(classes) >= 4
    assert all(n_classes >= 5 for n, n_classes in classes if n >= 16), classes


def test_trojannn_most_connected_selection(digits_clean, digits_spec):
    res, _ = digits_clean
    atk = TrojanNN(selection="most-connected", neurons=3)
    _, info = atk.generate_trigger(res.model, digits_spec, torch.Generator().manual_seed(0))
    w = res.model.net.classifier.fc1.weight.abs().view(128, 64, -1).sum(dim=(0, 2))
    assert sorted(info["neurons"]) == sorted(w.argsort(descending=True)[:3].tolist())


def _random_spec(shape=(3, 32, 32), n=8):
    from eviltwins.data import DatasetSpec
    from eviltwins.data.base import TensorImageDataset

    ds = TensorImageDataset(
        torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 10
    )
    c = shape[0]
    return DatasetSpec("random", shape, tuple("abcdefghij"), (0.5,) * c, (0.25,) * c, ds, ds)


@pytest.mark.parametrize(("arch", "consumer"), [("resnet18", "fc"), ("vgg11", "classifier")])
def test_trojannn_most_connected_reads_the_consuming_layer(arch, consumer):
    """ResNet ``layer4`` / VGG ``features`` are containers: the "next layer" is the classifier
    that reads them, not their own first child (which reads the 3 image channels)."""
    spec = _random_spec()
    model = et.build_model(arch, spec.shape, 10, spec.mean, spec.std).eval()
    atk = TrojanNN(selection="most-connected", neurons=4, trigger_steps=0)
    _, info = atk.generate_trigger(model, spec, torch.Generator().manual_seed(0))
    assert info["layer"] == model.feature_layer
    w = getattr(model.net, consumer).weight.detach().abs().sum(0)  # per input channel
    assert info["neurons"] == w.argsort(descending=True)[:4].tolist()
    assert max(info["neurons"]) > 3  # channels of the feature map, not of the image


def test_connection_strength_per_input_channel():
    from eviltwins.attacks.trojannn import connection_strength

    conv = torch.nn.Conv2d(4, 6, 3, groups=2)
    w = conv.weight.detach().abs()  # (6, 2, 3, 3): outputs 0-2 read inputs 0-1, 3-5 read 2-3
    by_hand = torch.stack([w[:3, 0].sum(), w[:3, 1].sum(), w[3:, 0].sum(), w[3:, 1].sum()])
    assert torch.allclose(connection_strength(conv, 4), by_hand)
    fc = torch.nn.Linear(4 * 2 * 2, 5)  # reads a flattened (4, 2, 2) map
    v = fc.weight.detach().abs().view(5, 4, 4)
    assert torch.allclose(connection_strength(fc, 4), v.sum(dim=(0, 2)))
    with pytest.raises(ParamError, match="not a multiple"):
        connection_strength(fc, 3)


def test_trojannn_generation_refuses_a_non_finite_cost(digits_spec):
    """Huge (finite) activations overflow the cost to inf: generation must stop with an error,
    not hand back the half-optimised trigger."""
    model = et.build_model("cnn", digits_spec.shape, 10, digits_spec.mean, digits_spec.std)
    with torch.no_grad():
        model.net.features.conv2.weight.mul_(1e25)
    atk = TrojanNN(size=0.3)
    with pytest.raises(OptimisationError, match=r"cost became inf at step 0.*lower trigger_lr"):
        atk.generate_trigger(model, digits_spec, torch.Generator().manual_seed(0))


def test_trojannn_generation_refuses_nan_activations(digits_spec):
    model = et.build_model("cnn", digits_spec.shape, 10, digits_spec.mean, digits_spec.std)
    with torch.no_grad():
        model.net.features.conv2.bias.fill_(float("nan"))
    for selection in ("least-activated", "most-connected"):
        atk = TrojanNN(size=0.3, selection=selection)
        with pytest.raises(OptimisationError, match="NaN/inf activations"):
            atk.generate_trigger(model, digits_spec, torch.Generator().manual_seed(0))


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
