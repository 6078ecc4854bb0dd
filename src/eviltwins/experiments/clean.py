"""Clean models: the one place a benign model is trained from scratch, for
:func:`eviltwins.train` and for the sweep runner's cached clean models.

:func:`train_clean` loads (and sub-samples) the dataset, builds the architecture, initialises
its weights from ``seed``, trains it with the one training loop
(:func:`eviltwins.training.train_model`), evaluates it and writes its
:class:`~eviltwins.io.ModelCard`. It checks nothing the caller has checked (the
:class:`~eviltwins.training.TrainConfig` is already validated) and saves nothing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import torch
from torch import nn

from eviltwins.data import DatasetSpec
from eviltwins.io import ModelCard
from eviltwins.models import build_model
from eviltwins.results import Result, internal
from eviltwins.training import TrainConfig, evaluate, train_model
from eviltwins.utils import resolve_device, seeded_init, versions

TRAIN_SCHEMA = "eviltwins.train/1"


@dataclasses.dataclass(frozen=True)
class TrainResult(Result):
    """A trained model, its card, per-epoch history and final metrics."""

    SCHEMA: ClassVar[str] = TRAIN_SCHEMA

    model: nn.Module = internal(repr=False)
    card: ModelCard
    history: list[dict[str, float]]
    metrics: dict[str, float]
    seconds: float
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "card": self.card.to_dict()}


def train_clean(
    data: DatasetSpec,
    model: str,
    cfg: TrainConfig,
    *,
    arch_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    limits: tuple[int | None, int | None] = (None, None),
    quiet: bool | None = None,
) -> TrainResult:
    """Train a clean ``model`` on ``data`` (see :func:`eviltwins.training.get_dataset`; its
    ``limits``, the train and test sub-sample sizes, go on the card) with ``cfg``, whose
    ``seed`` initialises the weights; returns the unsaved :class:`TrainResult`. Training that
    diverges raises :class:`~eviltwins.errors.OptimisationError`."""
    arch_kwargs = dict(arch_kwargs or {})
    dev, spec = resolve_device(device), data
    with seeded_init(cfg.seed):  # weight initialisation: the one global-RNG use, not leaked
        net = build_model(model, spec.shape, spec.num_classes, spec.mean, spec.std, **arch_kwargs)
    net = net.to(dev)
    start = time.perf_counter()
    history = train_model(net, spec, cfg, quiet=quiet)
    seconds = time.perf_counter() - start
    final = evaluate(net, spec.test)
    metrics = {
        "test_acc": final["accuracy"],
        "test_loss": final["loss"],
        "n_train": float(len(spec.train)),
        "n_test": final["n"],
        "train_seconds": round(seconds, 2),
    }
    card = ModelCard(
        architecture=model,
        input_shape=spec.shape,
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
        dataset=spec.name,
        dataset_options=dict(spec.options),
        classes=spec.classes,
        arch_kwargs=arch_kwargs,
        metrics=metrics,
        seed=cfg.seed,
        training={
            **cfg.to_dict(),
            "epochs": len(history),
            "train_limit": limits[0],
            "test_limit": limits[1],
        },
        versions=versions(),
    )
    return TrainResult(net, card, history, metrics, round(seconds, 3))
