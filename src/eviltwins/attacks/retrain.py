"""The re-training shared by the attacks that poison a model by training it (BadNet,
TrojanNN, IMC's model step): one home for its parameters' constraints, its training
configuration and its poisoned training loop. Each attack keeps its own explicit ``__init__``
(the parameters stay visible there); this module only checks and uses them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from eviltwins.attacks.base import BackdoorAttack, poison_hook
from eviltwins.base import (
    CLASS_INDEX,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LR,
    MAX_SIDE,
    MAX_STEPS,
    SEED_RANGE,
    Check,
    Interval,
    OneOf,
)
from eviltwins.data import DatasetSpec
from eviltwins.metrics import attack_metrics
from eviltwins.training import TrainConfig, train_model
from eviltwins.triggers import POSITIONS, Trigger, parse_position
from eviltwins.utils import is_int, seeded_init


def valid_position(p: Any) -> bool:
    """A corner name, or a (row, col) / ``"row,col"`` pixel inside the largest input."""
    where = parse_position(p)
    return isinstance(where, str) or (
        len(where) == 2 and all(is_int(v) and 0 <= v < MAX_SIDE for v in where)
    )


#: Constraints of the square trigger's parameters (and the target and seed).
TRIGGER_CONSTRAINTS = {
    "target": CLASS_INDEX,
    "size": Interval(float, 0, 1, closed="right"),
    "transparency": Interval(float, 0, 1, closed="left"),
    "position": Check(
        valid_position,
        f"one of {', '.join(POSITIONS)} or 'row,col' (pixels in [0, {MAX_SIDE - 1}])",
    ),
    "pattern": Check(
        lambda p: isinstance(p, str | os.PathLike | Tensor),
        "white, black, random, an image path or a tensor",
        bad=3,
    ),
    "seed": SEED_RANGE,
}
#: A share of poisoned training inputs or batches (BadNet's ``poison_rate``, the others'
#: ``poison_share``).
POISON_SHARE = Interval(float, 0, 1, closed="right")
#: Constraints of the re-training parameters every re-training attack has.
RETRAIN_CONSTRAINTS = {
    "epochs": Interval(int, 0, MAX_EPOCHS),
    "max_steps": Interval(int, 0, MAX_STEPS, allow_none=True),
    "lr": Interval(float, 0, MAX_LR, closed="right"),
    "batch_size": Interval(int, 1, MAX_BATCH),
    "inplace": OneOf(True, False),
}
#: Weight decay of the attacks' re-training (SGD, as in the IMC authors' code).
RETRAIN_WEIGHT_DECAY = 2e-4


def retrain_config(
    attack: BackdoorAttack, schedule: Literal["cosine", "constant"] = "cosine", **overrides: Any
) -> TrainConfig:
    """The :class:`~eviltwins.training.TrainConfig` of ``attack``'s re-training, from its
    ``epochs``, ``max_steps``, ``lr``, ``batch_size`` and ``seed`` (``overrides`` replace
    any of them)."""
    fields = {
        "epochs": getattr(attack, "epochs", 1),
        "max_steps": getattr(attack, "max_steps", None),
        "lr": attack.lr,
        "batch_size": attack.batch_size,
        "seed": attack.seed,
        **overrides,
    }
    return TrainConfig(weight_decay=RETRAIN_WEIGHT_DECAY, schedule=schedule, **fields)


def asr_callback(
    model: nn.Module, data: DatasetSpec, trigger: Trigger, target: int
) -> Callable[[int, dict[str, float]], None]:
    """An epoch callback recording the ASR and efficacy of ``trigger`` after each epoch."""

    def cb(epoch: int, record: dict[str, float]) -> None:
        m = attack_metrics(model, data.test, trigger, target)
        record.update(asr=m["asr"], efficacy=m["efficacy"])

    return cb


def retrain(
    attack: BackdoorAttack,
    model: nn.Module,
    data: DatasetSpec,
    trigger: Trigger,
    generator: torch.Generator,
    *,
    share: float,
    mode: str,
    schedule: Literal["cosine", "constant"] = "cosine",
    desc: str,
) -> list[dict[str, float]]:
    """Train ``model`` on ``data.train`` with poisoned batches (:func:`poison_hook`: a
    ``share`` of them, ``mode`` ``replace`` or ``append``), recording the ASR and efficacy of
    ``trigger`` after each epoch; returns the per-epoch history."""
    return train_model(
        model,
        data,
        retrain_config(attack, schedule),
        batch_hook=poison_hook(trigger, attack.target, share, generator, mode),
        epoch_callback=asr_callback(model, data, trigger, attack.target),
        quiet=attack.quiet,
        desc=desc,
    )


def reset_weights(model: nn.Module, seed: int) -> None:
    """Re-initialise every layer that can (training from scratch), reproducibly, without
    moving the caller's global RNG (:func:`~eviltwins.utils.seeded_init`)."""
    with seeded_init(seed):
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
