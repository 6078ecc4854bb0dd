"""Triggers from elsewhere: a pattern image (the full input size, or a smaller patch placed at a
position) with a grey mask image or one opacity ``alpha``, e.g. the trigger of a backdoor planted
by another toolkit, read as the mask and pattern tensors of a trigger
(:meth:`Trigger.from_image <eviltwins.triggers.Trigger.from_image>` builds the trigger;
:func:`eviltwins.triggers.load_trigger` reads what a ``--trigger`` argument names).

Opacity and transparency: the mask m is the opacity of the trigger on each pixel, stamped as
psi(x, r; m) = x (1 - m) + r m. A mask image gives m = value / 255 (white = opaque, black = the
input shows through); ``alpha`` gives m = alpha on every pixel of the pattern (1.0 = opaque,
BadNet's usual patch). eviltwins' square triggers are parameterised by the transparency p
instead: m = 1 - p, so ``alpha`` = 1 - ``transparency``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from eviltwins.data import read_image
from eviltwins.data.base import IMAGE_FORMATS
from eviltwins.errors import DataError, ParamError
from eviltwins.triggers.shapes import MAX_TRIGGER_SIDE, Position, check_image_shape, place
from eviltwins.utils import is_real

#: Colour mode of a pattern image by the model's number of input channels.
IMAGE_MODES = {1: "L", 3: "RGB"}


@cache
def image_suffixes() -> tuple[str, ...]:
    """The file suffixes (lower case, with the dot) of the image formats a trigger pattern or
    mask may have (those :func:`eviltwins.data.read_image` decodes)."""
    return tuple(
        sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in IMAGE_FORMATS)
    )


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an image file by its suffix (``.png``, ``.jpg``, ...)."""
    return Path(path).suffix.lower() in image_suffixes()


def check_alpha(alpha: float) -> float:
    """``alpha`` (the opacity m of an image trigger's pixels) as a float in (0, 1], or one
    :class:`ParamError` line."""
    if not is_real(alpha) or not math.isfinite(alpha) or not 0 < alpha <= 1:
        raise ParamError(
            f"trigger alpha must be a number in (0, 1] (the trigger's opacity m: 1 = opaque, "
            f"= 1 - transparency); got {alpha!r}"[:200]
        )
    return float(alpha)


def image_trigger(
    shape: Sequence[int],
    pattern: str | os.PathLike[str],
    *,
    mask: str | os.PathLike[str] | None = None,
    alpha: float | None = None,
    position: Position | None = None,
) -> tuple[Tensor, Tensor]:
    """The mask (1, H, W) and pattern (C, H, W) of the trigger of a ``pattern`` image for images
    of ``shape`` (C, H, W) (:meth:`Trigger.from_image <eviltwins.triggers.Trigger.from_image>`).

    ``pattern`` is an image file (PNG, JPEG, BMP, ...; read safely, its size checked before it
    is decoded) converted to the model's colours (grey for C = 1, RGB for C = 3): either the full
    H x W, or a smaller patch placed at ``position`` (a corner name as in
    :meth:`Trigger.square`: bottom-right by default, bottom-left, top-right, top-left, center;
    or the ``(row, col)`` of its top-left pixel, or ``"row,col"``). The mask is either ``mask``,
    a grey image of the pattern's size (m = value / 255), or ``alpha`` in (0, 1] on every pixel
    of the pattern (m = alpha = 1 - transparency); with neither, a patch is opaque
    (``alpha=1``). A full-size pattern needs a mask image or an ``alpha`` below 1 (a blended
    trigger): opaque everywhere it would replace every input. A patch larger than the images, a
    position off the image, a mask of another size, and an all-black mask each raise one
    :class:`DataError` / :class:`ParamError` line. Stamping is psi(x, r; m) = x (1 - m) + r m,
    so an opaque white 3x3 patch at the bottom-right is the same trigger as
    ``Trigger.square(shape, size=3 / W)``.
    """
    c, h, w = check_image_shape(shape)
    if c not in IMAGE_MODES:
        raise ParamError(
            f"an image trigger is for grey (1 channel) or RGB (3 channel) models; this model "
            f"takes {c} channels"
        )
    if mask is not None and alpha is not None:
        raise ParamError("give the trigger a mask image or an alpha, not both")
    if alpha is not None:
        alpha = check_alpha(alpha)
    r = _read(pattern, IMAGE_MODES[c], "trigger pattern")
    ph, pw = r.shape[1:]
    if ph > h or pw > w:
        raise DataError(
            f"trigger pattern {pattern} is {ph}x{pw} pixels (height x width), larger than the "
            f"model's {h}x{w} images; pass the full-size pattern or a smaller patch"
        )
    if mask is not None:
        m = _read(mask, "L", "trigger mask")
        if tuple(m.shape[1:]) != (ph, pw):
            raise DataError(
                f"trigger mask {mask} is {m.shape[1]}x{m.shape[2]} pixels but the pattern "
                f"{pattern} is {ph}x{pw}; pass a mask of the pattern's size"
            )
        if not bool((m > 0).any()):
            raise DataError(
                f"trigger mask {mask} is black everywhere (m = 0), so the trigger would change "
                "nothing; white pixels are where the pattern shows"
            )
    else:
        if (ph, pw) == (h, w) and (alpha is None or alpha == 1):
            raise ParamError(
                f"trigger pattern {pattern} is as large as the images ({h}x{w}) and has no mask, "
                "so it would replace every input; pass a mask image, an alpha below 1 (a "
                "blended trigger) or a smaller patch"
            )
        m = torch.full((1, ph, pw), 1.0 if alpha is None else alpha)
    row, col = place("bottom-right" if position is None else position, (ph, pw), h, w)
    full_mask = torch.zeros(1, h, w)
    full_mask[:, row : row + ph, col : col + pw] = m
    full_pattern = torch.zeros(c, h, w)
    full_pattern[:, row : row + ph, col : col + pw] = r
    return full_mask, full_pattern


def _read(path: str | os.PathLike[str], mode: str, what: str) -> Tensor:
    """The image file ``path`` as a (C, H, W) float tensor in [0, 1] (C = 1 for ``L``)."""
    if not isinstance(path, str | os.PathLike):
        raise ParamError(f"a {what} must be an image file path; got {type(path).__name__}")
    im = read_image(path, mode, what=what, max_side=MAX_TRIGGER_SIDE)
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    return arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1).contiguous()
