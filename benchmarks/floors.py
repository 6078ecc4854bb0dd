"""The eager floor and the hardware floor of one benchmark row (see ``benchmarks/__init__.py``).

A method's work is described as :class:`Phase` es: ``count`` iterations of one kind of pass at one
batch size. Kinds:

* ``fwd``: a forward pass without autograd (eval mode);
* ``bwd_input``: ``x.requires_grad_(True); model(x) -> scalar -> backward`` with the weights
  frozen (no weight gradient; eval mode): forward plus backward to the input, as a trigger
  optimisation does;
* ``train``: a re-training step: forward (train mode, dropout on), cross-entropy, backward with
  the weight gradients, one SGD step (momentum 0.9, Nesterov, weight decay 2e-4, as the attacks'
  re-training), on a private copy of the model.

:func:`time_phase` times a few iterations of one (kind, batch) in plain eager PyTorch and counts
the FLOPs of one iteration with :class:`torch.utils.flop_counter.FlopCounterMode`; the floor of a
phase is ``count`` x the per-iteration time (linear extrapolation), its FLOPs ``count`` x the
per-iteration FLOPs. :func:`measure_peak` times a large fp32 matmul for the hardware peak.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

KINDS = ("fwd", "bwd_input", "train")


@dataclass(frozen=True)
class Phase:
    """``count`` iterations (may be fractional: a total of images / batch) of a ``kind`` pass
    at ``batch`` images; ``name`` says which part of the method it stands for."""

    name: str
    kind: str
    batch: int
    count: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"phase kind must be one of {KINDS}; got {self.kind!r}")
        if self.batch < 1 or self.count < 0:
            raise ValueError(f"phase {self.name!r}: batch >= 1 and count >= 0 needed")


@dataclass(frozen=True)
class Timing:
    """Seconds and FLOPs of one iteration of a (kind, batch), and how many iterations were
    timed to get the seconds."""

    seconds: float
    flops: int
    timed_iters: int


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) so a clock read after it sees finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_for(x: Tensor, batch: int, device: torch.device) -> Tensor:
    """``batch`` images cycled from ``x`` (real images: same data path as the method)."""
    idx = torch.arange(batch) % len(x)
    return x[idx].to(device)


def step_fn(kind: str, model: nn.Module, x: Tensor, num_classes: int) -> Callable[[], None]:
    """One iteration of ``kind`` on ``x`` (see the module docstring); the model is left as
    found (a ``train`` step runs on a private copy)."""
    if kind == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                model(x)

        return fwd
    if kind == "bwd_input":
        params = list(model.parameters())

        def bwd_input() -> None:
            was = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad_(False)
            try:
                xi = x.detach().clone().requires_grad_(True)
                model(xi).sum().backward()
            finally:
                for p, w in zip(params, was, strict=True):
                    p.requires_grad_(w)

        return bwd_input
    net = copy.deepcopy(model).train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=2e-4)
    y = torch.randint(0, num_classes, (len(x),), generator=torch.Generator().manual_seed(0))
    y = y.to(x.device)

    def train() -> None:
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train


def iteration_flops(fn: Callable[[], None]) -> int:
    """FLOPs of one call of ``fn`` (FlopCounterMode: convolutions and matmuls)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def time_phase(
    model: nn.Module,
    x: Tensor,
    kind: str,
    batch: int,
    num_classes: int,
    *,
    min_iters: int = 20,
    min_seconds: float = 3.0,
    max_iters: int | None = None,
) -> Timing:
    """Time ``kind`` at ``batch`` on ``model`` in plain eager PyTorch: one iteration under the
    FLOP counter and one warm-up, then iterations until ``min_iters`` ran or ``min_seconds``
    passed (never more than ``max_iters``: what the method itself runs); returns the mean
    seconds per timed iteration and the FLOPs of one."""
    device = next(model.parameters()).device
    xb = images_for(x, batch, device)
    was_training = model.training
    model.eval()
    try:
        fn = step_fn(kind, model, xb, num_classes)
        flops = iteration_flops(fn)  # also the first warm-up
        cap = max(1, max_iters) if max_iters is not None else None
        if cap is None or cap > 1:
            fn()
        n = 0
        sync(device)
        start = time.perf_counter()
        while True:
            fn()
            n += 1
            if cap is not None and n >= cap:
                break
            if n >= min_iters or time.perf_counter() - start >= min_seconds:
                break
        sync(device)
        seconds = (time.perf_counter() - start) / n
    finally:
        model.train(was_training)
    return Timing(seconds, flops, n)


def time_phases(
    model: nn.Module,
    x: Tensor,
    phases: Iterable[Phase],
    num_classes: int,
    timings: dict[tuple[str, int], Timing] | None = None,
    **kw: float,
) -> dict[tuple[str, int], Timing]:
    """Time every (kind, batch) of ``phases`` not yet in ``timings`` (which is updated and
    returned); ``kw`` go to :func:`time_phase`."""
    timings = {} if timings is None else timings
    for ph in phases:
        key = (ph.kind, ph.batch)
        if key not in timings and ph.count > 0:
            timings[key] = time_phase(
                model, x, ph.kind, ph.batch, num_classes, max_iters=math.ceil(ph.count), **kw
            )
    return timings


def floor_of(phases: Iterable[Phase], timings: dict[tuple[str, int], Timing]) -> dict:
    """The eager floor (s), the FLOPs and the per-phase breakdown of ``phases``."""
    rows, seconds, flops = [], 0.0, 0.0
    for ph in phases:
        t = timings.get((ph.kind, ph.batch))
        s = ph.count * t.seconds if t else 0.0
        f = ph.count * t.flops if t else 0.0
        seconds += s
        flops += f
        rows.append(
            {
                **asdict(ph),
                "iter_s": t.seconds if t else 0.0,
                "iter_flops": t.flops if t else 0,
                "timed_iters": t.timed_iters if t else 0,
                "floor_s": s,
            }
        )
    return {"floor_s": seconds, "flops": flops, "phases": rows}


def measure_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> dict:
    """The fp32 peak of ``device`` (FLOP/s): best of ``repeats`` timings of an n x n @ n x n
    matmul (2 n^3 FLOPs; n = 2048 on CPU, 8192 on CUDA by default), after one warm-up."""
    n = n or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g).to(device)
    b = torch.rand(n, n, generator=g).to(device)
    if device.type == "cuda":
        allow = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 peak, not TF32's
    try:
        a @ b
        sync(device)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = allow
    return {"device": str(device), "n": n, "seconds": best, "flops_per_s": 2 * n**3 / best}
