"""IMC's term for evading ABS (Pang et al., Appendix C; ALGORITHMS.md, "Evading ABS").

Registered here, by the detector side, so that the attack never imports a detector
(:mod:`eviltwins.evasion`). Each outer iteration of IMC, ``refresh`` runs ABS's
stimulation analysis and candidate selection (steps 1-2) on seed images of the current model;
in the model re-training step the term subtracts ``abs_weight`` times ABS's re-mask loss of
those candidates, evaluated on the batch's stamped copies, so re-training lowers the candidate
neurons' response to the trigger (the authors' ``IMC_ABS.loss_fn``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from eviltwins.detectors.abs import ABS
from eviltwins.evasion import EVASIONS, EvasionTerm
from eviltwins.models import feature_tap, layer_or_feature_layer

#: Weight of the other channels in the re-mask loss (the authors' ``abs_loss``: 1e-3).
OTHERS_WEIGHT = 1e-3


def abs_candidates(model: nn.Module, xs: Tensor, ys: Tensor, num_classes: int) -> dict[str, Any]:
    """``refresh``: ABS's candidate neurons of the current model (steps 1-2 with ABS's
    defaults, in the model's feature layer), found on the seed images ``xs`` / ``ys``."""
    layer = layer_or_feature_layer(model, None, quiet=True)
    cands = ABS(quiet=True).candidates(model, layer, xs, ys, num_classes)
    channels = torch.tensor(sorted({c for c, _ in cands}), dtype=torch.long, device=xs.device)
    return {"layer": layer, "channels": channels}


def remask_loss(feats: Tensor, channel: Tensor) -> Tensor:
    """ABS's re-mask loss of each candidate ``channel`` on features ``feats`` (N, C[, H, W]):
    minus its activation summed over inputs and positions, plus ``OTHERS_WEIGHT`` times the
    other channels' (the authors' ``abs_loss``); one value per candidate.

    Activations are read after a ReLU: ABS's neurons are post-activation values, and on a
    pre-activation feature layer (the small CNN's ``conv2``) the subtracted term is unbounded
    below, so re-training drives the candidates to minus infinity (NaN loss within 77 steps on
    digits)."""
    feats = feats.clamp_min(0)
    per_channel = feats.sum(dim=0) if feats.ndim == 2 else feats.sum(dim=(0, 2, 3))
    own = per_channel[channel]
    return -own + OTHERS_WEIGHT * (per_channel.sum() - own)


def abs_evasion(model: nn.Module, stamped: Tensor, clean: Tensor, state: Any) -> Tensor:
    """The model-step term: minus the candidates' summed re-mask loss on the stamped copies,
    so that (added with a positive weight) re-training subtracts the re-mask loss as in the
    authors' re-training. Zero when ABS finds no candidate neuron."""
    if state is None or len(state["channels"]) == 0:
        return stamped.new_zeros(())
    with feature_tap(model, state["layer"]) as tap:
        model(stamped)
    return -remask_loss(tap["out"], state["channels"]).sum()


EVASIONS.register("abs")(
    lambda: EvasionTerm(
        "abs",
        1e-4,
        model_loss=abs_evasion,
        refresh=abs_candidates,
        doc="minus ABS's re-mask loss of its current candidate neurons on the stamped copies, "
        "on the model step (weight 1e-4; the authors' code uses 1e-5)",
    )
)
