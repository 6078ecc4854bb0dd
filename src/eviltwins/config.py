"""Validated configuration objects (pydantic) with one-line errors.

User input from YAML files, CLI flags and Python keyword arguments all goes through
:func:`validate`, which turns pydantic's multi-line report into one
:class:`~eviltwins.errors.ParamError` line naming the parameter, the rule and the value.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from eviltwins.errors import DataError, ParamError
from eviltwins.paths import readable_file

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


#: Largest config file read (a sweep spec is a few kB).
MAX_YAML_BYTES = 1_000_000


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only: nothing is constructed or imported) that also
    refuses aliases (``*name``), whose nesting can expand a small file into a huge structure."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise DataError(
                f"config file {self.name} uses a YAML alias (*{event.anchor} at line "
                f"{event.start_mark.line + 1}), which eviltwins does not accept; write the "
                "value out"
            )
        return super().compose_node(parent, index)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping safely; a missing, unreadable, oversized or malformed file raises a
    one-line error."""
    path = readable_file(path, "config file")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise DataError(f"config file {path} is over {MAX_YAML_BYTES // 1000} kB")
        loader = _Loader(path.read_bytes())
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        what = "" if where is not None else f" ({' '.join(str(err).split())[:80]})"
        raise DataError(f"config file {path} is not valid YAML{at}{what}; fix its syntax") from None
    except (UnicodeDecodeError, RecursionError):
        raise DataError(f"config file {path} is not a readable YAML text file") from None
    except OSError as err:
        raise DataError(f"config file {path} cannot be read ({err.strerror or err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"config file {path} must hold a mapping of option: value pairs")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
