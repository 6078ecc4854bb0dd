"""JSON files: atomic writes of valid JSON (no NaN/inf), bounded and checked reads."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from eviltwins.errors import DataError
from eviltwins.paths import make_folder, publish_mode, readable_file, unreadable


def jsonable(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None``: JSON has no NaN or inf, and a
    file holding a bare ``NaN`` is not valid JSON for other readers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(v) for v in data]
    return data


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write valid JSON atomically (temp file + rename): a crash never leaves half a file.
    Non-finite floats are written as ``null`` (see :func:`jsonable`)."""
    path = make_folder(Path(path).parent) / Path(path).name
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(jsonable(data), fh, indent=2, sort_keys=False, allow_nan=False)
            fh.write("\n")
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Largest JSON file read (model cards, reports, cells are a few kB).
MAX_JSON_BYTES = 64_000_000


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable, oversized or malformed file is one
    :class:`DataError` line. ``NaN``/``Infinity`` literals are refused (not JSON)."""
    path = readable_file(path, what)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{what} {path} is over {MAX_JSON_BYTES // 10**6} MB; not a {what}")
        return json.loads(path.read_bytes(), parse_constant=refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as err:
        msg = " ".join(str(err).split())[:120]
        raise DataError(f"{what} {path} is not valid JSON: {msg}") from None
    except OSError as err:
        raise DataError(f"{what} {path} {unreadable(err)}") from None


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
