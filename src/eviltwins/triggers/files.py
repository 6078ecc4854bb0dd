"""Trigger files: which ``.safetensors`` path a trigger argument names, and the check of a
trigger file's header (tensor names, dtypes, shapes, byte offsets) before any tensor is read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eviltwins.errors import DataError, ParamError
from eviltwins.safetensors_header import HeaderProblem, read_header
from eviltwins.triggers.shapes import MAX_TRIGGER_CHANNELS, MAX_TRIGGER_SIDE

# What a trigger file may hold: tensor name -> allowed safetensors dtypes (with item sizes).
_FLOATS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
TRIGGER_TENSORS = {"mask": _FLOATS, "pattern": _FLOATS, "region": {"BOOL": 1, "U8": 1}}
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


def check_header(prefix: bytes, read: Any, size: int, source: object) -> None:
    """Check the safetensors header of a trigger file of ``size`` bytes whose first 8 bytes
    are ``prefix`` (``read(n)`` gives the next n bytes) without reading any tensor: JSON, the
    tensor names and dtypes, shapes (at most :data:`MAX_TRIGGER_SIDE` a side) and byte
    offsets that fit the file. Raises one :class:`DataError` line."""

    def bad(problem: str) -> DataError:
        return DataError(
            f"{source} is not a trigger file ({problem}); pass a .safetensors trigger written "
            "by eviltwins"
        )

    try:
        header, n = read_header(prefix, read, size, MAX_HEADER_BYTES, min_bytes=2)
    except HeaderProblem as err:
        raise bad(str(err)) from None
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
            or not 0 <= offsets[0] <= offsets[1]
            or offsets[1] - offsets[0] != c * h * w * TRIGGER_TENSORS[name][dtype]
        ):
            raise bad(f"tensor {name!r} has data offsets that do not match its shape and the file")
        if offsets[1] > size - 8 - n:
            raise DataError(
                f"{source} is truncated or corrupt (tensor {name!r} ends at byte "
                f"{8 + n + offsets[1]:,} but the file holds {size:,} bytes); replace the file"
            )
        end = max(end, offsets[1])
    if shapes["mask"][0] != 1 or shapes["mask"][1:] != shapes["pattern"][1:]:
        raise bad(f"mask {shapes['mask']} and pattern {shapes['pattern']} do not match")
    if "region" in shapes and shapes["region"] != shapes["mask"]:
        raise bad(f"region {shapes['region']} and mask {shapes['mask']} do not match")
    if 8 + n + end != size:
        raise bad(f"{size:,} bytes where the header accounts for {8 + n + end:,}")
