"""The trigger object (mask m, pattern r, region) and :func:`stamp`, psi(x, r; m) =
x (1 - m) + r m: the one stamping function of the toolkit (see :mod:`eviltwins.triggers`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from eviltwins.errors import DataError, ParamError
from eviltwins.metrics import mask_l1
from eviltwins.paths import publish_mode, unreadable
from eviltwins.triggers.files import check_header, trigger_path
from eviltwins.triggers.images import image_trigger
from eviltwins.triggers.shapes import (
    Position,
    check_image_shape,
    check_size,
    check_transparency,
    place,
    save_png,
    side_pixels,
    square_pattern,
)
from eviltwins.utils import one_line


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
        row, col = place(position, side, h, w)
        mask = torch.zeros(1, h, w)
        mask[:, row : row + side, col : col + side] = 1.0 - float(transparency)
        region = torch.zeros(1, h, w, dtype=torch.bool)
        region[:, row : row + side, col : col + side] = True
        full = torch.zeros(c, h, w)
        full[:, row : row + side, col : col + side] = square_pattern(
            pattern, c, side, h, w, row, col, seed
        )
        return cls(mask, full, region)

    @classmethod
    def from_image(
        cls,
        shape: Sequence[int],
        pattern: str | os.PathLike[str],
        *,
        mask: str | os.PathLike[str] | None = None,
        alpha: float | None = None,
        position: Position | None = None,
    ) -> Trigger:
        """A trigger from a ``pattern`` image file (full size, or a patch at ``position``,
        bottom-right by default) with a grey ``mask`` image (m = value / 255) or an opacity
        ``alpha`` (m = alpha = 1 - transparency; a patch is opaque without either), e.g. one
        planted by another toolkit: see :func:`eviltwins.triggers.images.image_trigger` for
        the rules and the one-line errors. An opaque white 3x3 patch at the bottom-right is
        the same trigger as ``Trigger.square(shape, size=3 / W)``."""
        return cls(*image_trigger(shape, pattern, mask=mask, alpha=alpha, position=position))

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
        publish_mode(out)  # safetensors writes its file with mode 0600
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
                check_header(f.read(8), f.read, size, path)
                f.seek(0)
                blob = f.read(size + 1)
        except OSError as err:
            raise DataError(f"trigger file {path} {unreadable(err)}") from None
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

        check_header(blob[:8], read, len(blob), "<bytes>")
        return cls._from_blob(blob, "<bytes>")

    @classmethod
    def _from_blob(cls, blob: bytes, source: object) -> Trigger:
        """Tensors from a safetensors blob whose header :func:`~eviltwins.triggers.files.check_header` accepted."""
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
