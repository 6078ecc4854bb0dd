"""Shared fixtures: per-test seeding, the real-data folder, a clean digits model trained once,
and the detectors' first optimisation steps read off their optimiser."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("EVILTWINS_DATA")
    for cand in (Path(env) if env else None, REPO.parent / "shared" / "data"):
        if cand is not None and (cand / "MNIST" / "raw").is_dir():
            return cand
    return None


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


class FirstSteps:
    """Detector runs with their first optimisation steps read off the optimiser
    (NeuralCleanse and ABS reverse-engineer triggers with ``torch.optim.Adam``).

    Two ways of computing the same step (pass sizes, layouts, rewrites) differ in float
    summation order, and so now and then in a max-pool window whose two largest inputs lie within
    rounding of each other; the optimisation then amplifies that: Adam moves a parameter whose
    gradient is near zero by up to lr on whichever side rounding puts it, and a gate
    (NeuralCleanse's 0.99 success rate, ABS's mask bound) turns one such difference into another
    schedule. Which of
    those happens depends on the CPU kernel (default, AVX2, AVX-512) and the thread count. So
    tests compare what the method guarantees: the first step's gradients (same parameters, same
    images) within a tolerance, the masks after a few steps on average, and the verdict; never
    the end point of the optimisation element by element."""

    @staticmethod
    def run(inspector, model: torch.nn.Module, data, keep: int):
        """``inspector.inspect(model, data)``, the gradients of its first ``keep`` Adam steps
        (``[w_m.grad, w_p.grad]``, one row per label or candidate) and the masks after each."""
        grads: list[list[torch.Tensor]] = []
        masks: list[torch.Tensor] = []

        class Logged(torch.optim.Adam):
            def step(self, closure=None):
                w = [p for group in self.param_groups for p in group["params"]]
                if len(grads) < keep:
                    grads.append([p.grad.detach().clone() for p in w])
                out = super().step(closure)
                if len(masks) < keep:
                    masks.append((torch.tanh(w[0].detach()) + 1) / 2)  # w_m: tanh space
                return out

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.optim, "Adam", Logged)
            report = inspector.inspect(model, data)
        assert len(grads) == keep, "the detector no longer steps torch.optim.Adam"
        return report, grads, masks

    @staticmethod
    def assert_close(one, other, rel: float = 1e-2, mask_mean: float = 1e-3) -> None:
        """The first step's gradients of every row agree to ``rel`` in L2 norm relative to
        the row's norm, and the masks after each kept step agree to ``mask_mean`` on average.

        Measured: 2e-7 in most runs (summation order); 6e-5 where a max-pool window holds two
        inputs within rounding of each other and the other one wins (1 of 513,000 windows on
        the AVX-512 kernel with two threads, channels-last against NCHW), which routes that
        window's gradient to its neighbour. A wrong chunking of labels is off by O(1). The masks
        after 5 steps: under 1e-7 apart on average (a rounding-flipped Adam step moves one
        element by at most lr)."""
        for ga, gb in zip(one[1][0], other[1][0], strict=True):
            norm = gb.flatten(1).norm(dim=1)
            assert (norm > 0).all()  # a real gradient for every row
            worst = ((ga - gb).flatten(1).norm(dim=1) / norm).max()
            assert worst <= rel, f"first-step gradients differ by {float(worst):.2e} (L2, relative)"
        for ma, mb in zip(one[2], other[2], strict=True):
            assert (ma - mb).abs().mean() < mask_mean


@pytest.fixture(scope="session")
def first_steps() -> FirstSteps:
    """:class:`FirstSteps`: detector runs with their first steps' gradients and masks."""
    return FirstSteps()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder with real MNIST / Fashion-MNIST (../shared/data or $EVILTWINS_DATA)."""
    root = _shared_data()
    if root is None:
        pytest.skip("real MNIST not found: set EVILTWINS_DATA to a folder holding MNIST/raw")
    return root


@pytest.fixture(scope="session")
def digits_spec():
    from eviltwins.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """A tiny saved digits model (1 epoch on 100 images), for checks whose outcome does not
    depend on its weights (refusals, paths, file modes). Tests copy it before changing it."""
    import eviltwins as et

    out = tmp_path_factory.mktemp("small") / "clean"
    et.train("digits", "cnn", epochs=1, train_limit=100, device="cpu", out=out, quiet=True)
    return out


@pytest.fixture(scope="session")
def digits_clean(digits_spec, tmp_path_factory):
    """A clean small CNN trained on digits (20 epochs, ~15 s on 2 cores), saved to disk."""
    import eviltwins as et

    out = tmp_path_factory.mktemp("digits_clean")
    res = et.train(digits_spec, "cnn", epochs=20, seed=0, device="cpu", out=out, quiet=True)
    return res, out


@pytest.fixture(scope="session")
def mnist_clean(data_root, tmp_path_factory):
    """A clean small CNN trained on real MNIST for 2 epochs (~80 s on 2 cores)."""
    import eviltwins as et

    res = et.train(
        "mnist",
        "cnn",
        epochs=2,
        data_root=data_root,
        device="cpu",
        quiet=True,
        out=tmp_path_factory.mktemp("mnist_clean"),
    )
    return res.model


@pytest.fixture(scope="session")
def digits_badnet(digits_clean, digits_spec):
    """A BadNet copy of the clean digits model (opaque 0.15 white square, target 0)."""
    from eviltwins.attacks import BadNet

    res, _ = digits_clean
    return BadNet(size=0.15, epochs=10, quiet=True).fit(res.model, digits_spec)


@pytest.fixture(scope="session")
def digits_badnet_folder(digits_badnet, digits_spec, tmp_path_factory) -> Path:
    """:func:`digits_badnet` saved as a model folder (card, weights, trigger), for the commands
    that read a model from disk. Tests only read it."""
    from eviltwins.io import ModelCard

    card = ModelCard(
        "cnn", digits_spec.shape, 10, digits_spec.mean, digits_spec.std, dataset="digits"
    )
    folder = tmp_path_factory.mktemp("badnet_folder") / "bad"
    digits_badnet.save(folder, card)
    return folder


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n N``) each worker runs torch on one thread, and so do the
    processes the tests start: N workers on N cores, without OpenMP oversubscription."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
