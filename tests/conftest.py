"""Shared fixtures: per-test seeding, the real-data folder, and a clean digits model trained once."""

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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n N``) each worker runs torch on one thread, and so do the
    processes the tests start: N workers on N cores, without OpenMP oversubscription."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
