"""The attack base: one object, one call (``fit(model, data) -> BackdoorResult``).

The base owns the plumbing: parameter validation, a deep copy of the model (the caller's model is
never touched unless ``inplace=True``), the benign model's clean accuracy, the final metrics and
timing. A subclass implements ``_fit`` (its algorithm only).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.allocator import reuse_freed_memory
from eviltwins.attacks.budget import RetrainBudget
from eviltwins.base import Estimator
from eviltwins.data import DatasetSpec, load_all
from eviltwins.errors import DataError, OptimisationError
from eviltwins.io import ModelCard, save_model, write_json
from eviltwins.metrics import attack_metrics
from eviltwins.paths import make_folder
from eviltwins.registry import Registry
from eviltwins.results import Result, internal
from eviltwins.training import evaluate
from eviltwins.triggers import Trigger
from eviltwins.utils import CHECK_IMAGES, check_finite_outputs, device_of, make_generator

RESULT_SCHEMA = "eviltwins.backdoor/1"


@dataclass(frozen=True)
class BackdoorResult(Result):
    """A poisoned model with its trigger, target, final metrics and per-epoch history.

    ``metrics``: ``asr``, ``efficacy`` (over non-target test inputs), ``clean_acc``,
    ``benign_acc`` (of the model given to ``fit``), ``acc_drop`` (benign - clean, in accuracy
    points as a fraction), ``mask_l1``, ``mask_area``. ``model`` and ``trigger`` are kept for
    the caller and are not part of :meth:`to_dict` (:meth:`save` writes them as files).
    """

    SCHEMA: ClassVar[str] = RESULT_SCHEMA

    model: nn.Module = internal(repr=False)
    trigger: Trigger = internal(repr=False)
    target: int
    metrics: dict[str, float]
    history: list[dict[str, float]]
    params: dict[str, Any]
    attack: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The result's JSON form (``metrics.json``), keys in their historical order."""
        return {
            "schema": self.SCHEMA,
            "attack": self.attack,
            "target": self.target,
            "metrics": self.metrics,
            "history": self.history,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "seconds": self.seconds,
            "extra": {k: _jsonable(v) for k, v in self.extra.items()},
        }

    def save(
        self, out_dir: str | os.PathLike[str], card: ModelCard, examples: Tensor | None = None
    ) -> Path:
        """Write the poisoned model (safetensors + model.json), ``trigger.safetensors`` /
        ``trigger.png``, ``metrics.json`` and, given clean ``examples``, ``examples.png``."""
        from dataclasses import replace

        from eviltwins.io.images import save_examples_png  # matplotlib only when drawing

        out = make_folder(out_dir)
        new_card = replace(
            card,
            metrics={**card.metrics, **{k: v for k, v in self.metrics.items()}},
            extra={
                **card.extra,
                "attack": self.attack,
                "target": self.target,
                "trigger": "trigger.safetensors",
            },
        )
        save_model(self.model, new_card, out)
        self.trigger.save(out / "trigger")
        write_json(out / "metrics.json", self.to_dict())
        if examples is not None:
            save_examples_png(
                self.model,
                examples,
                self.trigger,
                self.target,
                out / "examples.png",
                classes=card.classes,
            )
        return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Tensor):
        return v.tolist()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


class BackdoorAttack(Estimator):
    """Base of every attack: ``fit(model, data) -> BackdoorResult``."""

    name: ClassVar[str] = ""
    target: int
    inplace: bool
    seed: int
    quiet: bool | None

    def fit(self, model: nn.Module, data: DatasetSpec) -> BackdoorResult:
        """Plant a backdoor in (a copy of) ``model`` using ``data``; see the class docstring.

        A broken input model (NaN/inf weights or outputs) is refused up front with a
        :class:`~eviltwins.errors.DataError`; a re-training that diverges raises
        :class:`~eviltwins.errors.OptimisationError`. No metric is computed from non-finite
        outputs."""
        self._validate_params()
        reuse_freed_memory()
        check_model_and_data(model, data, self.target)
        benign_acc = evaluate(model, data.test)["accuracy"]
        work = model if self.inplace else copy.deepcopy(model)
        start = time.perf_counter()
        trigger, history, extra = self._fit(work, data, make_generator(self.seed))
        seconds = time.perf_counter() - start
        work.eval()
        x, _ = load_all(data.test, limit=CHECK_IMAGES)
        lr = getattr(self, "lr", None)
        fix = f"lower lr (now {lr:g})" if isinstance(lr, int | float) else "check its parameters"
        hint = f"the {self.name} attack diverged; {fix}"
        check_finite_outputs(work, x, data.name, error=OptimisationError, hint=hint)
        m = attack_metrics(work, data.test, trigger, self.target)
        clean = evaluate(work, data.test)["accuracy"]
        metrics = {
            "asr": m["asr"],
            "efficacy": m["efficacy"],
            "clean_acc": clean,
            "benign_acc": benign_acc,
            "acc_drop": benign_acc - clean,
            "mask_l1": trigger.l1,
            "mask_area": trigger.area,
            "n_attack": m["n_attack"],
        }
        return BackdoorResult(
            work,
            trigger.detach().to("cpu"),
            self.target,
            metrics,
            history,
            self.get_params(),
            self.name,
            round(seconds, 3),
            extra,
        )

    def retrain_budget(self) -> RetrainBudget | None:
        """The re-training steps this attack declares, as a function of the training batches
        per epoch (:class:`~eviltwins.attacks.budget.RetrainBudget`; a fair comparison of
        TrojanNN and TrojanNN* holds it equal, as the IMC authors' code runs both); None for an
        attack that does not declare one (a sweep then cannot compare it with its pair and
        leaves the pair unchecked)."""
        return None

    def _fit(
        self, model: nn.Module, data: DatasetSpec, generator: torch.Generator
    ) -> tuple[Trigger, list[dict[str, float]], dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError


def check_model_and_data(model: nn.Module, data: DatasetSpec, target: int) -> None:
    """The model must take ``data``'s images and output one logit per class, all finite
    (:func:`~eviltwins.utils.check_finite_outputs`, a :class:`DataError` otherwise); target in
    range."""
    if target >= data.num_classes:
        raise DataError(
            f"target class {target} does not exist: {data.name} has "
            f"{data.num_classes} classes (0..{data.num_classes - 1})"
        )
    x, _ = load_all(data.test, limit=CHECK_IMAGES)
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(x.to(device_of(model)))
            model.train(was)
    except RuntimeError as err:
        raise DataError(
            f"the model cannot take {data.name} images of shape {data.shape}: "
            f"{' '.join(str(err).split())[:200]}"
        ) from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise DataError(
            f"the model outputs {tuple(out.shape[1:])} values per image but "
            f"{data.name} has {data.num_classes} classes"
        )
    check_finite_outputs(model, x, data.name)


def poison_hook(
    trigger: Trigger, target: int, rate: float, generator: torch.Generator, mode: str = "replace"
):
    """A :func:`~eviltwins.training.train_model` batch hook that poisons training batches.

    ``mode="replace"`` (BadNet): a random ``rate`` share of each batch is stamped and relabelled
    ``target``. ``mode="append"`` (TrojanNN re-training): with probability ``rate`` a batch also
    carries a stamped copy of itself labelled ``target``. ``trigger`` may be a callable that
    returns the current trigger (IMC changes it between re-training rounds).
    """

    def hook(x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        trig = (trigger() if callable(trigger) else trigger).to(x.device)
        if mode == "replace":
            chosen = torch.rand(len(y), generator=generator) < rate
            if not chosen.any():
                return x, y
            chosen = chosen.to(x.device)
            x = torch.where(chosen[:, None, None, None], trig.stamp(x), x)
            y = torch.where(chosen, torch.full_like(y, target), y)
            return x, y
        if float(torch.rand(1, generator=generator)) >= rate:
            return x, y
        return torch.cat([x, trig.stamp(x)]), torch.cat([y, torch.full_like(y, target)])

    return hook


ATTACKS: Registry[BackdoorAttack] = Registry("attack")
