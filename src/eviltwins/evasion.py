"""Evasion terms that IMC (Algorithm 2) can add to its losses, by detector name.

This is the small, explicit interface between attacks and detectors (docs/architecture.md): each
detector's term lives beside the detector, which registers it here (``EVASIONS``); an attack
asks for terms by name with weights (:func:`evasion_weights`: ``{"strip": 0.2}``, or names
alone for the terms' default weights) and never imports a detector.

A term may act on the trigger-perturbation step (``trigger_loss``: added to the loss minimised
over r, m with the model fixed) and/or on the model-perturbation step. Following the authors'
re-training (TrojanNN*, Algorithm 2, model step, with the STRIP and ABS evasion terms), a model-step
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
that does nothing is visible). ``needs_learned_mask``: the term acts only through the mask's
opacity, so a fixed mask leaves it nothing to change (IMC refuses that pairing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from eviltwins.base import Constraint
from eviltwins.errors import ParamError
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

#: How an attack's ``evade`` parameter may be spelled (for its constraint and ``--help``).
EVADE_FORMS = (
    "evasion terms: names (neural-cleanse,strip), name=weight pairs (neural-cleanse,strip=0.2) "
    "or a mapping of names to weights (None: the term's default)"
)


class EvadeSpec(Constraint):
    """The constraint of an attack's ``evade`` parameter: a well-formed spec
    (:func:`evasion_weights`; the names are looked up by :func:`evasion_terms`, which
    suggests the closest); ``describe`` lists the registered terms."""

    def ok(self, value: Any) -> bool:
        try:
            evasion_weights(value)
        except ParamError:
            return False
        return True

    def describe(self) -> str:
        return f"{EVADE_FORMS}; the terms: {', '.join(EVASIONS.names())}"

    def invalid_example(self) -> Any:
        return ("strip", "strip")


def evasion_weights(value: Any) -> dict[str, float | None]:
    """An attack's ``evade`` parameter as ``{term name: weight or None}``, in order: ``None``
    / ``()`` -> ``{}``; ``"a,b=0.2"`` or ``["a", "b"]`` -> names with optional weights; a
    mapping as given. Names are not looked up here (:func:`evasion_terms` does); a repeated
    name, a non-string name or a weight that is not a finite non-negative number raise one
    :class:`~eviltwins.errors.ParamError` line."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Sequence):
        pairs = []
        for item in value:
            name, eq, w = item.partition("=") if isinstance(item, str) else (item, "", None)
            pairs.append((name.strip() if isinstance(name, str) else name, w if eq else None))
    else:
        raise ParamError(f"evade must be {EVADE_FORMS}; got {value!r}"[:300])
    out: dict[str, float | None] = {}
    for name, w in pairs:
        if not isinstance(name, str) or not name:
            raise ParamError(f"an evasion term is named by a string; got {name!r}"[:200])
        if name in out:
            raise ParamError(f"evasion term {name!r} is named twice")
        out[name] = None if w is None else _weight(name, w)
    return out


def _weight(name: str, w: Any) -> float:
    try:
        v = float(w)
    except (TypeError, ValueError, OverflowError):
        v = float("nan")
    if isinstance(w, bool) or not (0 <= v < float("inf")):
        raise ParamError(
            f"the weight of evasion term {name!r} must be a finite number >= 0; got {w!r}"[:200]
        )
    return v


def evasion_terms(value: Any) -> list[tuple[EvasionTerm, float]]:
    """The registered terms named by an ``evade`` parameter (:func:`evasion_weights`), each
    with its weight (the term's ``default_weight`` where none is given); an unknown name
    raises with the closest registered one."""
    out = []
    for name, w in evasion_weights(value).items():
        term = EVASIONS.create(name)
        out.append((term, term.default_weight if w is None else w))
    return out


class ModelStep:
    """IMC's model-step evasion terms (``(term, weight)`` pairs) wired into the re-training
    batch and its one forward (module docstring; TrojanNN*, Algorithm 2, model step).

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
        self._sums: dict[str, Tensor] = {}
        self._batches = 0

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
        self._batches += 1
        for term, w in self.terms:
            state = self.states.get(term.name)
            layer = self._tap_of(term)
            feats = self._taps[layer]["out"][stamped_rows] if layer is not None else None
            value = term.model_loss(StepOutputs(logits[spans[term.name]], feats), state)
            self._sums[term.name] = self._sums.get(term.name, 0) + value.detach()
            total = total + w * value
        return total

    def take_record(self) -> dict[str, float]:
        """Each term's mean (unweighted) loss over the poisoned batches since the last call,
        as ``<name>_loss`` (0.0 when the term contributed nothing, e.g. ABS without a
        candidate), and how many batches carried the terms (``evasion_batches``)."""
        n = max(1, self._batches)
        out = {f"{t.name}_loss": float(self._sums.get(t.name, 0.0)) / n for t, _ in self.terms}
        out["evasion_batches"] = float(self._batches)
        self._sums, self._batches = {}, 0
        return out
