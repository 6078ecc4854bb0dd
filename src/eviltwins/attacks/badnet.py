"""BadNet (Gu et al., 2017): a fixed trigger, a share of poisoned training inputs."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.attacks.base import ATTACKS, BackdoorAttack, poison_hook
from eviltwins.base import Check, Interval, OneOf
from eviltwins.data import DatasetSpec
from eviltwins.metrics import attack_metrics
from eviltwins.training import TrainConfig, train_model
from eviltwins.triggers import POSITIONS, Trigger, parse_position
from eviltwins.utils import seed_everything


def valid_position(p: Any) -> bool:
    parse_position(p)
    return True


TRIGGER_CONSTRAINTS = {
    "target": Interval(int, 0, None),
    "size": Interval(float, 0, 1, closed="right"),
    "transparency": Interval(float, 0, 1, closed="left"),
    "position": Check(valid_position, f"one of {', '.join(POSITIONS)} or 'row,col'"),
    "pattern": Check(
        lambda p: isinstance(p, str | os.PathLike | Tensor),
        "white, black, random, an image path or a tensor",
        bad=3,
    ),
    "seed": Interval(int, 0, None),
}
RETRAIN_CONSTRAINTS = {
    "epochs": Interval(int, 0, None),
    "max_steps": Interval(int, 0, None, allow_none=True),
    "lr": Interval(float, 0, None, closed="neither"),
    "batch_size": Interval(int, 1, None),
}


def reset_weights(model: nn.Module, seed: int) -> None:
    """Re-initialise every layer that can (training from scratch), reproducibly."""
    seed_everything(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


def asr_callback(model: nn.Module, data: DatasetSpec, trigger: Trigger, target: int):
    """An epoch callback recording the ASR and efficacy of ``trigger`` after each epoch."""

    def cb(epoch: int, record: dict[str, float]) -> None:
        m = attack_metrics(model, data.test, trigger, target)
        record.update(asr=m["asr"], efficacy=m["efficacy"])

    return cb


@ATTACKS.register("badnet")
class BadNet(BackdoorAttack):
    """BadNet (Gu et al., "BadNets", 2017): stamp a fixed square trigger on a random
    ``poison_rate`` share of each training batch, relabel those inputs ``target``, and train
    (fine-tune the given model, or train from scratch with ``from_scratch=True``).

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
        "poison_rate": Interval(float, 0, 1, closed="right"),
        "from_scratch": OneOf(True, False),
        "inplace": OneOf(True, False),
    }

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

    def _fit(self, model: nn.Module, data: DatasetSpec, generator: torch.Generator):
        trigger = Trigger.square(
            data.shape, self.size, self.transparency, self.position, self.pattern, self.seed
        )
        if self.from_scratch:
            reset_weights(model, self.seed)
        cfg = TrainConfig(
            epochs=self.epochs,
            max_steps=self.max_steps,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=2e-4,
            seed=self.seed,
        )
        history = train_model(
            model,
            data,
            cfg,
            batch_hook=poison_hook(trigger, self.target, self.poison_rate, generator, "replace"),
            epoch_callback=asr_callback(model, data, trigger, self.target),
            quiet=self.quiet,
            desc="badnet",
        )
        return trigger, history, {}
