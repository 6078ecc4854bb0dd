"""NeuralCleanse's optimisation loop: every label's mask and pattern in one batched pass per
step, with Wang et al.'s cost schedule and early stop per label and the optional label schedule
(:mod:`eviltwins.detectors.nc_schedule`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Generator, Tensor, nn

from eviltwins.detectors.nc_schedule import (
    CostState,
    default_keep,
    labels_to_finish,
    next_cost,
    projected_norms,
    screen_counts,
    screen_norms,
)
from eviltwins.errors import OptimisationError
from eviltwins.models.layout import passes
from eviltwins.utils import progress


def reverse_labels(
    det: Any,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    labels: list[int],
    g: Generator,
    fast: bool,
    dtype: torch.dtype | None = None,
) -> tuple[list[float], Tensor, Tensor, list[float], list[int], dict[str, Any]]:
    """Batched reverse engineering of the triggers of ``labels`` by the NeuralCleanse (or
    TABOR) ``det``, with its settings and its ``_pass`` (Wang et al., Alg. 1):
    ``det.budget_steps()`` steps per label (or the label schedule's share), cycling through
    ``x``; returns the norms, masks, patterns, success rates of the best masks, the steps
    each label ran and what the label schedule did."""
    n_lab, (c, h, w), dev = len(labels), x.shape[1:], x.device
    # tanh parameters, initialised at random like the original (uniform in [0, 1] space).
    w_m = torch.atanh((torch.rand(n_lab, 1, h, w, generator=g) * 2 - 1) * 0.999).to(dev)
    w_p = torch.atanh((torch.rand(n_lab, c, h, w, generator=g) * 2 - 1) * 0.999).to(dev)
    w_m.requires_grad_(True)
    w_p.requires_grad_(True)
    opt = torch.optim.Adam([w_m, w_p], lr=det.lr, betas=(0.5, 0.9))
    target = torch.tensor(labels, device=dev)
    n_batches = math.ceil(len(x) / det.batch_size)  # per pass over the available x
    budget = det.budget_steps()
    check_every = det.resolved("check_every") or det.steps_per_epoch()
    patience = det.resolved("patience")
    es_patience = det.early_stop_patience or 2 * patience
    inf = float("inf")
    sched = CostState.start(n_lab, dev)
    best_l1 = torch.full((n_lab,), inf, device=dev)
    best_m = torch.zeros(n_lab, 1, h, w, device=dev)
    best_p = torch.zeros(n_lab, c, h, w, device=dev)
    best_succ = torch.zeros(n_lab, device=dev)
    es_cnt = torch.zeros(n_lab, dtype=torch.long, device=dev)
    es_best = torch.full((n_lab,), inf, device=dev)
    active = torch.ones(n_lab, dtype=torch.bool, device=dev)
    steps_run = torch.zeros(n_lab, dtype=torch.long, device=dev)
    acc_sum = torch.zeros(n_lab, device=dev)
    l1_sum = torch.zeros(n_lab, device=dev)
    seen = 0
    ids = torch.arange(n_lab, device=dev)  # the labels still active
    screen_at, keep = det.screen_at(check_every), det.keep or default_keep(n_lab)
    screen = finish = unfinished = None
    per_pass = det.pass_images_on(dev, h * w, dtype)
    bar = progress(
        total=budget, desc=f"{det.name} labels {labels[0]}..{labels[-1]}", quiet=det.quiet
    )
    step = 0
    while step < budget and active.any():  # passes over x, cycling until the budget
        order = torch.randperm(len(x), generator=g).to(dev)
        for b in range(n_batches):
            if step >= budget or not active.any():
                break
            rows = order[b * det.batch_size : (b + 1) * det.batch_size]
            xb, yb = x[rows], y[rows]
            # passes of at most ``per_pass`` images: whole labels, or one label's images in
            # chunks, each chunk's loss weighted by its share of the batch; the loss is a sum
            # of per-label terms, so the passes' gradients add up to the one-batch gradient
            opt.zero_grad(set_to_none=True)
            acc = torch.zeros(len(ids), device=dev)
            l1 = torch.empty(len(ids), device=dev)
            for at, s in passes(torch.arange(len(ids), device=dev), len(xb), per_pass):
                share = (s.stop - s.start) / len(xb)
                acc_k, l1_k, loss_k = det._pass(
                    model, xb[s], yb[s], w_m, w_p, ids[at], target, sched.cost, fast, dtype, share
                )
                if not math.isfinite(loss_k):
                    bar.close()
                    raise OptimisationError(
                        f"{type(det).__name__} diverged at step {step + 1} (loss {loss_k}): "
                        "the model's outputs on stamped inputs are NaN/inf or huge; check the "
                        f"model, or lower lr (now {det.lr:g})"
                    )
                acc[at] += acc_k * share
                l1[at] = l1_k
            opt.step()
            acc_sum[ids] += acc
            l1_sum[ids] += l1
            steps_run[ids] += 1
            seen += 1
            step += 1
            bar.update(1)
            if seen < check_every:
                continue
            with torch.no_grad():
                avg_acc, avg_l1 = acc_sum / seen, l1_sum / seen
                acc_sum.zero_()
                l1_sum.zero_()
                seen = 0
                ok = avg_acc >= det.success
                # best mask: smallest L1 among successful checks (current parameters)
                better = active & ok & (avg_l1 < best_l1)
                if better.any():
                    best_l1[better] = avg_l1[better]
                    best_m[better] = (torch.tanh(w_m[better]) + 1) / 2
                    best_p[better] = (torch.tanh(w_p[better]) + 1) / 2
                    best_succ[better] = avg_acc[better]
                # early stop
                has_best = best_l1 < inf
                stalled = best_l1 >= det.early_stop_threshold * es_best
                es_cnt = torch.where(has_best & stalled, es_cnt + 1, torch.zeros_like(es_cnt))
                es_best = torch.minimum(es_best, best_l1)
                if det.early_stop:
                    done = sched.up_flag & sched.down_flag & (es_cnt >= es_patience)
                    active &= ~done
                    ids = active.nonzero().squeeze(1)
                if step == screen_at:  # k-arm: the rest of the budget to the best labels
                    screen = screen_norms(best_l1, avg_l1)
                    counts = screen_counts(screen.tolist(), h * w)
                    finish = labels_to_finish(screen, active, keep, det.threshold, counts)
                    unfinished = active & ~finish
                    active &= finish
                    ids = active.nonzero().squeeze(1)
                sched = next_cost(sched, ok, det.init_cost, patience)  # cost schedule
            bar.set_postfix(active=int(active.sum()))
    bar.close()
    with torch.no_grad():
        final_m = (torch.tanh(w_m) + 1) / 2
        final_p = (torch.tanh(w_p) + 1) / 2
        none = best_l1 == inf  # never reached the success rate: report the final mask
        best_m[none] = final_m[none]
        best_p[none] = final_p[none]
        norms = best_m.abs().sum(dim=(1, 2, 3))
        info: dict[str, Any] = {"screen_at": screen_at, "unfinished": [], "shrink": None}
        if screen is not None:
            info["shrink"] = projected_norms(norms, screen, finish, unfinished)
            info["unfinished"] = [labels[i] for i in unfinished.nonzero().flatten().tolist()]
            info["screen_norms"] = screen.tolist()
        elif screen_at is not None:  # every label stopped before the screen: its end norm
            info["shrink"], info["screen_norms"] = 1.0, norms.tolist()
    return norms.tolist(), best_m, best_p, best_succ.tolist(), steps_run.tolist(), info


__all__ = ["reverse_labels"]
