"""Evasion terms that IMC (Algorithm 2) can add to its losses, by detector name.

This is the small, explicit interface between attacks and detectors (ARCHITECTURE.md): an
attack asks for a term by name; a detector module may register one (``abs`` is registered by
:mod:`eviltwins.detectors.abs_evasion`). The attack never imports a detector.

A term may act on the trigger-perturbation step (``trigger_loss``: added to the loss minimised
over r, m with the model fixed) and/or on the model-perturbation step (``model_loss``: added to
the re-training loss with the trigger fixed). Following the authors' re-training
(ALGORITHMS.md, "Evading STRIP" and "Evading ABS"), a model-step term is evaluated only on the
re-training batches that carry stamped copies, and it receives the batch's *clean* rows and
their stamped copies separately, so it can never stamp an input twice or pair two stamped
inputs. A term whose model loss depends on the current model's state (ABS's candidate neurons)
declares ``refresh``: IMC calls it once per outer iteration, before the model step, on seed
images from the training split, and passes what it returns to ``model_loss`` as ``state``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from eviltwins.metrics import prediction_entropy
from eviltwins.registry import Registry

# trigger_loss(model, stamped, benign, mask, n_trigger_pixels) -> scalar
TriggerLoss = Callable[[nn.Module, Tensor, Tensor, Tensor, int], Tensor]
# model_loss(model, stamped, clean, state) -> scalar; stamped[i] = psi(clean[i]), stamped once
ModelLoss = Callable[[nn.Module, Tensor, Tensor, Any], Tensor]
# refresh(model, seed_x, seed_y, num_classes) -> state passed to model_loss
Refresh = Callable[[nn.Module, Tensor, Tensor, int], Any]


@dataclass(frozen=True)
class EvasionTerm:
    """One detector's evasion loss; ``default_weight`` (non-negative) is used unless the
    attack overrides it. The weighted loss is always added: a term that the authors subtract
    (ABS's re-mask loss) returns its negation."""

    name: str
    default_weight: float
    trigger_loss: TriggerLoss | None = None
    model_loss: ModelLoss | None = None
    refresh: Refresh | None = None
    needs_learned_mask: bool = False
    doc: str = ""


EVASIONS: Registry[EvasionTerm] = Registry("evasion term")


def neural_cleanse_fidelity(
    model: nn.Module, stamped: Tensor, benign: Tensor, mask: Tensor, n_pixels: int
) -> Tensor:
    """l_f(m) = ||m||_1 / (pixels covered by the trigger) (Pang et al., Section 5.3.2: "we set
    lambda as the number of pixels covered by the trigger"; the authors' code divides by it)."""
    return mask.abs().sum() / max(1, n_pixels)


def strip_specificity(
    model: nn.Module, stamped: Tensor, clean: Tensor, state: Any = None
) -> Tensor:
    """l_s(theta) = E_{x, x'}[-H(f((x* + x') / 2; theta))] (Pang et al., Section 5.3.2; Eqn 15's
    nu term): x* = psi(x, r; m) is a benign input stamped once and x' a *different, clean*
    benign input of the same batch (``clean`` rolled by one place); minimising it maximises the
    mixtures' prediction entropy (ALGORITHMS.md, "Evading STRIP"). With fewer than two clean
    rows there is no different partner and the term is zero."""
    if len(clean) < 2:
        return stamped.new_zeros(())
    mixed = (stamped + clean.roll(1, dims=0)) / 2
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
        doc="entropy of (stamped, different clean) 50-50 mixtures, maximised on the model "
        "step's poisoned batches (weight 0.6; the authors use 0.2 on GTSRB)",
    )
)
