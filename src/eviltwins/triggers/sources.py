"""What a ``--trigger`` argument names: a ``.safetensors`` trigger written by eviltwins, or a
pattern image with a mask image or an alpha and a position (:mod:`eviltwins.triggers.images`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eviltwins.errors import DataError, ParamError
from eviltwins.triggers.images import is_image_path
from eviltwins.triggers.shapes import Position, parse_position
from eviltwins.triggers.trigger import Trigger


def load_trigger(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    mask: str | os.PathLike[str] | None = None,
    alpha: float | None = None,
    position: Position | None = None,
    what: str = "the model",
) -> Trigger:
    """The trigger a ``--trigger`` argument names, for images of ``shape`` (C, H, W) (``what``
    names whose shape it is in a mismatch message).

    An image file (by its suffix: ``.png``, ``.jpg``, ...) is a pattern, read with ``mask`` /
    ``alpha`` / ``position`` by :meth:`Trigger.from_image`; anything else must be a
    ``.safetensors`` trigger written by eviltwins (:meth:`Trigger.load`: that exact path, or
    the path with ``.safetensors`` added when it has no suffix), which holds its own mask and
    position, so ``mask`` / ``alpha`` / ``position`` are refused with it. Every problem is one
    :class:`DataError` / :class:`ParamError` line.
    """
    if not isinstance(path, str | os.PathLike):
        raise ParamError(f"a trigger must be a file path; got {type(path).__name__}")
    path = Path(path)
    if position is not None:
        position = parse_position(position)
    if is_image_path(path):
        try:
            return Trigger.from_image(shape, path, mask=mask, alpha=alpha, position=position)
        except (ParamError, DataError) as err:  # the preview PNG of a saved trigger?
            saved = path.with_suffix(".safetensors")
            if mask is None and alpha is None and saved.is_file():
                raise type(err)(
                    f"{err}; if {path.name} is the preview of {saved.name}, pass {saved}"
                ) from None
            raise
    given = [
        flag
        for flag, value in (("mask", mask), ("alpha", alpha), ("position", position))
        if value is not None
    ]
    if given:
        raise ParamError(
            f"a trigger {given[0]} applies to an image trigger (PNG, JPEG, ...); {path} is a "
            ".safetensors trigger, which holds its own mask and position"
        )
    if path.suffix not in ("", ".safetensors"):
        raise ParamError(
            f"trigger {path} is neither a .safetensors trigger written by eviltwins nor an image "
            "(.png, .jpg, .bmp, ...)"
        )
    trig = Trigger.load(path)
    trig.check_shape(shape, what)
    return trig


def refuse_without_trigger(**options: Any) -> None:
    """One :class:`ParamError` line when one of ``options`` (``target``, ``trigger_mask``, ...:
    what describes a given backdoor) is set but no trigger is given."""
    for name, value in options.items():
        if value is not None:
            flag = "--" + name.replace("_", "-")
            raise ParamError(f"{flag} describes a given backdoor; pass its --trigger too")
