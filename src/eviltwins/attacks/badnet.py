"""BadNet (Gu et al., 2017): a fixed trigger, a share of poisoned training inputs."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.attacks.base import ATTACKS, BackdoorAttack
from eviltwins.attacks.budget import RetrainBudget
from eviltwins.attacks.retrain import (
    POISON_SHARE,
    RETRAIN_CONSTRAINTS,
    TRIGGER_CONSTRAINTS,
    reset_weights,
    retrain,
)
from eviltwins.base import OneOf
from eviltwins.data import DatasetSpec
from eviltwins.triggers import Trigger


@ATTACKS.register("badnet")
class BadNet(BackdoorAttack):
    """BadNet (Gu et al., 2017): poison training batches with a fixed trigger.

    As in Gu et al., "BadNets", 2017: stamp the trigger on a random ``poison_rate`` share of
    each training batch, relabel those inputs ``target``, and train (fine-tune the given
    model, or train from scratch with ``from_scratch=True``).

    Parameters: ``target`` (0); trigger ``size`` (0.15, width / image width), ``transparency``
    (0.0 = opaque), ``position`` (bottom-right), ``pattern`` (white); ``poison_rate`` (0.1);
    re-training ``epochs`` (2), ``max_steps`` (None), ``lr`` (0.01; SGD momentum 0.9, weight
    decay 2e-4, Nesterov, cosine decay as in the IMC authors' re-training), ``batch_size`` (128).
    Input: images in [0, 1]. Example: ``BadNet(size=0.15).fit(model, et.load_dataset("mnist"))``.
    """

    name: ClassVar[str] = "badnet"
    _constraints = {
        **TRIGGER_CONSTRAINTS,
        **RETRAIN_CONSTRAINTS,
        "poison_rate": POISON_SHARE,
        "from_scratch": OneOf(True, False),
    }
    fast_params: ClassVar[dict[str, Any]] = {"max_steps": 3}

    def __init__(
        self,
        target: int = 0,
        size: float = 0.15,
        transparency: float = 0.0,
        position: str | tuple[int, int] = "bottom-right",
        pattern: str | os.PathLike[str] | Tensor = "white",
        poison_rate: float = 0.1,
        epochs: int = 2,
        max_steps: int | None = None,
        lr: float = 0.01,
        batch_size: int = 128,
        from_scratch: bool = False,
        inplace: bool = False,
        seed: int = 0,
        quiet: bool | None = None,
    ) -> None:
        self.target = target
        self.size = size
        self.transparency = transparency
        self.position = position
        self.pattern = pattern
        self.poison_rate = poison_rate
        self.epochs = epochs
        self.max_steps = max_steps
        self.lr = lr
        self.batch_size = batch_size
        self.from_scratch = from_scratch
        self.inplace = inplace
        self.seed = seed
        self.quiet = quiet

    def retrain_budget(self) -> RetrainBudget:
        """``min(epochs * N, max_steps)`` steps, N the training batches per epoch
        (:mod:`eviltwins.attacks.budget`)."""
        return RetrainBudget.epochs(self.epochs, self.max_steps, self.batch_size)

    def initial_trigger(
        self, model: nn.Module, data: DatasetSpec, generator: torch.Generator
    ) -> tuple[Trigger, dict[str, Any]]:
        """BadNet's fixed trigger (the square of ``size`` / ``transparency`` / ``position`` /
        ``pattern``) and an empty record: what BadNet stamps, and IMC's ``init="badnet"``."""
        return Trigger.square(
            data.shape, self.size, self.transparency, self.position, self.pattern, self.seed
        ), {}

    def _fit(self, model: nn.Module, data: DatasetSpec, generator: torch.Generator):
        trigger, _ = self.initial_trigger(model, data, generator)
        if self.from_scratch:
            reset_weights(model, self.seed)
        history = retrain(
            self,
            model,
            data,
            trigger,
            generator,
            share=self.poison_rate,
            mode="replace",
            desc="badnet",
        )
        return trigger, history, {}
