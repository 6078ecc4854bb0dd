"""The one training loop, evaluation and prediction.

:func:`train_model` is used for clean training and (through ``batch_hook`` / ``extra_loss``) by
every attack that re-trains or fine-tunes a model, so poisoning never needs a second loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.data import DatasetSpec, iter_batches
from eviltwins.errors import OptimisationError
from eviltwins.utils import device_of, eval_mode, make_generator, progress

BatchHook = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]
ExtraLoss = Callable[[nn.Module, Tensor, Tensor, int], Tensor]


class TrainConfig(BaseModel):
    """Training hyper-parameters (validated; unknown names are refused).

    Defaults: SGD with Nesterov momentum 0.9, lr 0.05 with per-step cosine decay, weight decay
    5e-4, batch 128. ``epochs=None`` uses the dataset's ``default_epochs``. ``augment=None`` uses
    the dataset's augmentation; ``False`` turns it off. ``max_steps`` caps the number of
    optimiser steps (a re-training budget finer than whole epochs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: bool | None = None
    max_steps: int | None = Field(default=None, ge=0)
    seed: int = 0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.momentum > 0,
    )


def train_model(
    model: nn.Module,
    data: DatasetSpec,
    config: TrainConfig | None = None,
    *,
    batch_hook: BatchHook | None = None,
    extra_loss: ExtraLoss | None = None,
    eval_each_epoch: bool = True,
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None,
    quiet: bool | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``data.train`` with cross-entropy; returns per-epoch history.

    ``batch_hook(x, y, step) -> (x, y)`` may rewrite each batch (poisoning appends stamped copies
    labelled with the target); ``extra_loss(model, x, y, step)`` adds a term (e.g. IMC's
    specificity loss); ``epoch_callback(epoch, record)`` may add fields to each epoch's
    history record (e.g. an attack's ASR). The model runs on its own device. A NaN/inf loss stops training with an
    :class:`OptimisationError` instead of silently producing a broken model.
    """
    cfg = config or TrainConfig()
    # Dropout draws from torch's global RNG: fork it so that training is reproducible for a
    # seed while the caller's global RNG state is left as it was.
    devices = [device_of(model)] if device_of(model).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        return _train(
            model, data, cfg, batch_hook, extra_loss, eval_each_epoch, epoch_callback, quiet, desc
        )


def _train(
    model: nn.Module,
    data: DatasetSpec,
    cfg: TrainConfig,
    batch_hook: BatchHook | None,
    extra_loss: ExtraLoss | None,
    eval_each_epoch: bool,
    epoch_callback: Callable[[int, dict[str, float]], None] | None,
    quiet: bool | None,
    desc: str,
) -> list[dict[str, float]]:
    epochs = data.default_epochs if cfg.epochs is None else cfg.epochs
    augment = data.augment if cfg.augment in (None, True) else ()
    device = device_of(model)
    g = make_generator(cfg.seed)
    opt = make_optimizer(model, cfg)
    n_batches = math.ceil(len(data.train) / cfg.batch_size)
    total = max(1, epochs * n_batches)
    if cfg.max_steps is not None:
        epochs = min(epochs, math.ceil(cfg.max_steps / n_batches))
        total = max(1, min(total, cfg.max_steps))
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        if cfg.schedule == "cosine"
        else None
    )
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    for epoch in range(1, epochs + 1):
        loss_sum, correct, seen = 0.0, 0, 0
        bar = progress(total=n_batches, desc=f"{desc} {epoch}/{epochs}", quiet=quiet)
        for x, y in iter_batches(
            data.train, cfg.batch_size, shuffle=True, generator=g, augment=augment, device=device
        ):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            if batch_hook is not None:
                x, y = batch_hook(x, y, step)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if extra_loss is not None:
                loss = loss + extra_loss(model, x, y, step)
            if not torch.isfinite(loss):
                bar.close()
                raise OptimisationError(
                    f"training loss became {loss.item()} at epoch {epoch}, step {step}; "
                    f"lower the learning rate (now {cfg.lr}) or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        record = {
            "epoch": float(epoch),
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
        }
        if eval_each_epoch:
            ev = evaluate(model, data.test, quiet=quiet)
            record.update(test_loss=ev["loss"], test_acc=ev["accuracy"])
        if epoch_callback is not None:
            epoch_callback(epoch, record)
        model.train()
        history.append(record)
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` for images ``x`` (on CPU), in eval mode, batched."""
    device = device_of(model)
    outs = []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            outs.append(model(x[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 512, quiet: bool | None = True
) -> dict[str, float]:
    """Clean accuracy and mean cross-entropy of ``model`` on ``dataset``."""
    device = device_of(model)
    loss_sum, correct, seen = 0.0, 0, 0
    with eval_mode(model):
        bar = progress(total=math.ceil(len(dataset) / batch_size), desc="evaluate", quiet=quiet)
        for x, y in iter_batches(dataset, batch_size, device=device):
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
        bar.close()
    return {"accuracy": correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "n": float(seen)}
