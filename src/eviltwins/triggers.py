"""Triggers: a mask m and a pattern r, stamped as psi(x, r; m) = x (1 - m) + r m.

This is the one stamping function of the toolkit (Pang et al., CCS 2020, Section 5.1.2): every
attack, detector and metric stamps through :func:`stamp` / :meth:`Trigger.stamp`, batched.

The square watermark (:meth:`Trigger.square`) follows ALGORITHMS.md: a square of side
``round(size * W)`` pixels (at least 1), default bottom-right, with m = 1 - p on covered pixels
for transparency p (p = 0 is opaque). The tanh change of variables used by the optimisers is
:class:`TriggerParams` (r = (tanh(w_r) + 1) / 2, m = (tanh(w_m) + 1) / 2, confined to a region).
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from eviltwins.data import read_image
from eviltwins.errors import DataError, ParamError
from eviltwins.utils import one_line

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
PATTERNS = ("white", "black", "random")
Position = str | tuple[int, int]


def stamp(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """psi(x, r; m) = x * (1 - m) + r * m for a batch ``x`` (N, C, H, W) in one call.

    ``mask`` broadcasts as (1 or C, H, W) or (N, 1 or C, H, W); ``pattern`` as (C, H, W) or
    (N, C, H, W). Outputs stay in [0, 1] whenever the inputs do (a convex combination).
    """
    return x * (1 - mask) + pattern * mask


@dataclass(frozen=True)
class Trigger:
    """A trigger: ``mask`` (1, H, W) in [0, 1] and ``pattern`` (C, H, W) in [0, 1].

    ``region`` (1, H, W, bool) is where an optimiser may place mask mass (the square for
    TrojanNN*, the whole image for NeuralCleanse); it defaults to ``mask > 0``.
    """

    mask: Tensor
    pattern: Tensor
    region: Tensor | None = None

    def __post_init__(self) -> None:
        m, r = self.mask, self.pattern
        for name, t in (("mask", m), ("pattern", r)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                got = f"dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                raise ParamError(
                    f"trigger {name} must be a float torch.Tensor in [0, 1]; got {got}"
                )
        if m.ndim != 3 or m.shape[0] != 1:
            raise ParamError(f"trigger mask must have shape (1, H, W); got {tuple(m.shape)}")
        if r.ndim != 3 or r.shape[1:] != m.shape[1:]:
            raise ParamError(
                f"trigger pattern must have shape (C, H, W) matching the mask {tuple(m.shape)}; "
                f"got {tuple(r.shape)}"
            )
        for name, t in (("mask", m), ("pattern", r)):
            if t.numel() and (
                float(t.min()) < 0 or float(t.max()) > 1 or not torch.isfinite(t).all()
            ):
                raise ParamError(f"trigger {name} values must be finite and lie in [0, 1]")
        if self.region is None:
            object.__setattr__(self, "region", (m > 0).detach().clone())
        elif not isinstance(self.region, Tensor) or tuple(self.region.shape) != tuple(m.shape):
            got = tuple(self.region.shape) if isinstance(self.region, Tensor) else self.region
            raise ParamError(
                f"trigger region must be a bool tensor shaped like the mask {tuple(m.shape)}; "
                f"got {got!r}"
            )
        elif self.region.dtype != torch.bool:
            object.__setattr__(self, "region", self.region != 0)

    # --- stamping -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pattern.shape)  # type: ignore[return-value]

    def check_shape(self, shape: Sequence[int], what: str = "the model") -> None:
        """Raise :class:`DataError` unless this trigger is made for images of ``shape``
        (C, H, W), e.g. a model's input shape: callers check a loaded trigger with it before any
        work (``what`` names whose shape it is in the message)."""
        try:
            want = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise ParamError(f"an image shape must be (C, H, W) ints; got {shape!r}") from None
        if want != self.shape:
            raise DataError(
                f"the trigger is made for images of shape {self.shape} (C, H, W) but {what} "
                f"takes {want}; use a trigger made for this input shape"
            )

    def check_images(self, x: Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` is a batch of images this trigger can stamp."""
        if not isinstance(x, Tensor):
            raise DataError(f"can only stamp a torch.Tensor batch; got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise DataError(
                f"cannot stamp images of shape {tuple(x.shape[1:]) if x.ndim == 4 else tuple(x.shape)} "
                f"with a trigger made for {self.shape}; make the trigger for the model's input shape"
            )

    def stamp(self, x: Tensor) -> Tensor:
        """psi(x, r; m) for a batch (see :func:`stamp`); images must match the trigger's shape."""
        self.check_images(x)
        return stamp(x, self.mask.to(x.device), self.pattern.to(x.device))

    def to(self, device: torch.device | str) -> Trigger:
        return Trigger(self.mask.to(device), self.pattern.to(device), self.region.to(device))

    def detach(self) -> Trigger:
        return Trigger(
            self.mask.detach().clone(), self.pattern.detach().clone(), self.region.detach().clone()
        )

    # --- measures -------------------------------------------------------------------------
    @property
    def l1(self) -> float:
        """||m||_1 (fidelity: Pang et al. Eqn 15's l_f)."""
        from eviltwins.metrics import mask_l1

        return mask_l1(self.mask)

    @property
    def area(self) -> float:
        """||m||_1 over the image area H * W."""
        return self.l1 / (self.mask.shape[1] * self.mask.shape[2])

    @property
    def region_pixels(self) -> int:
        return int(self.region.sum())

    # --- factory --------------------------------------------------------------------------
    @classmethod
    def square(
        cls,
        shape: Sequence[int],
        size: float = 0.1,
        transparency: float = 0.0,
        position: Position = "bottom-right",
        pattern: str | os.PathLike[str] | Tensor = "white",
        seed: int = 0,
    ) -> Trigger:
        """A square watermark for images of ``shape`` (C, H, W).

        ``size`` = trigger width / image width in (0, 1] (side ``round(size * W)`` px, >= 1);
        ``transparency`` p in [0, 1) gives m = 1 - p on covered pixels; ``position`` is one of
        bottom-right (default), bottom-left, top-right, top-left, center, or an explicit
        ``(row, col)`` of the square's top-left pixel; ``pattern`` is white (default), black,
        random (seeded), an image file, or a tensor (C, s, s) or (C, H, W).
        """
        c, h, w = check_image_shape(shape)
        check_size(size)
        check_transparency(transparency)
        side = min(side_pixels(size, w), h)
        row, col = _place(position, side, h, w)
        mask = torch.zeros(1, h, w)
        mask[:, row : row + side, col : col + side] = 1.0 - float(transparency)
        region = torch.zeros(1, h, w, dtype=torch.bool)
        region[:, row : row + side, col : col + side] = True
        full = torch.zeros(c, h, w)
        full[:, row : row + side, col : col + side] = _pattern(
            pattern, c, side, h, w, row, col, seed
        )
        return cls(mask, full, region)

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], preview: bool = True) -> Path:
        """Write ``<path>.safetensors`` (mask, pattern, region) and a PNG preview of the
        pattern blended on grey, ``<path>.png``; returns the safetensors path."""
        from safetensors.torch import save_file

        path = Path(path)
        base = path.with_suffix("") if path.suffix in (".safetensors", ".png") else path
        base.parent.mkdir(parents=True, exist_ok=True)
        out = base.with_suffix(".safetensors")
        save_file(self._tensors(), str(out))
        if preview:
            grey = torch.full((1, *self.shape), 0.5)
            img = self.stamp(grey)[0]
            save_png(img, base.with_suffix(".png"), scale=max(1, 128 // self.shape[-1]))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trigger:
        """Read a trigger saved by :meth:`save` (safetensors only: nothing is unpickled).

        ``path`` must name a ``.safetensors`` file, and exactly that file is read; as a shorthand
        matching :meth:`save`, a path with no suffix at all (``out/trigger``) means
        ``out/trigger.safetensors``. Any other suffix (``x.pt``, the ``x.png`` preview) is
        refused. The safetensors header is checked (names, dtypes, shapes at most
        :data:`MAX_TRIGGER_SIDE` pixels a side, sizes against the file's) before any tensor
        is read; every problem raises one :class:`DataError` / :class:`ParamError` line.
        """
        path = trigger_path(path)
        if not path.exists():
            raise DataError(
                f"trigger file {path} does not exist; pass a trigger.safetensors written by "
                "eviltwins (e.g. the one in a poisoned model's folder)"
            )
        if not path.is_file():
            raise DataError(f"trigger {path} is not a file; pass a .safetensors trigger file")
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                _check_header(f.read(8), f.read, size, path)
                f.seek(0)
                blob = f.read(size + 1)
        except OSError as err:
            raise DataError(f"trigger file {path} cannot be read: {one_line(err)}") from None
        if len(blob) != size:
            raise DataError(f"trigger file {path} changed while it was read; try again")
        return cls._from_blob(blob, path)

    def to_bytes(self) -> bytes:
        """The trigger as the bytes of a ``.safetensors`` file (what :meth:`save` writes)."""
        from safetensors.torch import save

        return save(self._tensors())

    @classmethod
    def from_bytes(cls, blob: bytes) -> Trigger:
        """Inverse of :meth:`to_bytes` (safetensors only: nothing is unpickled; the header is
        checked as in :meth:`load` before any tensor is read)."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise ParamError(f"a trigger blob must be bytes; got {type(blob).__name__}")
        blob = bytes(blob)
        pos = 8

        def read(n: int) -> bytes:
            nonlocal pos
            pos += n
            return blob[pos - n : pos]

        _check_header(blob[:8], read, len(blob), "<bytes>")
        return cls._from_blob(blob, "<bytes>")

    @classmethod
    def _from_blob(cls, blob: bytes, source: object) -> Trigger:
        """Tensors from a safetensors blob whose header :func:`_check_header` accepted."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            d = load(blob)
        except (SafetensorError, ValueError, RuntimeError, TypeError) as err:
            raise DataError(f"{source} is not a readable trigger file: {one_line(err)}") from None
        return cls._from_tensors(d, source)

    def _tensors(self) -> dict[str, Tensor]:
        return {
            "mask": self.mask.detach().cpu().contiguous(),
            "pattern": self.pattern.detach().cpu().contiguous(),
            "region": self.region.detach().cpu().to(torch.uint8).contiguous(),
        }

    @classmethod
    def _from_tensors(cls, d: dict[str, Tensor], source: object) -> Trigger:
        if "mask" not in d or "pattern" not in d:
            raise DataError(f"{source} lacks the 'mask' / 'pattern' tensors of a trigger")
        region = d["region"] != 0 if "region" in d else None
        try:
            return cls(d["mask"].float(), d["pattern"].float(), region)
        except ParamError as err:
            raise DataError(f"{source} is not a valid trigger: {err}") from None


# What a trigger file may hold: tensor name -> allowed safetensors dtypes (with item sizes).
_FLOATS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
TRIGGER_TENSORS = {"mask": _FLOATS, "pattern": _FLOATS, "region": {"BOOL": 1, "U8": 1}}
MAX_TRIGGER_SIDE = 4096  # pixels a side of a trigger (and of a pattern image)
MAX_TRIGGER_CHANNELS = 4
MAX_HEADER_BYTES = 1 << 20  # a trigger's safetensors header is a few hundred bytes


def trigger_path(path: str | os.PathLike[str]) -> Path:
    """The ``.safetensors`` file that ``path`` names: ``path`` itself, or ``path`` +
    ``.safetensors`` when it has no suffix at all (the shorthand :meth:`Trigger.save` takes);
    :class:`ParamError` for any other suffix."""
    if not isinstance(path, str | os.PathLike):
        raise ParamError(f"a trigger path must be a str or path; got {type(path).__name__}")
    path = Path(path)
    if path.suffix == ".safetensors":
        return path
    if not path.suffix:
        return path.with_suffix(".safetensors")
    hint = (
        f" ({path.name} is the preview image; pass {path.with_suffix('.safetensors').name})"
        if path.suffix == ".png"
        else ""
    )
    raise ParamError(
        f"trigger {path} is not a .safetensors file; triggers are .safetensors files written "
        f"by eviltwins{hint}"
    )


def _check_header(prefix: bytes, read: Any, size: int, source: object) -> None:
    """Check the safetensors header of a trigger file of ``size`` bytes whose first 8 bytes
    are ``prefix`` (``read(n)`` gives the next n bytes) without reading any tensor: JSON, the
    tensor names and dtypes, shapes (at most :data:`MAX_TRIGGER_SIDE` a side) and byte
    offsets that fit the file. Raises one :class:`DataError` line."""

    def bad(problem: str) -> DataError:
        return DataError(
            f"{source} is not a trigger file ({problem}); pass a .safetensors trigger written "
            "by eviltwins"
        )

    if len(prefix) < 8:
        raise bad(f"{size} bytes, too short for a safetensors header")
    n = int.from_bytes(prefix, "little")
    if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
        raise bad(f"declared header length {n:,} does not fit the file's {size:,} bytes")
    raw = read(n)
    if len(raw) != n:
        raise bad("the header is truncated")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise bad("its metadata is not a string-to-string map")
    missing = [k for k in ("mask", "pattern") if k not in header]
    if missing:
        raise bad(f"no {' or '.join(repr(k) for k in missing)} tensor")
    unknown = sorted(set(header) - set(TRIGGER_TENSORS))
    if unknown:
        raise bad(f"unexpected tensor {unknown[0][:40]!r}")
    end = 0
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise bad(f"tensor {name!r} has no dtype / shape entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in TRIGGER_TENSORS[name]:
            allowed = ", ".join(TRIGGER_TENSORS[name])
            raise bad(f"tensor {name!r} has dtype {str(dtype)[:20]!r}, not one of {allowed}")
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
        ):
            raise bad(f"tensor {name!r} has shape {str(shape)[:40]}, not (C, H, W)")
        c, h, w = shape
        if not (
            1 <= c <= MAX_TRIGGER_CHANNELS
            and 1 <= h <= MAX_TRIGGER_SIDE
            and 1 <= w <= MAX_TRIGGER_SIDE
        ):
            raise bad(
                f"tensor {name!r} declares shape {tuple(shape)}; at most "
                f"({MAX_TRIGGER_CHANNELS}, {MAX_TRIGGER_SIDE}, {MAX_TRIGGER_SIDE}) is allowed"
            )
        shapes[name] = (c, h, w)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size - 8 - n
            or offsets[1] - offsets[0] != c * h * w * TRIGGER_TENSORS[name][dtype]
        ):
            raise bad(f"tensor {name!r} has data offsets that do not match its shape and the file")
        end = max(end, offsets[1])
    if shapes["mask"][0] != 1 or shapes["mask"][1:] != shapes["pattern"][1:]:
        raise bad(f"mask {shapes['mask']} and pattern {shapes['pattern']} do not match")
    if "region" in shapes and shapes["region"] != shapes["mask"]:
        raise bad(f"region {shapes['region']} and mask {shapes['mask']} do not match")
    if 8 + n + end != size:
        raise bad(f"{size:,} bytes where the header accounts for {8 + n + end:,}")


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
    return position.replace("_", "-") if isinstance(position, str) else tuple(position)  # type: ignore[return-value]


def _place(position: Position, side: int, h: int, w: int) -> tuple[int, int]:
    position = parse_position(position)
    if isinstance(position, tuple):
        r, c = position
        if not (0 <= r <= h - side and 0 <= c <= w - side):
            raise ParamError(
                f"a {side}x{side} trigger at (row, col) = ({r}, {c}) does not fit a {h}x{w} image"
            )
        return r, c
    return {
        "bottom-right": (h - side, w - side),
        "bottom-left": (h - side, 0),
        "top-right": (0, w - side),
        "top-left": (0, 0),
        "center": ((h - side) // 2, (w - side) // 2),
    }[position]


def _pattern(
    pattern: Any, c: int, side: int, h: int, w: int, row: int, col: int, seed: int
) -> Tensor:
    if isinstance(pattern, Tensor):
        if pattern.is_complex() or pattern.dtype == torch.bool:
            raise ParamError(f"a pattern tensor must hold real numbers; got dtype {pattern.dtype}")
        p = pattern.detach().float().cpu()
        if p.ndim == 2:
            p = p[None]
        if p.shape[0] == 1 and c > 1:
            p = p.expand(c, *p.shape[1:])
        if tuple(p.shape) == (c, h, w):
            p = p[:, row : row + side, col : col + side]
        if tuple(p.shape) != (c, side, side):
            raise ParamError(
                f"a pattern tensor must have shape ({c}, {side}, {side}) or ({c}, {h}, {w}); "
                f"got {tuple(pattern.shape)}"
            )
        if p.numel() and (
            not bool(torch.isfinite(p).all()) or float(p.min()) < 0 or float(p.max()) > 1
        ):
            raise ParamError("pattern values must be finite and lie in [0, 1]")
        return p
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
    try:  # the declared size is checked before anything is decoded
        im = read_image(
            path, "L" if c == 1 else "RGB", what="pattern image", max_side=MAX_TRIGGER_SIDE
        )
    except DataError as err:
        raise ParamError(str(err)) from None
    arr = np.asarray(im.resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def save_png(img: Tensor, path: str | os.PathLike[str], scale: int = 1) -> None:
    """Save a (C, H, W) image in [0, 1] as PNG, enlarged ``scale`` times (nearest)."""
    arr = (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    a = arr.permute(1, 2, 0).numpy()
    Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(path)


def _atanh_of_unit(v: Tensor, eps: float = 0.02) -> Tensor:
    """The w with (tanh(w) + 1) / 2 = v, v clamped to [eps, 1 - eps] so that optimisation does
    not start in tanh's flat tails (changes an initial value by at most ``eps / 2``)."""
    return torch.atanh((2 * v - 1).clamp(-1 + eps, 1 - eps))


class TriggerParams(nn.Module):
    """The tanh change of variables of Algorithm 2 (Pang et al., Section 5.1.2):
    r = (tanh(w_r) + 1) / 2 and, when ``learn_mask``, m = max_mask * (tanh(w_m) + 1) / 2,
    confined to the trigger's ``region`` (outside it m = 0 and r does not matter).

    ``learn_mask=False``: the mask stays as given (human-vision mode). ``shared_mask=True``: one
    opacity shared by every covered pixel (Section 5.1.2, "all the non-zero elements of m share
    the same transparency"); ``False``: each pixel's opacity on its own, so pixels can drop out
    and the trigger shrinks. ``max_mask`` caps the opacity (1 - the given transparency).
    """

    def __init__(
        self,
        init: Trigger,
        learn_mask: bool = False,
        max_mask: float = 1.0,
        shared_mask: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("region", init.region.float())
        self.register_buffer("fixed_mask", init.mask.detach().clone())
        self.w_pattern = nn.Parameter(_atanh_of_unit(init.pattern.detach()))
        self.learn_mask = learn_mask
        self.max_mask = float(max_mask)
        rel = (init.mask.detach() / max(self.max_mask, 1e-8)).clamp(0, 1)
        if shared_mask:
            covered = init.region
            start = rel[covered].mean() if covered.any() else torch.tensor(1.0)
            rel = start.reshape(1, 1, 1)
        self.w_mask = nn.Parameter(_atanh_of_unit(rel), requires_grad=learn_mask)

    def mask(self) -> Tensor:
        if not self.learn_mask:
            return self.fixed_mask
        return (torch.tanh(self.w_mask) + 1) / 2 * self.max_mask * self.region

    def pattern(self) -> Tensor:
        return (torch.tanh(self.w_pattern) + 1) / 2

    def forward(self, x: Tensor) -> Tensor:
        """Stamp ``x`` with the current (differentiable) trigger."""
        return stamp(x, self.mask(), self.pattern())

    def trigger(self) -> Trigger:
        """The current trigger, detached, with the pattern zeroed outside the region."""
        with torch.no_grad():
            m = self.mask().detach().clone()
            r = (self.pattern() * self.region).detach().clone()
        return Trigger(m.clamp(0, 1), r.clamp(0, 1), self.region.bool().clone())


def side_pixels(size: float, width: int) -> int:
    """The side in pixels of a square trigger of relative ``size`` on ``width`` px images."""
    return max(1, min(width, int(round(size * width))))


__all__ = [
    "MAX_TRIGGER_CHANNELS",
    "MAX_TRIGGER_SIDE",
    "POSITIONS",
    "Trigger",
    "TriggerParams",
    "check_image_shape",
    "check_size",
    "check_transparency",
    "parse_position",
    "save_png",
    "side_pixels",
    "stamp",
    "trigger_path",
]
