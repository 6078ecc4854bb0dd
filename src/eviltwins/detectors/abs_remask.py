"""ABS step 3 (Liu et al., CCS 2019, trigger reverse engineering): the re-mask loss that
reverse-engineers a trigger per candidate neuron, and the projection of a mask onto its bound."""

from __future__ import annotations

import torch
from torch import Tensor

#: Weight of the other channels' summed activation (original ABS and TrojanZoo: 1e-4).
OTHERS_WEIGHT = 1e-4
#: Mask-penalty weight w within the bound, above it, and above 1.2x it (the original ABS code;
#: TrojanZoo's ``0.01`` / ``remask_weight`` 500 / ``2 * remask_weight``).
MASK_WEIGHTS = (0.01, 500.0, 1000.0)
#: A mask pixel counts as set above this (``mask_size="count"``; ABS's ``mask_epsilon``,
#: TrojanZoo's ``mask_eps``).
MASK_EPS = 0.01
#: Weight of the candidate label's logit, summed over the seed images, in the second half of
#: the optimisation: the original ABS code's ``-1e2 * logits_loss`` (naiyeleo/ABS, TrojAI
#: rounds; the paper's re-mask formula leaves the term out, TrojanZoo drops it). At weight 1
#: the summed activations drown it: on the digits BadNet model the target's REASR fell to 0.72
#: (0.59 at 150 steps), while at 1e2 it is 1.00 and the clean model's largest stays 0.40.
LOGIT_WEIGHT = 100.0
#: How the mask's size is compared with the bound: its L1 norm (default, the w x ||m||_1
#: penalty's own measure) or the count of its pixels above ``MASK_EPS`` (the original ABS and
#: TrojanZoo).
MASK_SIZES = ("l1", "count")


def mask_weight(size: Tensor, bound: float) -> Tensor:
    """The weight w of step 3's ``w * ||m||_1`` per mask: 0.01 while ``size`` <= ``bound``,
    500 above it and 1000 above 1.2 x ``bound``."""
    low, mid, high = (torch.full_like(size, v) for v in MASK_WEIGHTS)
    return torch.where(size > 1.2 * bound, high, torch.where(size > bound, mid, low))


def remask_loss(
    feats: Tensor,
    chans: Tensor,
    mask: Tensor,
    bound: float,
    logits: Tensor | None = None,
    labels: Tensor | None = None,
    mask_size: str = "l1",
    penalty: bool = True,
) -> Tensor:
    """Step 3's loss per candidate (Liu et al., CCS 2019; the original code), summed, not averaged:
    ``-act(candidate) + 1e-4 * sum(act(other channels)) + w * ||m||_1``.

    ``feats`` (K x n, C[, H, W]): the layer's output on the n seed images stamped with each of
    the K candidates' triggers (candidate-major); an activation is summed over the images and
    positions. ``chans`` (K,): each candidate's channel; ``mask`` (K, 1, H, W): its mask; w is
    :func:`mask_weight` of the mask's size (``mask_size``: ``"l1"``, or ``"count"`` of pixels
    above :data:`MASK_EPS` as the original ABS switches it) against ``bound``. With ``logits``
    (K x n, classes) and ``labels`` (K,), :data:`LOGIT_WEIGHT` times each candidate's label
    logit summed over the images is subtracted too (the original ABS code's logits term, used
    in the second half of the optimisation). ``penalty=False`` leaves the ``w * ||m||_1`` term
    out (a pass that holds a later share of a candidate's images: the term enters once).
    Returns K values."""
    k = len(chans)
    per = feats if feats.ndim == 2 else feats.sum(dim=(2, 3))
    per = per.reshape(k, -1, per.shape[1]).sum(1)  # (K, C): summed over images and positions
    rows = torch.arange(k, device=feats.device)
    own = per[rows, chans]
    loss = -own + OTHERS_WEIGHT * (per.sum(1) - own)
    if logits is not None and labels is not None:
        label_logit = logits.reshape(k, -1, logits.shape[-1])[rows, :, labels].sum(1)
        loss = loss - LOGIT_WEIGHT * label_logit
    if not penalty:
        return loss
    l1 = mask.sum(dim=(1, 2, 3))
    size = l1 if mask_size == "l1" else (mask > MASK_EPS).sum(dim=(1, 2, 3)).to(l1.dtype)
    return loss + mask_weight(size.detach(), bound) * l1


def project_mask(mask: Tensor, budget: float) -> Tensor:
    """Project each mask of ``mask`` (K, 1, H, W), values in [0, 1], onto L1 <= ``budget``:
    keep its largest entries while their sum fits, the next one cut to fill the budget
    exactly, and zero the rest. A mask already within the budget is returned unchanged."""
    flat = mask.flatten(1)
    vals, order = flat.sort(dim=1, descending=True)
    before = vals.cumsum(1) - vals  # L1 of the larger entries
    kept = (budget - before).clamp_min(0).minimum(vals)
    out = torch.zeros_like(flat).scatter(1, order, kept)
    # guard the float rounding of the cumulative sum: never above the budget
    scale = (budget / out.sum(1).clamp_min(1e-12)).clamp(max=1.0)
    return (out * scale[:, None]).view_as(mask)


__all__ = [
    "LOGIT_WEIGHT",
    "MASK_EPS",
    "MASK_SIZES",
    "MASK_WEIGHTS",
    "OTHERS_WEIGHT",
    "mask_weight",
    "project_mask",
    "remask_loss",
]
