"""ABS step 3's optimisation loop (Liu et al., CCS 2019, trigger reverse engineering): every
candidate's mask and pattern optimised together, in passes of bounded size, on all the seed
images or on a class-balanced batch of them per step, with the optional candidate schedule
(:mod:`eviltwins.detectors.abs_schedule`).

Passes: the loss is a sum of per-candidate terms, each a sum over the seed images, so the
gradient of a step is the sum of the gradients of any partition of the (candidate, image)
pairs. A pass holds whole candidates while their images fit in one pass
(:func:`~eviltwins.models.layout.pass_size`); beyond that (large images, many seeds) one
candidate's images are split over passes, and its mask penalty enters with the first of them
only.

Seed batches (``seed_batch``): with every seed image in every step (TrojanZoo's ABS, and the
default) the cost of a step grows with the number of classes (``seeds_per_class`` images per
class), and so does the weight of the summed activations against the mask penalty. The
original ABS code instead runs its re-mask optimisation over mini-batches of the seed images
(``re_batch_size``, 80 in its TrojAI round-1 configuration); ``seed_batch`` does the same: each
step takes the next ``seed_batch`` images of a fixed cycle that interleaves the classes
(:func:`seed_cycle`), so every batch covers the classes evenly and every seed is used in turn.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Generator, Tensor, nn

from eviltwins.detectors.abs_remask import project_mask, remask_loss
from eviltwins.detectors.abs_schedule import reasr, screen_candidates
from eviltwins.errors import OptimisationError
from eviltwins.models import feature_tap
from eviltwins.models.layout import pass_size, passes
from eviltwins.models.precision import autocast
from eviltwins.triggers import stamp
from eviltwins.utils import progress


def seed_cycle(ys: Tensor) -> Tensor:
    """The order in which ``seed_batch`` steps visit the seed images (labels ``ys``): the first
    image of every class, then the second of every class, and so on, so that any run of
    consecutive entries covers the classes evenly."""
    labels, order = ys.sort(stable=True)
    counts = torch.bincount(labels)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(ys), device=ys.device) - starts[labels]  # rank within its class
    return order[(rank * (int(labels.max()) + 1) + labels).argsort()]


def step_seeds(cycle: Tensor, step: int, batch: int | None) -> Tensor:
    """The seed indices of ``step``: all of ``cycle`` when ``batch`` is None or covers it, else
    the step's ``batch`` consecutive entries of the cycle (wrapping around)."""
    if batch is None or batch >= len(cycle):
        return cycle
    at = (step * batch + torch.arange(batch, device=cycle.device)) % len(cycle)
    return cycle[at]


def reverse_candidates(
    det: Any,
    model: nn.Module,
    layer: str,
    cands: list[tuple[int, int]],
    seeds: tuple[Tensor, Tensor],
    held_out: tuple[Tensor, Tensor],
    g: Generator,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, list[float], list[int]]:
    """Steps 3-4 for the ABS ``det`` (its settings: ``steps``, ``lr``, ``mask_bound``,
    ``seed_batch``, the schedule): batched trigger reverse engineering for every candidate
    (or, with the ``k-arm`` schedule, the screen's survivors), projection of each mask onto the
    bound, then REASR on ``held_out`` with the projected masks; returns the masks, patterns,
    REASRs and the indices of the candidates left unfinished."""
    xs, ys = seeds
    c, h, w = xs.shape[1:]
    if not cands:
        return torch.zeros(0, 1, h, w), torch.zeros(0, c, h, w), [], []
    n_k, dev = len(cands), xs.device
    chans = torch.tensor([n for n, _ in cands], device=dev)
    labels = torch.tensor([lab for _, lab in cands], device=dev)
    w_m = torch.atanh(torch.rand(n_k, 1, h, w, generator=g) * 0.2 - 0.9).to(dev)
    w_p = torch.atanh((torch.rand(n_k, c, h, w, generator=g) * 2 - 1) * 0.99).to(dev)
    w_m.requires_grad_(True)
    w_p.requires_grad_(True)
    opt = torch.optim.Adam([w_m, w_p], lr=det.lr, betas=(0.5, 0.9))
    bound = det.mask_bound * h * w
    rows = torch.arange(n_k, device=dev)
    batched = det.seed_batch is not None and det.seed_batch < len(xs)
    cycle = seed_cycle(ys) if batched else None
    per_pass = pass_size(dev, h * w, dtype)
    bar = progress(total=det.steps, desc="abs reverse-engineering", quiet=det.quiet)
    screen_at = det.screen_at()
    held = None  # the unfinished candidates' screen parameters
    for step in range(det.steps):
        if step == screen_at:
            held = screen_candidates(
                model, (xs, ys), w_m, w_p, labels, bound, (det.keep, det.threshold), dtype
            )
            rows = (~held[0]).nonzero().flatten()
        xb = xs[step_seeds(cycle, step, det.seed_batch)] if cycle is not None else xs
        late = step >= det.steps // 2  # the label's logit joins in the second half
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for ks, images in passes(rows, len(xb), per_pass):
            total += float(
                remask_step(
                    model,
                    layer,
                    xb[images],
                    (w_m, w_p, ks),
                    (chans, labels, bound, det.mask_size),
                    late,
                    penalty=images.start == 0,
                    dtype=dtype,
                )
            )
        if not math.isfinite(total):
            bar.close()
            raise OptimisationError(
                f"ABS reverse-engineering diverged at step {step + 1} (loss {total}); "
                f"lower lr (now {det.lr:g}) or check the model"
            )
        opt.step()
        bar.update(1)
    bar.close()
    unfinished: list[int] = []
    with torch.no_grad():
        if held is not None:  # Adam's momentum moved them: back to the screen's triggers
            stop, w_m[stop], w_p[stop] = held[0], held[1], held[2]
            unfinished = stop.nonzero().flatten().tolist()
        m = project_mask((torch.tanh(w_m) + 1) / 2, bound)
        p = (torch.tanh(w_p) + 1) / 2
        rates = reasr(model, m, p, labels, *held_out, dtype)
    return m.cpu(), p.cpu(), rates, unfinished


def remask_step(
    model: nn.Module,
    layer: str,
    xb: Tensor,
    params: tuple[Tensor, Tensor, Tensor],
    setting: tuple[Tensor, Tensor, float, str],
    late: bool,
    penalty: bool = True,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Step 3's loss (:func:`~eviltwins.detectors.abs_remask.remask_loss`) of candidates ``ks``
    on the images ``xb``, back-propagated into their rows of ``w_m`` / ``w_p`` (``params`` =
    (w_m, w_p, ks); ``setting`` = every candidate's channel and label, the mask bound and the
    mask-size measure); ``late``: the label's logit joins; ``penalty``: the mask penalty is
    added (once per candidate and step). Returns the loss (detached)."""
    w_m, w_p, ks = params
    chans, labels, bound, mask_size = setting
    c, h, w = xb.shape[1:]
    m = (torch.tanh(w_m[ks]) + 1) / 2
    p = (torch.tanh(w_p[ks]) + 1) / 2
    stamped = stamp(xb[None], m[:, None], p[:, None])
    with feature_tap(model, layer) as tap, autocast(xb.device, dtype):
        logits = model(stamped.reshape(-1, c, h, w))
    loss = remask_loss(
        tap["out"].float(),
        chans[ks],
        m,
        bound,
        logits.float() if late else None,
        labels[ks] if late else None,
        mask_size,
        penalty=penalty,
    ).sum()
    if torch.isfinite(loss):
        loss.backward()
    return loss.detach()


__all__ = [
    "remask_step",
    "reverse_candidates",
    "seed_cycle",
    "step_seeds",
]
