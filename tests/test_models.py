"""Model registry, normalisation as layer 0, user models and feature taps."""

from __future__ import annotations

import sys

import pytest
import torch

from eviltwins.errors import ParamError, UnknownNameError
from eviltwins.models import (
    MODELS,
    activations,
    build_model,
    consumer_of,
    feature_tap,
    get_layer,
    layer_names,
)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("cnn", (1, 28, 28)),
        ("cnn", (3, 32, 32)),
        ("resnet18", (3, 32, 32)),
        ("resnet-small", (1, 28, 28)),
        ("resnet-small", (3, 32, 32)),
        ("vgg11", (1, 28, 28)),
        ("vgg16", (3, 32, 32)),
        ("resnet18-imagenet", (3, 64, 64)),
        ("resnet101", (3, 64, 64)),
    ],
)
def test_every_architecture_gives_logits(name, shape):
    model = build_model(name, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_registry_covers_the_issue_list():
    assert {"cnn", "resnet18", "vgg11", "resnet18-imagenet", "resnet101"} <= set(MODELS.names())
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        build_model("resnet19", (3, 32, 32), 10)


def test_normalisation_is_the_first_layer():
    model = build_model("cnn", (1, 28, 28), 10, mean=(0.5,), std=(0.25,)).eval()
    assert layer_names(model)[0] == "normalize"
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - 0.5) / 0.25))


def test_feature_tap_reads_named_layer_with_gradients():
    model = build_model("cnn", (1, 28, 28), 10).eval()
    assert model.feature_layer == "net.features.conv2"
    x = torch.rand(5, 1, 28, 28, requires_grad=True)
    with feature_tap(model, model.feature_layer) as tap:
        model(x)
    assert tap["out"].shape == (5, 64, 14, 14)
    tap["out"][:, 3].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    acts = activations(model, "net.classifier.fc1", x.detach(), batch_size=2)
    assert acts.shape == (5, 128) and not acts.requires_grad
    with pytest.raises(UnknownNameError, match="did you mean"):
        get_layer(model, "net.features.conv9")


def test_user_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self, n=3):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(16, n)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("mynets:Tiny", (1, 4, 4), 3, n=3)
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(UnknownNameError, match="no nn.Module class"):
        build_model("mynets:Missing", (1, 4, 4), 3)
    with pytest.raises(UnknownNameError, match="cannot import"):
        build_model("not_a_module_xyz:Net", (1, 4, 4), 3)
    sys.modules.pop("mynets", None)


def test_bad_model_options_are_param_errors():
    with pytest.raises(ParamError, match="does not take"):
        build_model("cnn", (1, 28, 28), 10, depth=3)
    with pytest.raises(ParamError, match="at least 4x4"):
        build_model("cnn", (1, 2, 2), 10)


@pytest.mark.parametrize(
    ("name", "layer", "consumer"),
    [
        ("resnet18", "net.layer4", "net.fc"),  # a container: not its own first child
        ("resnet18", "net.layer2.0.conv2", "net.layer2.1.conv1"),  # not the shortcut conv
        ("vgg11", "net.features", "net.classifier"),  # not features.0 (the image channels)
        ("vgg11", "net.features.0", "net.features.4"),  # across batch norm, ReLU and pool
        ("cnn", "net.features.conv2", "net.classifier.fc1"),  # through flatten
        ("resnet-small", "net.layer2", "net.fc"),  # the small residual network's feature layer
        ("cnn", "net.classifier.fc2", None),  # the last layer
    ],
)
def test_consumer_of_follows_the_data_flow(name, layer, consumer):
    model = build_model(name, (3, 32, 32), 10)
    found = consumer_of(model, layer)
    if consumer is None:
        assert found is None
    else:
        assert found == (consumer, get_layer(model, consumer))
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_consumer_of_takes_an_example_input_for_plain_modules():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(inplace=True))
    net.append(torch.nn.Flatten()).append(torch.nn.Linear(4 * 6 * 6, 2))
    assert consumer_of(net, "1", torch.rand(1, 1, 8, 8))[0] == "3"
    with pytest.raises(ParamError, match="example_input"):
        consumer_of(net, "0")


def test_a_user_model_in_the_working_folder_imports_as_python_m_would(tmp_path, monkeypatch):
    (tmp_path / "herenets.py").write_text(
        "import torch\n"
        "class Here(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(16, 3)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    try:
        model = build_model("herenets:Here", (1, 4, 4), 3)
        assert model(torch.rand(2, 1, 4, 4)).shape == (2, 3)
        with pytest.raises(UnknownNameError, match="cannot import"):
            build_model("nowhere_xyz:Net", (1, 4, 4), 3)
    finally:
        sys.modules.pop("herenets", None)
