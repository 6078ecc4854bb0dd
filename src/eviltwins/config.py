"""Validated configuration objects (pydantic) with one-line errors.

User input from YAML files, CLI flags and Python keyword arguments all goes through
:func:`validate`, which turns pydantic's multi-line report into one
:class:`~eviltwins.errors.ParamError` line naming the parameter, the rule and the value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from eviltwins.errors import DataError, ParamError

M = TypeVar("M", bound=BaseModel)


def validate(cls: type[M], **values: Any) -> M:
    """Build ``cls(**values)``; the first validation problem becomes a one-line ParamError."""
    try:
        return cls(**values)
    except ValidationError as err:
        e = err.errors()[0]
        name = ".".join(str(p) for p in e["loc"]) or "value"
        if e["type"] == "extra_forbidden":
            known = ", ".join(cls.model_fields)
            raise ParamError(
                f"unknown parameter {name!r} for {cls.__name__}; known: {known}"
            ) from None
        msg = e["msg"][0].lower() + e["msg"][1:]
        for prefix in ("input should be ", "value should be "):
            if msg.startswith(prefix):
                msg = "must be " + msg[len(prefix) :]
        msg = msg.removeprefix("value error, ")
        raise ParamError(
            f"the {name!r} parameter of {cls.__name__} {msg}; got {e.get('input')!r}"
        ) from None


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file raises a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise DataError(f"config file {path} is not valid YAML{at}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"config file {path} must hold a mapping of option: value pairs")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
