"""Small shared helpers: device choice, seeding, progress bars, versions."""

from __future__ import annotations

import contextlib
import platform
import random
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eviltwins.errors import ParamError

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is parsed by torch.

    Called once at the API/CLI boundary; everything downstream uses :func:`device_of`.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ParamError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError(
            f"device {device!r} asked for but CUDA is not available; use 'auto' or 'cpu'"
        )
    return dev


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a parameterless model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """An explicit torch generator seeded with ``seed`` (nothing seeds global RNGs)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global RNGs (used for model initialisation only)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on the model's trainable parameters for the block (an
    optimiser of inputs, triggers or masks needs no weight gradients), then restore it."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    quiet: bool | None = None,
    leave: bool = False,
) -> Any:
    """A tqdm bar on stderr; hidden when ``quiet`` is true or, with ``quiet=None``, on a non-TTY."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=True if quiet else None,
        leave=leave,
        dynamic_ncols=True,
    )


def versions() -> dict[str, str]:
    """Versions of the packages that shape numerical results."""
    import torchvision

    from eviltwins import __version__

    return {
        "eviltwins": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
