"""Blended (Chen et al., 2017): a full-image pattern blended into a share of the training inputs."""

from __future__ import annotations

import os
from pathlib import Path
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
from eviltwins.base import Check, Interval, OneOf
from eviltwins.data import DatasetSpec
from eviltwins.errors import ParamError
from eviltwins.triggers import Trigger, check_image_shape
from eviltwins.triggers.shapes import check_pattern_values, pattern_tensor, read_pattern

#: The seeded uniform random pattern (Chen et al.'s "random pattern" key).
NOISE = "noise"
#: What a ``pattern`` may be, as the constraint and the refusals say it.
PATTERN_KINDS = f"{NOISE}, an image path or a tensor"


@ATTACKS.register("blended")
class Blended(BackdoorAttack):
    """Blended (Chen et al., 2017): poison training data with a blended pattern.

    The blended injection strategy of Chen, Liu, Li, Lu, Song, "Targeted Backdoor Attacks on
    Deep Learning Systems Using Data Poisoning", 2017: blend a full-image key pattern k into a
    random ``poison_rate`` share of each training batch, relabel those inputs ``target``, and
    train (fine-tune the given model, or train from scratch with ``from_scratch=True``, as in
    the paper's data poisoning)::

        x' = alpha * k + (1 - alpha) * x,    alpha = 1 - transparency

    i.e. the trigger psi(x, k; m) with mask m = alpha on every pixel. The same alpha is used
    when poisoning and when measuring the ASR (BackdoorBench's blended default: train and test
    alpha 0.2).

    Parameters: ``target`` (0; BackdoorBench's all-to-one target 0); ``transparency`` (0.8,
    i.e. alpha = 0.2, the paper's poisoning alpha and BackdoorBench's default; in (0, 1): 0
    would replace every input with k); ``pattern`` (``"noise"``: a uniform random full-image
    pattern seeded by ``seed``, the paper's random-pattern key; or an image file, e.g. the
    paper's Hello Kitty, resized to the input size as BackdoorBench does; or a tensor
    (C, H, W), (1, H, W) or (H, W) in [0, 1]); ``poison_rate`` (0.1, BackdoorBench's pratio);
    re-training ``epochs`` (2), ``max_steps`` (None), ``lr`` (0.01), ``batch_size`` (128) and
    ``from_scratch`` (False), as :class:`~eviltwins.attacks.BadNet`'s. No ``size`` or
    ``position``: the trigger covers the whole image. Input: images in [0, 1].
    Example: ``Blended(pattern="kitty.png").fit(model, et.load_dataset("cifar10"))``.
    """

    name: ClassVar[str] = "blended"
    fast_params: ClassVar[dict[str, Any]] = {"max_steps": 3}
    _constraints = {
        "target": TRIGGER_CONSTRAINTS["target"],
        "transparency": Interval(float, 0, 1, closed="neither"),
        "pattern": Check(lambda p: isinstance(p, str | os.PathLike | Tensor), PATTERN_KINDS, bad=3),
        "seed": TRIGGER_CONSTRAINTS["seed"],
        **RETRAIN_CONSTRAINTS,
        "poison_rate": POISON_SHARE,
        "from_scratch": OneOf(True, False),
    }

    def __init__(
        self,
        target: int = 0,
        transparency: float = 0.8,
        pattern: str | os.PathLike[str] | Tensor = NOISE,
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
        self.transparency = transparency
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
        (:mod:`eviltwins.attacks.budget`), as BadNet's."""
        return RetrainBudget.epochs(self.epochs, self.max_steps, self.batch_size)

    def initial_trigger(
        self, model: nn.Module, data: DatasetSpec, generator: torch.Generator
    ) -> tuple[Trigger, dict[str, Any]]:
        """The blended trigger for ``data``'s images: mask 1 - ``transparency`` on every pixel,
        pattern k from ``pattern`` (``"noise"`` seeded by ``seed``), and a JSON-safe info dict
        (``pattern``, ``alpha``). The trigger IMC starts from with ``init="blended"``;
        ``model`` and ``generator`` are not used (the pattern depends on ``seed`` only)."""
        trigger = blended_trigger(data.shape, self.transparency, self.pattern, self.seed)
        return trigger, {"pattern": _describe(self.pattern), "alpha": 1.0 - self.transparency}

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
            desc="blended",
        )
        return trigger, history, {}


def blended_trigger(
    shape: tuple[int, ...] | list[int],
    transparency: float,
    pattern: str | os.PathLike[str] | Tensor = NOISE,
    seed: int = 0,
) -> Trigger:
    """The full-image trigger of images of ``shape`` (C, H, W): mask m = 1 - ``transparency``
    on every pixel (``transparency`` in (0, 1)) and the pattern :func:`blend_pattern`, so that
    stamping gives alpha * k + (1 - alpha) * x with alpha = 1 - ``transparency``."""
    c, h, w = check_image_shape(shape)
    if isinstance(transparency, bool) or not isinstance(transparency, int | float):
        raise ParamError(f"blended transparency must be a float in (0, 1); got {transparency!r}")
    if not 0 < transparency < 1:
        raise ParamError(
            f"blended transparency must be a float in (0, 1) (0 would replace every input "
            f"with the pattern); got {transparency!r}"
        )
    mask = torch.full((1, h, w), 1.0 - float(transparency))
    return Trigger(mask, blend_pattern(pattern, (c, h, w), seed))


def blend_pattern(
    pattern: str | os.PathLike[str] | Tensor, shape: tuple[int, int, int], seed: int = 0
) -> Tensor:
    """The full-image key pattern k (C, H, W) in [0, 1]: ``"noise"`` (uniform, from a
    generator seeded with ``seed``), an image file (grey or RGB as the images, resized to
    H x W, bilinear) or a tensor (C, H, W), (1, H, W) or (H, W). Anything else raises one
    :class:`ParamError` line."""
    c, h, w = shape
    if isinstance(pattern, Tensor):
        return _tensor_pattern(pattern, c, h, w)
    if isinstance(pattern, str) and pattern == NOISE:
        return torch.rand((c, h, w), generator=torch.Generator().manual_seed(int(seed)))
    if not isinstance(pattern, str | os.PathLike):
        raise ParamError(f"pattern must be {PATTERN_KINDS}; got {type(pattern).__name__}")
    path = Path(os.fspath(pattern))
    if not path.exists():
        raise ParamError(
            f"pattern must be {PATTERN_KINDS}; {str(pattern)!r} is none of these (no such file)"
        )
    if c not in (1, 3):
        raise ParamError(
            f"an image pattern is for grey (1 channel) or RGB (3 channel) images; these have "
            f"{c} channels: pass a tensor pattern or {NOISE}"
        )
    return read_pattern(path, c, (h, w))


def _tensor_pattern(pattern: Tensor, c: int, h: int, w: int) -> Tensor:
    """A tensor pattern as a (c, h, w) float copy in [0, 1], or one :class:`ParamError` line."""
    p = pattern_tensor(pattern, c)
    if tuple(p.shape) != (c, h, w):
        raise ParamError(
            f"a blended pattern tensor must cover the whole image: shape ({c}, {h}, {w}), "
            f"(1, {h}, {w}) or ({h}, {w}); got {tuple(pattern.shape)}"
        )
    return check_pattern_values(p).clone()


def _describe(pattern: str | os.PathLike[str] | Tensor) -> str:
    """A JSON-safe name of ``pattern`` for the info dict (a tensor is not written out)."""
    return f"tensor {tuple(pattern.shape)}" if isinstance(pattern, Tensor) else os.fspath(pattern)
