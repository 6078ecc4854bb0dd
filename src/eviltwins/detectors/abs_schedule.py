"""ABS's trigger success measures and its candidate schedule: REASR (step 4), and the screen
that spends the reverse-engineering budget on the candidates whose triggers already work
(after K-Arm, Shen et al., ICML 2021).

Candidate schedule ``k-arm``: every candidate's trigger is optimised for ``screen_steps``; then
only the ``keep`` candidates whose triggers (projected onto the mask bound) send the largest
share of the seed images of other labels to their label, and any whose share already reaches
the REASR threshold, get the remaining steps (:func:`candidates_to_finish`). Each candidate's
loss depends only on its own mask and pattern, and Adam updates each element on its own, so
a finished candidate runs exactly the steps it runs with the whole budget; the others keep
their screen triggers, whose REASR the report gives (marked unfinished).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eviltwins.detectors.abs_remask import project_mask
from eviltwins.detectors.abs_stimulation import forward_images
from eviltwins.errors import DataError
from eviltwins.models.precision import autocast
from eviltwins.triggers import stamp
from eviltwins.utils import nonfinite_outputs_message

#: ABS's candidate schedules: every candidate the whole budget, or K-Arm-style scheduling.
CANDIDATE_SCHEDULES = ("full", "k-arm")


@torch.no_grad()
def reasr(
    model: nn.Module,
    masks: Tensor,
    patterns: Tensor,
    labels: Tensor,
    x: Tensor,
    y: Tensor,
    dtype: torch.dtype | None = None,
) -> list[float]:
    """Per candidate k, the share of the images ``x`` of labels other than ``labels[k]`` that
    the trigger (``masks[k]``, already projected onto the bound, and ``patterns[k]``) sends to
    ``labels[k]`` (Liu et al.'s REASR, step 4)."""
    out = []
    per = forward_images(x)
    for k in range(len(masks)):
        rows = (y != labels[k]).nonzero().flatten()  # indices: no copy of the images
        hits = 0
        for i in range(0, len(rows), per):
            with autocast(x.device, dtype):
                logits = model(stamp(x[rows[i : i + per]], masks[k], patterns[k])).float()
            if not bool(torch.isfinite(logits).all()):
                raise DataError(nonfinite_outputs_message("trigger-stamped held-out"))
            hits += int((logits.argmax(1) == labels[k]).sum())
        out.append(hits / len(rows) if len(rows) else 0.0)
    return out


def candidates_to_finish(success: Tensor, keep: int, threshold: float) -> Tensor:
    """The candidates that get the rest of the budget after the screen: the ``keep`` whose
    triggers reach the largest seed success (ties: the earlier, better-ranked candidate) and
    every one at or above ``threshold``."""
    finish = success >= threshold
    order = sorted(range(len(success)), key=lambda i: (-float(success[i]), i))
    finish[order[:keep]] = True
    return finish


@torch.no_grad()
def screen_candidates(
    model: nn.Module,
    seeds: tuple[Tensor, Tensor],
    w_m: Tensor,
    w_p: Tensor,
    labels: Tensor,
    bound: float,
    rule: tuple[int, float],
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k-arm`` screen: each candidate's trigger (tanh parameters ``w_m`` / ``w_p``, mask
    projected onto ``bound``) scored by the share of the seed images (``seeds``: images,
    labels) of other labels it sends to its label; ``rule`` = (keep, threshold) of
    :func:`candidates_to_finish`. Returns which candidates stop here and copies of their
    parameters."""
    m = project_mask((torch.tanh(w_m) + 1) / 2, bound)
    p = (torch.tanh(w_p) + 1) / 2
    success = torch.tensor(reasr(model, m, p, labels, *seeds, dtype))
    stop = ~candidates_to_finish(success, *rule).to(w_m.device)
    return stop, w_m[stop].clone(), w_p[stop].clone()


__all__ = [
    "CANDIDATE_SCHEDULES",
    "candidates_to_finish",
    "reasr",
    "screen_candidates",
]
