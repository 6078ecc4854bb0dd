"""The one training loop, evaluation and prediction.

:func:`train_model` is used for clean training and (through ``batch_hook`` / ``extra_loss``) by
every attack that re-trains or fine-tunes a model, so poisoning never needs a second loop.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.allocator import reuse_freed_memory
from eviltwins.base import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LR,
    MAX_MAGNITUDE,
    MAX_STEPS,
    SEED_RANGE,
    SUBSET_SIZE,
    Constraint,
    Interval,
    OneOf,
)
from eviltwins.config import Validated
from eviltwins.data import DatasetSpec, iter_batches, load_all, load_dataset
from eviltwins.errors import DataError, OptimisationError, ParamError
from eviltwins.utils import (
    CHECK_IMAGES,
    PrivateRNG,
    device_of,
    eval_mode,
    make_generator,
    nonfinite_outputs_message,
    nonfinite_weights,
    progress,
)

# batch_hook(x, y, step) -> (x, y); x may end with extra rows past len(y) (see Trainer)
BatchHook = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]
# extra_loss(model, x, y, step, logits) -> scalar; logits of every row of x, from the one forward
ExtraLoss = Callable[[nn.Module, Tensor, Tensor, int, Tensor], Tensor]


@dataclass(frozen=True)
class TrainConfig(Validated):
    """Training hyper-parameters (validated when built; :func:`eviltwins.config.validate`
    also refuses unknown names).

    Defaults: SGD with Nesterov momentum 0.9, lr 0.05 with per-step cosine decay, weight decay
    5e-4, batch 128. ``epochs=None`` uses the dataset's ``default_epochs``. ``augment=None`` uses
    the dataset's augmentation; ``False`` turns it off. ``max_steps`` caps the number of
    optimiser steps (a re-training budget finer than whole epochs).
    """

    epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.05
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    augment: bool | None = None
    max_steps: int | None = None
    seed: int = 0

    _constraints: ClassVar[dict[str, Constraint]] = {
        "epochs": Interval(int, 0, MAX_EPOCHS, allow_none=True),
        "batch_size": Interval(int, 1, MAX_BATCH),
        "lr": Interval(float, 0, MAX_LR, closed="right"),
        "optimizer": OneOf("sgd", "adam"),
        "momentum": Interval(float, 0, 1, closed="left"),
        "weight_decay": Interval(float, 0, MAX_MAGNITUDE),
        "schedule": OneOf("cosine", "constant"),
        "augment": OneOf(True, False, None),
        "max_steps": Interval(int, 0, MAX_STEPS, allow_none=True),
        "seed": SEED_RANGE,
    }


def get_dataset(
    dataset: str | DatasetSpec,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    **options: Any,
) -> DatasetSpec:
    """A dataset by registered name or path (a ``.npz`` file, an image folder), or a spec
    passed through, optionally sub-sampled deterministically. ``options`` (``image_size``,
    ``channels``, ``normalize``; ``None``: not given) go to :func:`~eviltwins.data.load_dataset`.
    The limits are checked (:data:`~eviltwins.base.SUBSET_SIZE`) before anything is read."""
    check_limits(train_limit, test_limit)
    if isinstance(dataset, DatasetSpec):
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise ParamError(
                f"dataset option {given[0]!r} applies to a dataset named by name or path, "
                "not to a DatasetSpec"
            )
        spec = dataset
    else:
        spec = load_dataset(dataset, data_root, download, **options)
    if train_limit is not None or test_limit is not None:
        spec = spec.subset(train_limit, test_limit, seed=seed)
    return spec


def check_limits(train_limit: Any, test_limit: Any) -> None:
    """``train_limit`` / ``test_limit``: None or a number of images in
    :data:`~eviltwins.base.SUBSET_SIZE`, else one :class:`ParamError` line."""
    for name, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if not SUBSET_SIZE.ok(value):
            raise ParamError(
                f"{name} must be {SUBSET_SIZE.describe()} (images); got {value!r}"[:300]
            )


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


class Trainer:
    """The one training loop: SGD/Adam steps over a continuing stream of training batches.

    ``steps(n)`` runs ``n`` optimiser steps, carrying the optimiser state, the learning-rate
    schedule (over ``total_steps``) and the batch order across calls, so an alternating method
    (IMC, Algorithm 2) can interleave re-training with other work without restarting anything.
    ``batch_hook(x, y, step) -> (x, y)`` may rewrite each batch (poisoning). It may return more
    images than labels: the rows of ``x`` past ``len(y)`` are extra inputs (IMC's STRIP
    mixtures) that go through the same forward as the batch, so batch norm normalises one batch
    and updates its running statistics once per step, but take no part in the cross-entropy
    nor in the accuracy. ``extra_loss(model, x, y, step, logits)`` adds a term computed from
    that one forward (``logits``: every row of ``x``; e.g. IMC's evasion terms); nothing here
    runs a second forward in train mode (TrojanNN*, Algorithm 2, model step). Dropout draws
    from a private RNG seeded with ``cfg.seed`` (CPU and, on CUDA, the device's generator; see
    :class:`~eviltwins.utils.PrivateRNG`) that carries on across ``steps()`` calls, so each call
    draws fresh masks; the caller's global RNG state is untouched.

    Divergence is never silent: a NaN/inf loss (checked every step) or NaN/inf weights after
    a ``steps()`` call raise a one-line :class:`OptimisationError` naming the epoch and step.
    Weights can stay finite yet so large that the outputs overflow: a caller checks those with
    :meth:`check_finite` on a few images (no extra forward pass happens inside ``steps``, so
    forward hooks see the training batches only).
    """

    def __init__(
        self,
        model: nn.Module,
        data: DatasetSpec,
        cfg: TrainConfig,
        *,
        batch_hook: BatchHook | None = None,
        extra_loss: ExtraLoss | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.batch_hook, self.extra_loss = batch_hook, extra_loss
        self.device = device_of(model)
        self.augment = data.augment if cfg.augment in (None, True) else ()
        self.generator = make_generator(cfg.seed)
        self.n_batches = math.ceil(len(data.train) / cfg.batch_size)
        self.opt = make_optimizer(model, cfg)
        self.sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, total_steps))
            if cfg.schedule == "cosine" and total_steps
            else None
        )
        self.step_count = 0
        self._batches: Any = None
        # Dropout draws from torch's global generators (the device's one on CUDA): keep a
        # private stream for them, carried across steps() calls (utils.PrivateRNG).
        self._rng = PrivateRNG(cfg.seed, self.device)

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        while True:
            if self._batches is None:
                self._batches = iter_batches(
                    self.data.train,
                    self.cfg.batch_size,
                    shuffle=True,
                    generator=self.generator,
                    augment=self.augment,
                    device=self.device,
                )
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None

    def where(self, step: int | None = None) -> str:
        """``epoch E, step S`` of optimiser step ``step`` (0-based; default: the last one run),
        counting epochs as passes over the training data, both from 1."""
        step = self.step_count - 1 if step is None else step
        step = max(step, 0)
        return f"epoch {step // self.n_batches + 1}, step {step % self.n_batches + 1}"

    def diverged(self, what: str, step: int | None = None) -> OptimisationError:
        """The one-line error for a diverged run: ``what`` went NaN/inf at ``step``."""
        return OptimisationError(
            f"training diverged at {self.where(step)} ({what}); lower the learning rate "
            f"(lr now {self.cfg.lr:g}) or check the data"
        )

    def check_finite(self, x: Tensor | None = None) -> None:
        """Raise :meth:`diverged` when a weight or buffer holds NaN/inf, or when the model's
        outputs on ``x`` (eval mode) do: a finite loss can still leave weights so large that
        the next forward overflows."""
        name = nonfinite_weights(self.model)
        if name is not None:
            raise self.diverged(f"weights of {name} became NaN/inf")
        if x is None:
            return
        with torch.no_grad(), eval_mode(self.model):
            out = self.model(x.to(self.device))
        if not bool(torch.isfinite(out).all()):
            raise self.diverged("the model's outputs became NaN/inf")

    def steps(self, n: int, desc: str = "train", quiet: bool | None = None) -> dict[str, float]:
        """Run ``n`` optimiser steps; returns the mean loss and accuracy over them.

        Raises :class:`OptimisationError` when the run diverges (see the class docstring)."""
        model = self.model
        loss_sum, correct, seen = 0.0, 0, 0
        bar = progress(total=n, desc=desc, quiet=quiet)
        model.train()
        with self._rng:
            try:
                for _ in range(n):
                    x, y = self._next_batch()
                    if self.batch_hook is not None:
                        x, y = self.batch_hook(x, y, self.step_count)
                    if len(x) < len(y):
                        raise ValueError(f"batch_hook returned {len(x)} images, {len(y)} labels")
                    out = model(x)
                    logits = out[: len(y)]  # extra rows past len(y): no cross-entropy
                    loss = nn.functional.cross_entropy(logits, y)
                    if self.extra_loss is not None:
                        loss = loss + self.extra_loss(model, x, y, self.step_count, out)
                    loss_value = loss.item()  # one sync per step (the loss is logged anyway)
                    if not math.isfinite(loss_value):
                        raise self.diverged(f"loss {loss_value}", self.step_count)
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    if self.sched is not None:
                        self.sched.step()
                    self.step_count += 1
                    loss_sum += loss_value * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    seen += len(y)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            finally:
                bar.close()
            if n > 0:
                self.check_finite()
        model.eval()
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


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
    """Train ``model`` in place on ``data.train`` with cross-entropy, epoch by epoch, through
    :class:`Trainer`; returns the per-epoch history (train loss/accuracy, test loss/accuracy).

    ``epochs=None`` uses the dataset's ``default_epochs``; ``max_steps`` cuts the last epoch
    short. ``epoch_callback(epoch, record)`` may add fields to each epoch's record (e.g. an
    attack's ASR). See :class:`Trainer` for ``batch_hook`` and ``extra_loss``.

    A diverged run raises :class:`OptimisationError` (one line, naming the epoch and step)
    instead of returning a broken model: a NaN/inf loss or weight, or NaN/inf outputs after an
    epoch on any test input (``eval_each_epoch``) or on the first test images (otherwise).
    """
    reuse_freed_memory()
    cfg = config or TrainConfig()
    epochs = data.default_epochs if cfg.epochs is None else cfg.epochs
    n_batches = math.ceil(len(data.train) / cfg.batch_size)
    total = epochs * n_batches
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    trainer = Trainer(
        model, data, cfg, batch_hook=batch_hook, extra_loss=extra_loss, total_steps=total
    )
    history: list[dict[str, float]] = []
    x_check = None if eval_each_epoch else load_all(data.test, limit=CHECK_IMAGES)[0]
    epoch = 0
    while trainer.step_count < total:
        epoch += 1
        n = min(n_batches, total - trainer.step_count)
        record = {
            "epoch": float(epoch),
            **trainer.steps(n, desc=f"{desc} {epoch}/{math.ceil(total / n_batches)}", quiet=quiet),
        }
        if eval_each_epoch:
            ev, n_bad = _evaluate(model, data.test, quiet=quiet)
            if n_bad:
                raise trainer.diverged(
                    f"outputs NaN/inf on {n_bad} of {int(ev['n'])} {data.name} test images"
                )
            record.update(test_loss=ev["loss"], test_acc=ev["accuracy"])
        elif x_check is not None and len(x_check):
            trainer.check_finite(x_check)
        if epoch_callback is not None:
            epoch_callback(epoch, record)
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


def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 512, quiet: bool | None = True
) -> dict[str, float]:
    """Clean accuracy and mean cross-entropy of ``model`` on ``dataset``.

    A model whose outputs hold NaN/inf on any input raises :class:`DataError` (one line):
    no accuracy is reported for a broken model (a NaN row's argmax would read as class 0).
    """
    res, n_bad = _evaluate(model, dataset, batch_size, quiet)
    if n_bad:
        raise DataError(nonfinite_outputs_message(f"{n_bad} of {int(res['n'])} evaluated"))
    return res


@torch.no_grad()
def _evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 512, quiet: bool | None = True
) -> tuple[dict[str, float], int]:
    """:func:`evaluate`'s numbers and how many inputs got non-finite outputs (no raising)."""
    device = device_of(model)
    loss_sum, correct, seen = 0.0, 0, 0
    bad = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        bar = progress(total=math.ceil(len(dataset) / batch_size), desc="evaluate", quiet=quiet)
        for x, y in iter_batches(dataset, batch_size, device=device):
            logits = model(x)
            bad += (~torch.isfinite(logits)).any(1).sum()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
        bar.close()
    res = {"accuracy": correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "n": float(seen)}
    return res, int(bad)
