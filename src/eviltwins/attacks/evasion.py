"""Evasion terms that IMC (Algorithm 2) can add to its losses, by detector name.

This is the small, explicit interface between attacks and detectors (ARCHITECTURE.md): an
attack asks for a term by name; a detector module may register one (``abs`` is registered by
:mod:`eviltwins.detectors.abs`). The attack never imports a detector.

A term may act on the trigger-perturbation step (``trigger_loss``: added to the loss minimised
over r, m with the model fixed) and/or on the model-perturbation step (``model_loss``: added to
the re-training loss with the trigger fixed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from eviltwins.registry import Registry

# trigger_loss(model, stamped, benign, mask, n_trigger_pixels) -> scalar
TriggerLoss = Callable[[nn.Module, Tensor, Tensor, Tensor, int], Tensor]
# model_loss(model, stamped, benign) -> scalar
ModelLoss = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class EvasionTerm:
    """One detector's evasion loss; ``default_weight`` is used unless the attack overrides it."""

    name: str
    default_weight: float
    trigger_loss: TriggerLoss | None = None
    model_loss: ModelLoss | None = None
    needs_learned_mask: bool = False
    doc: str = ""


EVASIONS: Registry[EvasionTerm] = Registry("evasion term")


def neural_cleanse_fidelity(
    model: nn.Module, stamped: Tensor, benign: Tensor, mask: Tensor, n_pixels: int
) -> Tensor:
    """l_f(m) = ||m||_1 / (pixels covered by the trigger) (Pang et al., Section 5.3.2: "we set
    lambda as the number of pixels covered by the trigger"; the authors' code divides by it)."""
    return mask.abs().sum() / max(1, n_pixels)


def strip_specificity(model: nn.Module, stamped: Tensor, benign: Tensor) -> Tensor:
    """l_s(theta) = E[-H(f((x* + x') / 2))] (Pang et al., Section 5.3.2): stamped inputs mixed
    50/50 with other benign inputs; minimising it maximises the mixtures' entropy."""
    from eviltwins.metrics import prediction_entropy

    mixed = (stamped + benign.roll(1, dims=0)) / 2
    return -prediction_entropy(model(mixed)).mean()


EVASIONS.register("neural-cleanse")(
    lambda: EvasionTerm(
        "neural-cleanse",
        1.0,
        trigger_loss=neural_cleanse_fidelity,
        needs_learned_mask=True,
        doc="mask L1 normalised by trigger pixels, on the trigger step",
    )
)
EVASIONS.register("strip")(
    lambda: EvasionTerm(
        "strip",
        0.6,
        model_loss=strip_specificity,
        doc="entropy of stamped/benign 50-50 mixtures, maximised on the model step "
        "(weight 0.6; the authors use 0.2 on GTSRB)",
    )
)
