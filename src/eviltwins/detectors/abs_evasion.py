"""IMC's term for evading ABS (Pang et al., CCS 2020, Appendix C).

Registered here, by the detector side, so that the attack never imports a detector
(:mod:`eviltwins.evasion`). Each outer iteration of IMC, ``refresh`` runs ABS's
stimulation analysis and candidate selection (steps 1-2) on seed images of the current model
and keeps the candidate neurons of the *target* label (the authors' ``IMC_ABS`` takes
``find_min_max(...)[0]``, label 0, their target); in the model re-training step the term
subtracts its weight (``evade={"abs": w}``, default 1e-4) times ABS's re-mask loss of those
candidates, read from the re-training forward itself at the stamped copies' rows (the authors'
``IMC_ABS.loss_fn``), so re-training lowers the candidate neurons' response to the trigger.
When ABS finds no candidate for the target the term is zero: IMC's history records
``abs_candidates`` per outer iteration.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from eviltwins.detectors.abs import ABS
from eviltwins.evasion import EVASIONS, EvasionTerm, StepOutputs
from eviltwins.models import layer_or_feature_layer

#: Weight of the other channels in the re-mask loss. The authors' IMC re-training
#: (``IMC_ABS.abs_loss``, the loss this term reproduces) weighs them 1e-3; ABS's own trigger
#: reverse-engineering (Liu et al., CCS 2019, step 3) uses 1e-4. The term follows the IMC code it
#: stands for; the difference moves a term already scaled by its weight (1e-4) by 1e-3 of
#: the other channels' activation, which is negligible beside the candidates' own.
OTHERS_WEIGHT = 1e-3


def abs_candidates(
    model: nn.Module, xs: Tensor, ys: Tensor, num_classes: int, target: int
) -> dict[str, Any]:
    """``refresh``: ABS's candidate neurons of the current model for label ``target`` (steps
    1-2 with ABS's defaults, in the model's feature layer), found on the seed images ``xs`` /
    ``ys``; ``all`` counts the candidates of every label."""
    layer = layer_or_feature_layer(model, None, quiet=True)
    cands = ABS(quiet=True).candidates(model, layer, xs, ys, num_classes)
    mine = sorted({c for c, label in cands if label == target})
    channels = torch.tensor(mine, dtype=torch.long, device=xs.device)
    return {"layer": layer, "channels": channels, "all": len(cands)}


def abs_record(state: Any) -> dict[str, float]:
    """``record``: how many candidate neurons of the target the term acts on (0: the term is
    zero this outer iteration) and how many ABS found over all labels."""
    return {
        "abs_candidates": float(len(state["channels"])),
        "abs_candidates_all_labels": float(state["all"]),
    }


def abs_tap(state: Any) -> str | None:
    """``model_tap``: the layer whose candidates the term reads (none without candidates)."""
    if state is None or len(state["channels"]) == 0:
        return None
    return state["layer"]


def imc_abs_loss(feats: Tensor, channel: Tensor) -> Tensor:
    """ABS's re-mask loss of each candidate ``channel`` on features ``feats`` (N, C[, H, W]):
    minus its activation summed over inputs and positions, plus ``OTHERS_WEIGHT`` times the
    other channels' (the authors' ``abs_loss``); one value per candidate. The mask's L1 part
    of ABS step 3 does not depend on the model and is left out.

    Activations are read after a ReLU: ABS's neurons are post-activation values, and on a
    pre-activation feature layer (the small CNN's ``conv2``) the subtracted term is unbounded
    below, so re-training drives the candidates to minus infinity (NaN loss within 77 steps on
    digits)."""
    feats = feats.clamp_min(0)
    per_channel = feats.sum(dim=0) if feats.ndim == 2 else feats.sum(dim=(0, 2, 3))
    own = per_channel[channel]
    return -own + OTHERS_WEIGHT * (per_channel.sum() - own)


def abs_evasion(out: StepOutputs, state: Any) -> Tensor:
    """The model-step term: minus the target candidates' summed re-mask loss on the stamped
    copies' features from the re-training forward (``out.stamped_features``), so that (added
    with a positive weight) re-training subtracts the re-mask loss as in the authors'
    re-training. Zero when ABS finds no candidate neuron for the target."""
    if out.stamped_features is None or state is None or len(state["channels"]) == 0:
        return out.logits.new_zeros(())
    return -imc_abs_loss(out.stamped_features, state["channels"]).sum()


EVASIONS.register("abs")(
    lambda: EvasionTerm(
        "abs",
        1e-4,
        model_loss=abs_evasion,
        model_tap=abs_tap,
        refresh=abs_candidates,
        record=abs_record,
        doc="minus ABS's re-mask loss of its current candidate neurons for the target on the "
        "stamped copies, on the model step (weight 1e-4; the authors' code uses 1e-5)",
    )
)
