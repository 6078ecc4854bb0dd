"""Re-training budgets: what an attack declares it spends, comparable without a dataset.

The attacks compared in one claim re-train for the same number of steps (a fair comparison,
as the IMC authors' code runs TrojanNN and TrojanNN* at the same budget; Pang et al., CCS
2020). An attack that re-trains declares its budget
(:meth:`~eviltwins.attacks.base.BackdoorAttack.retrain_budget`) as a function of N, the number
of training batches per epoch at its batch size::

    budget(N) = min(per_epoch * N + steps, cap)

TrojanNN and BadNet: ``min(epochs * N, max_steps)``; IMC: ``min(outer_iters * N, max_steps)``
with one epoch per outer iteration, ``min(outer_iters * retrain_steps, max_steps)`` with
``retrain_steps`` (IMC may stop early at kappa: the declared budget is what is compared).
Two budgets are the same when they are equal for every N >= 1 (:meth:`RetrainBudget.normal`),
so a sweep can refuse an unequal pair before any data is read.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RetrainBudget:
    """``min(per_epoch * N + steps, cap)`` re-training steps, N the training batches per epoch
    at ``batch_size`` (``cap`` None: no cap). See the module docstring."""

    per_epoch: int
    steps: int = 0
    cap: int | None = None
    batch_size: int | None = None

    @classmethod
    def epochs(cls, epochs: int, max_steps: int | None, batch_size: int) -> RetrainBudget:
        """The budget of ``epochs`` epochs of re-training cut at ``max_steps`` (TrojanNN,
        BadNet: :func:`eviltwins.training.train_model`)."""
        return cls(int(epochs), 0, None if max_steps is None else int(max_steps), batch_size)

    def at(self, n: int) -> int:
        """The steps spent with ``n`` training batches per epoch."""
        total = self.per_epoch * n + self.steps
        return total if self.cap is None else min(total, self.cap)

    def normal(self) -> RetrainBudget:
        """The canonical form: two budgets equal for every N >= 1 have the same normal form.

        ``budget`` never decreases in N, so it is fixed by its values at N = 1 and 2 and its
        cap: constant when they agree, else the line through them (capped). The batch size
        only matters when the budget depends on N."""
        one, two = self.at(1), self.at(2)
        if one == two:
            return RetrainBudget(0, one)
        slope = two - one
        return RetrainBudget(slope, one - slope, self.cap, self.batch_size)

    def same_as(self, other: RetrainBudget) -> bool:
        """Whether both spend the same steps whatever the training set's size."""
        return self.normal() == other.normal()

    def describe(self) -> str:
        """``200 steps``, ``40 x N steps at batch 128`` or ``min(2 x N, 6) steps at batch
        128`` (N: the training batches per epoch)."""
        b = self.normal()
        if b.per_epoch == 0:
            return f"{b.steps} steps"
        line = "N" if b.per_epoch == 1 else f"{b.per_epoch} x N"
        if b.steps:
            line += f" {'+' if b.steps > 0 else '-'} {abs(b.steps)}"
        if b.cap is not None:
            line = f"min({line}, {b.cap})"
        return f"{line} steps at batch {b.batch_size}"


def compared_with(attack_class: type, params: Mapping[str, Any]) -> str | None:
    """The attack that an attack of ``attack_class`` with ``params`` is compared with in the
    claims: the attack its ``init`` parameter names (IMC: ``trojannn`` for TrojanNN*,
    ``badnet`` for BadNet*), default included; None for an attack without ``init``. The report
    pairs the rows of the two the same way (same dataset, model, size, transparency and
    seed)."""
    init = inspect.signature(attack_class).parameters.get("init")
    if init is None:
        return None
    value = params.get("init", init.default)
    return value if isinstance(value, str) else None
