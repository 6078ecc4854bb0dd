"""Small shared helpers: device choice, seeding, private RNG states, progress bars, versions."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from eviltwins.errors import DataError, EviltwinsError, ParamError

T = TypeVar("T")


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (JSON/YAML integers; ``True`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` (NaN and inf included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


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


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the block on torch's global RNGs (CPU and CUDA) seeded with ``seed``, then put the
    caller's states back: for weight initialisation, the one thing that needs the global
    generator (``nn.init`` and ``reset_parameters`` take no ``generator=``). Nothing leaks:
    the caller's random streams are the same after the block as before it.

    >>> with seeded_init(0):
    ...     model = build_model("cnn", (1, 28, 28), 10, (0.5,), (0.5,))
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _device_rng_state(device: torch.device) -> Tensor:
    """The global generator state of an accelerator ``device`` (CUDA)."""
    return torch.cuda.get_rng_state(device)


def _set_device_rng_state(state: Tensor, device: torch.device) -> None:
    torch.cuda.set_rng_state(state, device)


def _seeded_device_rng_state(seed: int, device: torch.device) -> Tensor:
    """The state of ``device``'s generator freshly seeded with ``seed`` (nothing global moves)."""
    return make_generator(seed, device).get_state()


class PrivateRNG:
    """A private copy of torch's *global* random state, seeded with ``seed``, for code that
    draws from the global generators and cannot take a ``generator=`` (dropout, ``torch.rand``
    inside a model).

    It holds the CPU generator's state and, for a CUDA ``device``, that device's generator too
    (dropout on a CUDA model draws from the CUDA generator, not the CPU one). ``with rng:``
    swaps the private states in for the block, then stores where the block left them and puts
    the caller's states back: the caller's global RNG is untouched, and consecutive blocks
    continue one private stream (fresh dropout masks each time) instead of replaying it.
    Other accelerator types are not covered (only their CPU side is). Not re-entrant.

    >>> rng = PrivateRNG(0, "cuda:0")
    >>> with rng:
    ...     model(x)  # dropout masks from the private stream
    """

    def __init__(self, seed: int, device: str | torch.device = "cpu") -> None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.devices: list[torch.device] = [torch.device("cpu")]
        if device.type == "cuda":
            self.devices.append(device)
        self.states: dict[torch.device, Tensor] = {
            d: _seeded_device_rng_state(seed, d)
            if d.type == "cuda"
            else make_generator(seed).get_state()
            for d in self.devices
        }
        self._saved: dict[torch.device, Tensor] | None = None

    @staticmethod
    def _get(device: torch.device) -> Tensor:
        return _device_rng_state(device) if device.type == "cuda" else torch.get_rng_state()

    @staticmethod
    def _set(state: Tensor, device: torch.device) -> None:
        if device.type == "cuda":
            _set_device_rng_state(state, device)
        else:
            torch.set_rng_state(state)

    def __enter__(self) -> PrivateRNG:
        if self._saved is not None:
            raise RuntimeError("PrivateRNG is not re-entrant")
        self._saved = {d: self._get(d) for d in self.devices}
        for d in self.devices:
            self._set(self.states[d], d)
        return self

    def __exit__(self, *exc: object) -> None:
        saved, self._saved = self._saved, None
        assert saved is not None
        self.states = {d: self._get(d) for d in self.devices}
        for d in self.devices:
            self._set(saved[d], d)


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


def first_nonfinite(tensors: Iterable[tuple[str, Tensor]]) -> str | None:
    """The name of the first floating tensor of ``(name, tensor)`` pairs holding NaN/inf, else
    None; one device synchronisation for them all."""
    named = [(name, t) for name, t in tensors if t.is_floating_point()]
    if not named:
        return None
    dev = named[0][1].device
    finite = torch.stack([torch.isfinite(t.detach()).all().to(dev) for _, t in named]).cpu()
    bad = (~finite).nonzero()
    return named[int(bad[0])][0] if len(bad) else None


def nonfinite_weights(model: nn.Module) -> str | None:
    """The name of the first floating parameter or buffer of ``model`` holding NaN/inf, else
    None; one device synchronisation for the whole model."""
    return first_nonfinite([*model.named_parameters(), *model.named_buffers()])


#: How many images the up-front finiteness checks run a model on (attacks, detectors).
CHECK_IMAGES = 64

#: What to do about a broken model (the end of the one-line messages below).
BROKEN_HINT = "it is broken: retrain it (e.g. with a lower learning rate)"


def nonfinite_outputs_message(what: str, hint: str = BROKEN_HINT) -> str:
    """The one-line message for a model whose outputs on ``what`` inputs hold NaN/inf."""
    return f"the model outputs non-finite values (NaN/inf) on {what} inputs; {hint}"


def check_finite_outputs(
    model: nn.Module,
    x: Tensor,
    what: str,
    error: type[EviltwinsError] = DataError,
    hint: str = BROKEN_HINT,
) -> None:
    """Refuse a broken model up front: raise ``error`` (one line ending with ``hint``) when a
    parameter or buffer of ``model`` holds NaN/inf, or when its outputs (eval mode, no
    gradients) on the images ``x`` do. ``what`` names the inputs (e.g. the dataset's name).

    The one check shared by the attacks (before attacking) and the detectors (before
    inspecting or calibrating), so no verdict or metric is ever computed from NaN logits (a
    NaN row's argmax is class 0, which would read as a perfect attack on target 0).
    """
    name = nonfinite_weights(model)
    if name is not None:
        raise error(f"the model has non-finite weights (NaN/inf in {name}); {hint}")
    if not len(x):
        return
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x.to(device_of(model)))
    except RuntimeError as err:
        raise DataError(
            f"the model cannot take {what} images of shape {tuple(x.shape[1:])}: "
            f"{' '.join(str(err).split())[:200]}"
        ) from None
    if not bool(torch.isfinite(out).all()):
        raise error(nonfinite_outputs_message(what, hint))


def one_line(err: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def described(x: Any) -> str:
    """How a message names a value that should have been a tensor: its shape, else its type."""
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


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
    from importlib.metadata import version

    from eviltwins.version import __version__

    return {
        "eviltwins": __version__,
        "torch": torch.__version__,
        "torchvision": version("torchvision"),  # no import: it costs ~160 MB of memory
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Measure the peak memory of the block in MiB (``out["peak_mb"]``, set on exit): the
    CUDA allocator's peak on a GPU; on CPU the process's resident-set high-water mark (reset
    at entry through ``/proc/self/clear_refs``, so it includes what the process held before:
    the libraries, the model, the data). ``None`` where neither can be read (not Linux)."""
    out: dict[str, float | None] = {"peak_mb": None}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident set
    except OSError:
        yield out
        return
    yield out
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as fh:
            line = next(x for x in fh if x.startswith("VmHWM:"))
        out["peak_mb"] = round(int(line.split()[1]) / 1024, 1)
