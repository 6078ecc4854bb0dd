"""Exact rewrites and runtime settings behind NeuralCleanse's speed (issue 15): max-pool before
ReLU, channels-last strides for one-channel inputs and weights, and glibc's memory reuse."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from eviltwins.data import load_all
from eviltwins.detectors import NeuralCleanse
from eviltwins.models.layout import channels_last, nhwc
from eviltwins.models.rewrite import (
    pool_before_relu,
    relu_pool_pairs,
    thin_conv_grads,
    thin_convolutions,
)
from eviltwins.models.zoo import HeavyCNN, SmallCNN

CL = torch.channels_last


def _net(cls: type[nn.Module] = SmallCNN) -> nn.Module:
    torch.manual_seed(0)
    return cls(1, 10, (28, 28)).eval()


def _images() -> torch.Tensor:
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    x[:, :, :10] = 0.0  # a blank band, as in MNIST: equal values in every pooling window
    return x


def _grad(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    out.logsumexp(1).sum().backward()
    return out.detach(), xi.grad


def test_one_channel_tensors_get_channels_last_strides():
    x = torch.rand(4, 1, 9, 9)
    assert nhwc(x).stride() == (81, 1, 9, 1)
    assert torch.equal(nhwc(x), x)
    w = nn.Conv2d(1, 8, 3).weight.data
    # contiguous(memory_format=...) keeps NCHW strides when C = 1, so the conv writes NCHW
    assert not nn.functional.conv2d(x, w.contiguous(memory_format=CL)).is_contiguous(
        memory_format=CL
    )
    out = nn.functional.conv2d(x, nhwc(w))
    assert out.is_contiguous(memory_format=CL) and not out.is_contiguous()


def test_channels_last_puts_the_first_layer_of_a_grey_model_in_nhwc():
    model = _net()
    x = _images()
    with channels_last(model, x[:2], mode=True) as on:
        assert on
        assert model.features.conv1.weight.stride() == (9, 1, 3, 1)
        with torch.no_grad():
            h = model.features.conv1(x)
        assert h.is_contiguous(memory_format=CL) and not h.is_contiguous()
    assert model.features.conv1.weight.is_contiguous()


def test_relu_pool_pairs_of_the_zoo_models():
    small = relu_pool_pairs(_net())
    assert [(k1, k2) for _, k1, k2 in small] == [("relu1", "pool1"), ("relu2", "pool2")]
    heavy = relu_pool_pairs(_net(HeavyCNN))
    assert [(k1, k2) for _, k1, k2 in heavy] == [("relu2", "pool")]


@pytest.mark.parametrize("cls", [SmallCNN, HeavyCNN])
def test_pool_before_relu_keeps_logits_and_input_gradients_bit_for_bit(cls):
    model = _net(cls)
    for p in model.parameters():
        p.requires_grad_(False)
    x = _images()
    ref_out, ref_grad = _grad(model, x)
    order = list(model.features._modules)
    modules = model.features._modules
    with pool_before_relu(model, x[:2]) as n:
        assert n == len(relu_pool_pairs(model)) or n > 0
        swapped = list(model.features._modules)
        assert swapped != order
        assert swapped.index("pool" if cls is HeavyCNN else "pool1") < swapped.index(
            "relu2" if cls is HeavyCNN else "relu1"
        )
        out, grad = _grad(model, x)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)
    assert model.features._modules is modules and list(modules) == order


def test_pool_before_relu_leaves_hooked_modules_and_disabled_runs_alone():
    model = _net()
    handle = model.features.relu1.register_forward_hook(lambda *a: None)
    x = _images()
    with pool_before_relu(model, x[:2]) as n:
        assert n == 1  # only relu2 / pool2
        assert list(model.features._modules)[:3] == ["conv1", "relu1", "pool1"]
    handle.remove()
    with pool_before_relu(model, x[:2], enabled=False) as n:
        assert n == 0


class IndexingNet(nn.Module):
    """Uses its sequential's children by position: reordering them changes the computation."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.seq[1](self.seq[0](x)).flatten(1)[:, : 4 * 8 * 8])


def test_pool_before_relu_falls_back_when_the_logits_change():
    net = IndexingNet().eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        ref = net(x)
    with pool_before_relu(net, x) as n:
        assert n == 0
        with torch.no_grad():
            assert torch.equal(net(x), ref)


def test_neural_cleanse_rewrites_keep_the_masks(digits_badnet, digits_spec, first_steps):
    model = copy.deepcopy(digits_badnet.model).eval()
    ref = copy.deepcopy(model)
    kw = dict(n_inputs=40, batch_size=8, steps=5, channels_last=False, quiet=True)
    fast = first_steps.run(NeuralCleanse(rewrites=True, **kw), model, digits_spec, 5)
    plain = first_steps.run(NeuralCleanse(rewrites=False, **kw), model, digits_spec, 5)
    assert fast[0].details["rewrites"] == {
        "fold_batchnorm": 0,
        "pool_before_relu": 2,
        "thin_conv_grads": 1,
    }
    assert set(plain[0].details["rewrites"].values()) == {0}
    # the reordering is exact; the thin convolution's gradient differs by float rounding, so
    # the first step's gradients agree to a tolerance and the masks after 5 steps on average
    # (not element by element: see tests/conftest.py, FirstSteps)
    first_steps.assert_close(fast, plain)
    x = load_all(digits_spec.test)[0][:4]
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))  # the model was put back


def test_thin_convolutions_of_the_zoo_models_and_what_is_left_alone():
    assert [(pad, m.in_channels) for m, pad in thin_convolutions(_net())] == [((1, 1), 1)]
    assert [pad for _, pad in thin_convolutions(_net(HeavyCNN))] == [(0, 0)]
    others = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2),
        nn.Conv2d(8, 8, 3, padding=1),  # not thin
        nn.Conv2d(2, 4, 3, groups=2),
        nn.Conv2d(1, 4, 3, dilation=2),
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(1, 4, 4, padding="same"),  # even kernel: asymmetric padding
    )
    assert thin_convolutions(others) == []


@pytest.mark.parametrize(
    ("cin", "kernel", "padding", "layout"),
    [(1, 3, 1, "nchw"), (1, 3, 1, "nhwc"), (3, (3, 5), (0, 2), "nchw"), (3, 5, "same", "nhwc")],
)
def test_thin_conv_input_gradient_matches_the_plain_one(cin, kernel, padding, layout):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(cin, 16, kernel, padding=padding), nn.Tanh(), nn.Flatten())
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(5, cin, 11, 13)
    x = nhwc(x) if layout == "nhwc" else x
    ref_out, ref_grad = _grad(net, x)
    with thin_conv_grads(net, x[:2]) as n:
        assert n == 1
        out, grad = _grad(net, x)
    assert "forward" not in net[0].__dict__  # the module's own forward is back
    assert torch.equal(out, ref_out)
    assert grad.shape == ref_grad.shape
    assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-6 * ref_grad.abs().max())


def test_thin_conv_keeps_weight_gradients_when_the_weights_train():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Flatten())
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.rand(3, 1, 6, 6)
    with thin_conv_grads(net, x[:2]) as n:
        assert n == 1
        net[0].weight.requires_grad_(True)  # trained inside the block: the plain path runs
        net(x).sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    with thin_conv_grads(net, x[:2], enabled=False) as n:
        assert n == 0


_FAULTS = """
import resource, torch
from eviltwins.allocator import reuse_freed_memory
on = reuse_freed_memory()
def rounds(n):
    for _ in range(n):
        bufs = [torch.empty(2 << 20).fill_(1.0) for _ in range(4)]  # 4 x 8 MB, then freed
        del bufs
rounds(2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(80)
print(on, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str) -> tuple[str, int]:
    env = {**os.environ, "EVILTWINS_MALLOC_TUNING": env_value}
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True
    )
    on, faults = out.stdout.split()
    return on, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_reused_memory_avoids_the_page_faults_of_fresh_blocks():
    on, tuned = _faults("1")
    off, _ = _faults("0")
    assert (on, off) == ("True", "False")
    # 80 rounds of 4 fresh 8 MB blocks would be 655,360 page faults; kept for reuse, the
    # blocks are faulted in once (at most one block again: 2,048 pages). glibc's defaults
    # vary between runs here (2,048 or 652,800 measured), so only the tuned side is asserted.
    assert tuned <= 2 * 2048
