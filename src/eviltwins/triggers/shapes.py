"""Square-trigger geometry and patterns: image-shape, size and transparency checks, named
positions, the square's side in pixels, its pattern (white, black, seeded random, an image
file, a tensor), and a PNG writer for trigger previews."""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from eviltwins.data import read_image
from eviltwins.errors import DataError, ParamError
from eviltwins.utils import is_int

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
PATTERNS = ("white", "black", "random")
Position = str | tuple[int, int]
MAX_TRIGGER_SIDE = 4096  # pixels a side of a trigger (and of a pattern image)
MAX_TRIGGER_CHANNELS = 4


def check_image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as (C, H, W) ints, or :class:`ParamError` (at most
    :data:`MAX_TRIGGER_CHANNELS` channels and :data:`MAX_TRIGGER_SIDE` pixels a side)."""
    try:
        c, h, w = (operator.index(v) for v in shape)
    except (TypeError, ValueError):
        raise ParamError(f"an image shape must be 3 ints (C, H, W); got {shape!r}") from None
    sides_ok = 1 <= h <= MAX_TRIGGER_SIDE and 1 <= w <= MAX_TRIGGER_SIDE
    if not (1 <= c <= MAX_TRIGGER_CHANNELS and sides_ok):
        raise ParamError(
            f"a trigger needs an image shape (C, H, W) of at most ({MAX_TRIGGER_CHANNELS}, "
            f"{MAX_TRIGGER_SIDE}, {MAX_TRIGGER_SIDE}) positive sizes; got {tuple(shape)}"
        )
    return c, h, w


def check_size(size: float) -> None:
    if isinstance(size, bool) or not isinstance(size, int | float) or not 0 < size <= 1:
        raise ParamError(
            f"trigger size must be a float in (0, 1] (width / image width); got {size!r}"
        )


def check_transparency(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ParamError(f"trigger transparency must be a float in [0, 1); got {p!r}")


def parse_position(position: Position) -> Position:
    """``"3,5"`` -> (3, 5); names are checked; tuples pass through."""
    if isinstance(position, str) and "," in position:
        try:
            r, c = (int(v) for v in position.split(","))
        except ValueError:
            raise ParamError(f"position {position!r} must be a name or 'row,col'") from None
        return (r, c)
    if isinstance(position, str) and position.replace("_", "-") not in POSITIONS:
        raise ParamError(
            f"position must be one of {', '.join(POSITIONS)} or 'row,col'; got {position!r}"
        )
    if isinstance(position, str):
        return position.replace("_", "-")
    if not isinstance(position, Sequence):
        raise ParamError(f"position must be a name or (row, col); got {position!r}"[:200])
    return tuple(position)  # type: ignore[return-value]


def place(position: Position, side: int | tuple[int, int], h: int, w: int) -> tuple[int, int]:
    """The (row, col) of the top-left pixel of a ``side`` px square (or a ``(height, width)``
    rectangle) at ``position`` in an ``h`` x ``w`` image."""
    sh, sw = side if isinstance(side, tuple) else (side, side)
    position = parse_position(position)
    if isinstance(position, tuple):
        if len(position) != 2 or not all(is_int(v) for v in position):
            raise ParamError(f"position must be a name or (row, col) ints; got {position!r}")
        r, c = position
        if not (0 <= r <= h - sh and 0 <= c <= w - sw):
            raise ParamError(
                f"a {sh}x{sw} trigger at (row, col) = ({r}, {c}) does not fit a {h}x{w} image"
            )
        return r, c
    return {
        "bottom-right": (h - sh, w - sw),
        "bottom-left": (h - sh, 0),
        "top-right": (0, w - sw),
        "top-left": (0, 0),
        "center": ((h - sh) // 2, (w - sw) // 2),
    }[position]


def square_pattern(
    pattern: Any, c: int, side: int, h: int, w: int, row: int, col: int, seed: int
) -> Tensor:
    """The (c, side, side) pattern of a square at (``row``, ``col``): white, black, random
    (seeded with ``seed``), an image file (resized), or a tensor (the square or the image)."""
    if isinstance(pattern, Tensor):
        p = pattern_tensor(pattern, c)
        if tuple(p.shape) == (c, h, w):
            p = p[:, row : row + side, col : col + side]
        if tuple(p.shape) != (c, side, side):
            raise ParamError(
                f"a pattern tensor must have shape ({c}, {side}, {side}) or ({c}, {h}, {w}); "
                f"got {tuple(pattern.shape)}"
            )
        return check_pattern_values(p)
    if pattern in ("white", "black"):
        return torch.full((c, side, side), 1.0 if pattern == "white" else 0.0)
    if pattern == "random":
        return torch.rand((c, side, side), generator=torch.Generator().manual_seed(seed))
    if not isinstance(pattern, str | os.PathLike):
        raise ParamError(
            "pattern must be white, black, random, an image file or a tensor; got "
            f"{type(pattern).__name__}"
        )
    path = Path(os.fspath(pattern))
    if not path.exists():
        raise ParamError(
            f"pattern must be white, black, random, an image file or a tensor; {str(pattern)!r} "
            "is none of these (no such file)"
        )
    return read_pattern(path, c, (side, side))


def pattern_tensor(pattern: Tensor, c: int) -> Tensor:
    """A pattern tensor as a float tensor on the CPU with a channel axis (a 2-D tensor gets
    one; one channel is repeated to ``c``), its shape not yet checked; a complex or bool
    tensor is one :class:`ParamError` line."""
    if pattern.is_complex() or pattern.dtype == torch.bool:
        raise ParamError(f"a pattern tensor must hold real numbers; got dtype {pattern.dtype}")
    p = pattern.detach().float().cpu()
    if p.ndim == 2:
        p = p[None]
    if p.shape[0] == 1 and c > 1:
        p = p.expand(c, *p.shape[1:])
    return p


def check_pattern_values(p: Tensor) -> Tensor:
    """``p`` itself when its values are finite and in [0, 1], else one :class:`ParamError`."""
    if p.numel() and (
        not bool(torch.isfinite(p).all()) or float(p.min()) < 0 or float(p.max()) > 1
    ):
        raise ParamError("pattern values must be finite and lie in [0, 1]")
    return p


def read_pattern(path: Path, c: int, size: tuple[int, int]) -> Tensor:
    """The pattern image ``path`` (grey for ``c`` = 1, else RGB; its declared size checked
    before anything is decoded) resized to ``size`` = (height, width), bilinear, as a
    (c, height, width) float tensor in [0, 1]; an unreadable image is one ParamError line."""
    try:
        im = read_image(
            path, "L" if c == 1 else "RGB", what="pattern image", max_side=MAX_TRIGGER_SIDE
        )
    except DataError as err:
        raise ParamError(str(err)) from None
    h, w = size
    arr = np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def save_png(img: Tensor, path: str | os.PathLike[str], scale: int = 1) -> None:
    """Save a (C, H, W) image in [0, 1] as PNG, enlarged ``scale`` times (nearest)."""
    arr = (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    a = arr.permute(1, 2, 0).numpy()
    Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(path)


def side_pixels(size: float, width: int) -> int:
    """The side in pixels of a square trigger of relative ``size`` on ``width`` px images."""
    return max(1, min(width, int(round(size * width))))
