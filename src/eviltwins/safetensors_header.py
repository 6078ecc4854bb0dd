"""Reading a safetensors header without trusting it: the 8-byte length, bounds checks, the
JSON object (the one parser under :mod:`eviltwins.io` and :mod:`eviltwins.triggers`, which
then check the tensor entries against their own rules). Nothing here reads a tensor."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

#: Bytes per element of each safetensors dtype.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class HeaderProblem(ValueError):
    """What is wrong with a safetensors header, in a few words (the caller names the file)."""


def read_header(
    head: bytes, read: Callable[[int], bytes], size: int, max_bytes: int, min_bytes: int = 0
) -> tuple[dict[str, Any], int]:
    """The JSON header (a dict) and its length ``n`` of ``size`` bytes of safetensors whose
    first 8 bytes are ``head`` (``read(k)`` gives the next ``k``). The declared length must
    lie in ``[min_bytes, max_bytes]`` and fit ``size``; raises :class:`HeaderProblem`."""
    if len(head) < 8:
        raise HeaderProblem(f"{size} bytes, too short for a safetensors header")
    n = int.from_bytes(head, "little")
    if not min_bytes <= n <= min(max_bytes, size - 8):
        raise HeaderProblem(f"declared header length {n:,} does not fit the file's {size:,} bytes")
    raw = read(n)
    if len(raw) != n:
        raise HeaderProblem("the header is truncated")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HeaderProblem("the header is not JSON") from None
    if not isinstance(header, dict):
        raise HeaderProblem("the header is not a JSON object")
    return header, n
