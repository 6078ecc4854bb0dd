"""Evasion terms that IMC (Algorithm 2) can add to its losses, by detector name.

This is the small, explicit interface between attacks and detectors (ARCHITECTURE.md): an
attack asks for a term by name; a detector module may register one (``abs`` is registered by
:mod:`eviltwins.detectors.abs_evasion`). The attack never imports a detector.

A term may act on the trigger-perturbation step (``trigger_loss``: added to the loss minimised
over r, m with the model fixed) and/or on the model-perturbation step. Following the authors'
re-training (ALGORITHMS.md, TrojanNN* step 2, "Evading STRIP" and "Evading ABS"), a model-step
term acts only on the re-training batches that carry stamped copies, and it never runs a forward
of its own: its inputs go into the re-training batch, so batch norm sees one batch and makes one
statistics update per step, exactly as in plain re-training (:class:`ModelStep` wires this into
:class:`~eviltwins.training.Trainer`):

- ``model_inputs(stamped, clean, state)`` returns the rows the term adds to the batch (STRIP's
  mixtures) or ``None``. It receives the batch's *clean* rows and their stamped copies
  (``stamped[i] = psi(clean[i])``) separately, so it can never stamp an input twice or pair two
  stamped inputs. Added rows take no part in the classification cross-entropy.
- ``model_tap(state)`` names the layer whose output on the stamped copies the loss reads
  (ABS's candidate neurons), or ``None``.
- ``model_loss(out, state)`` computes the term from that one forward (:class:`StepOutputs`).

A term whose model loss depends on the current model's state (ABS's candidate neurons)
declares ``refresh``: IMC calls it once per outer iteration, before the model step, on seed
images from the training split, and passes what it returns as ``state``; ``record(state)``
gives numbers IMC writes into its history (e.g. how many candidates the term acts on, so a term
that does nothing is visible).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from eviltwins.metrics import prediction_entropy
from eviltwins.models import feature_tap
from eviltwins.registry import Registry


@dataclass(frozen=True)
class StepOutputs:
    """What a model-step term reads of the one re-training forward of a poisoned batch:
    ``logits`` of the rows the term added (its ``model_inputs``; empty when none) and
    ``stamped_features``, the output of its ``model_tap`` layer on the batch's stamped copies
    (``None`` without a tap). Both carry gradients to the model."""

    logits: Tensor
    stamped_features: Tensor | None = None


# trigger_loss(model, stamped, benign, mask, n_trigger_pixels) -> scalar
TriggerLoss = Callable[[nn.Module, Tensor, Tensor, Tensor, int], Tensor]
# model_inputs(stamped, clean, state) -> rows added to the re-training batch, or None
ModelInputs = Callable[[Tensor, Tensor, Any], "Tensor | None"]
# model_tap(state) -> the layer whose output on the stamped copies model_loss reads, or None
ModelTap = Callable[[Any], "str | None"]
# model_loss(outputs of the one forward, state) -> scalar
ModelLoss = Callable[[StepOutputs, Any], Tensor]
# refresh(model, seed_x, seed_y, num_classes, target) -> state passed to the model-step parts
Refresh = Callable[[nn.Module, Tensor, Tensor, int, int], Any]
# record(state) -> numbers for IMC's history after each refresh
Record = Callable[[Any], dict[str, float]]


@dataclass(frozen=True)
class EvasionTerm:
    """One detector's evasion loss; ``default_weight`` (non-negative) is used unless the
    attack overrides it. The weighted loss is always added: a term that the authors subtract
    (ABS's re-mask loss) returns its negation. See the module docstring for the parts."""

    name: str
    default_weight: float
    trigger_loss: TriggerLoss | None = None
    model_loss: ModelLoss | None = None
    model_inputs: ModelInputs | None = None
    model_tap: ModelTap | None = None
    refresh: Refresh | None = None
    record: Record | None = None
    needs_learned_mask: bool = False
    doc: str = ""


EVASIONS: Registry[EvasionTerm] = Registry("evasion term")


def neural_cleanse_fidelity(
    model: nn.Module, stamped: Tensor, benign: Tensor, mask: Tensor, n_pixels: int
) -> Tensor:
    """l_f(m) = ||m||_1 / (pixels covered by the trigger) (Pang et al., Section 5.3.2: "we set
    lambda as the number of pixels covered by the trigger"; the authors' code divides by it)."""
    return mask.abs().sum() / max(1, n_pixels)


def strip_mixtures(stamped: Tensor, clean: Tensor, state: Any = None) -> Tensor | None:
    """STRIP's rows of the re-training batch: the mixtures (x* + x') / 2 of each clean input
    stamped once, x* = psi(x, r; m) (``stamped[i] = psi(clean[i])``), with a *different, clean*
    input x' of the same batch (``clean`` rolled by one place) (Pang et al., Section 5.3.2;
    ALGORITHMS.md, "Evading STRIP"). ``None`` with fewer than two clean rows: no different
    partner."""
    if len(clean) < 2:
        return None
    return (stamped + clean.roll(1, dims=0)) / 2


def strip_specificity(out: StepOutputs, state: Any = None) -> Tensor:
    """l_s(theta) = E_{x, x'}[-H(f((x* + x') / 2; theta))] (Pang et al., Section 5.3.2; Eqn 15's
    nu term) on the logits of the mixtures (:func:`strip_mixtures`) from the re-training
    forward; minimising it maximises the mixtures' prediction entropy. Zero without mixtures."""
    if len(out.logits) == 0:
        return out.logits.new_zeros(())
    return -prediction_entropy(out.logits).mean()


class ModelStep:
    """IMC's model-step evasion terms (``(term, weight)`` pairs) wired into the re-training
    batch and its one forward (module docstring; ALGORITHMS.md, TrojanNN*, step 2).

    Per outer iteration: :meth:`refresh` (terms' state on seed images). Per re-training batch
    that carries stamped copies, the batch hook calls :meth:`extend` and appends the rows it
    returns; on a clean batch it calls :meth:`skip`. :meth:`loss` (the trainer's
    ``extra_loss``) reads the terms' rows and taps from that forward; :meth:`tapping` holds the
    taps open around the re-training steps."""

    def __init__(self, terms: list[tuple[EvasionTerm, float]]) -> None:
        self.terms = [(t, w) for t, w in terms if t.model_loss is not None]
        self.states: dict[str, Any] = {}
        self._layout: tuple[slice, dict[str, slice]] | None = None
        self._taps: dict[str, dict[str, Tensor]] = {}

    def __bool__(self) -> bool:
        return bool(self.terms)

    @property
    def refreshing(self) -> bool:
        """Whether a term needs :meth:`refresh` (seed images) each outer iteration."""
        return any(t.refresh is not None for t, _ in self.terms)

    def refresh(
        self, model: nn.Module, xs: Tensor, ys: Tensor, num_classes: int, target: int
    ) -> dict[str, float]:
        """Refresh every term's state on seed images ``xs`` / ``ys``; returns the terms'
        records (for IMC's history)."""
        records: dict[str, float] = {}
        for term, _ in self.terms:
            if term.refresh is None:
                continue
            state = term.refresh(model, xs, ys, num_classes, target)
            self.states[term.name] = state
            if term.record is not None:
                records.update(term.record(state))
        return records

    def _tap_of(self, term: EvasionTerm) -> str | None:
        return term.model_tap(self.states.get(term.name)) if term.model_tap else None

    def extend(self, clean: Tensor, stamped: Tensor) -> Tensor:
        """The rows the terms add to a batch laid out as ``[clean, stamped]`` (the stamped
        copies right after the clean rows); remembers where each term's rows go."""
        start = len(clean) + len(stamped)
        spans, rows = {}, [clean[:0]]
        for term, _ in self.terms:
            extra = None
            if term.model_inputs is not None:
                extra = term.model_inputs(stamped, clean, self.states.get(term.name))
            n = 0 if extra is None else len(extra)
            spans[term.name] = slice(start, start + n)
            start += n
            if n:
                rows.append(extra)
        self._layout = (slice(len(clean), len(clean) + len(stamped)), spans)
        return torch.cat(rows)

    def skip(self) -> None:
        """The next batch carries no stamped copies: the terms add nothing to it."""
        self._layout = None

    @contextlib.contextmanager
    def tapping(self, model: nn.Module) -> Iterator[None]:
        """Record the output of every layer a term reads (forward hooks; :meth:`loss` reads
        the rows of the stamped copies of the current batch)."""
        layers = {self._tap_of(t) for t, _ in self.terms} - {None}
        with contextlib.ExitStack() as stack:
            self._taps = {lay: stack.enter_context(feature_tap(model, lay)) for lay in layers}
            try:
                yield
            finally:
                self._taps = {}

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, step: int, logits: Tensor) -> Tensor:
        """The weighted sum of the terms on the current batch (a trainer ``extra_loss``):
        zero on a batch without stamped copies."""
        total = logits.new_zeros(())
        if self._layout is None:
            return total
        stamped_rows, spans = self._layout
        for term, w in self.terms:
            state = self.states.get(term.name)
            layer = self._tap_of(term)
            feats = self._taps[layer]["out"][stamped_rows] if layer is not None else None
            total = total + w * term.model_loss(StepOutputs(logits[spans[term.name]], feats), state)
        return total


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
        model_inputs=strip_mixtures,
        doc="entropy of (stamped, different clean) 50-50 mixtures, maximised on the model "
        "step's poisoned batches (weight 0.6; the authors use 0.2 on GTSRB)",
    )
)
