"""Validated configuration objects with one-line errors, on the estimators' constraint system.

A configuration object (:class:`~eviltwins.training.TrainConfig`, the sweep spec and its
entries) is a dataclass deriving from :class:`Validated`: each field's rule is a
:class:`~eviltwins.base.Constraint` in ``_constraints`` (the same rules attacks and detectors
use), checked when the object is built. User input from YAML files, CLI flags and Python
keyword arguments goes through :func:`validate`, which also refuses unknown names. Every problem
is one :class:`~eviltwins.errors.ParamError` line naming the parameter, the rule and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import yaml

from eviltwins.base import Check, Constraint
from eviltwins.errors import DataError, ParamError
from eviltwins.paths import readable_file
from eviltwins.results import hint_members, plain
from eviltwins.utils import is_int

V = TypeVar("V", bound="Validated")

#: Constraint wording (``>=``) as config messages spell it (``greater than or equal to``).
_WORDS = (
    (">=", "greater than or equal to"),
    ("<=", "less than or equal to"),
    (">", "greater than"),
    ("<", "less than"),
)


def _words(text: str) -> str:
    for sign, words in _WORDS:
        text = text.replace(f" {sign} ", f" {words} ")
    return text


@dataclasses.dataclass(frozen=True)
class Validated:
    """Base of validated configuration dataclasses: ``_constraints`` maps a field to its
    :class:`~eviltwins.base.Constraint` (or a tuple of them), checked in field order when the
    object is built. Ints given for ``float`` fields become floats and items of a
    ``list[<Validated>]`` field given as mappings are built (and validated) in turn."""

    _constraints: ClassVar[dict[str, Constraint | tuple[Constraint, ...]]] = {}

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            value = _convert(_hints(type(self)).get(f.name), getattr(self, f.name), f.name)
            object.__setattr__(self, f.name, value)
            rules = self._constraints.get(f.name, ())
            for rule in rules if isinstance(rules, tuple) else (rules,):
                if not rule.ok(value):
                    raise ParamError(
                        f"the {f.name!r} parameter of {owner} must be "
                        f"{_words(rule.describe())}; got {value!r}"[:400]
                    )
        self._check()

    def _check(self) -> None:
        """Rules across fields (raise one ParamError line); none by default."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data (nested configs as dicts), in field order."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(hint: Any, value: Any, name: str) -> Any:
    """``value`` converted as its annotation asks: an int for a float, mappings in a list of
    configs built; anything else unchanged (the constraints judge it)."""
    origin = typing.get_origin(hint)
    members = hint_members(hint)
    if len(members) > 1:
        options = [a for a in members if a is not type(None)]
        return value if value is None or len(options) != 1 else _convert(options[0], value, name)
    if hint is float and is_int(value):
        try:
            return float(value)
        except OverflowError:  # past any float: left as it is for the bound to refuse
            return value
    if origin is list and isinstance(value, list | tuple):
        (item,) = typing.get_args(hint) or (Any,)
        return [_item(item, v, f"{name}.{i}") for i, v in enumerate(value)]
    return value


def _item(hint: Any, value: Any, name: str) -> Any:
    if isinstance(hint, type) and issubclass(hint, Validated) and isinstance(value, dict):
        return validate(hint, _where=name, **value)
    return _convert(hint, value, name)


def validate(cls: type[V], _where: str = "", **values: Any) -> V:
    """Build ``cls(**values)``, refusing unknown and missing names; the first problem is a
    one-line ParamError."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    at = f"{_where}." if _where else ""
    for name in values:
        if name not in fields:
            raise ParamError(
                f"unknown parameter {at + name!r} for {cls.__name__}; known: {', '.join(fields)}"
            )
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in values:
            raise ParamError(f"the {at + name!r} parameter of {cls.__name__} is required")
    try:
        return cls(**values)
    except ParamError as err:
        if not _where:
            raise
        raise ParamError(
            str(err).replace("parameter of", f"parameter (in {_where}) of", 1)
        ) from None


#: Largest config file read (a sweep spec is a few kB).
MAX_YAML_BYTES = 1_000_000


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only: nothing is constructed or imported) that also
    refuses aliases (``*name``), whose nesting can expand a small file into a huge structure,
    and reads ``1e-3`` as the number it is (YAML 1.2; YAML 1.1 wants ``1.0e-3``)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise DataError(
                f"{self.name} uses a YAML alias (*{event.anchor} at line "
                f"{event.start_mark.line + 1}), which eviltwins does not accept; write the "
                "value out"
            )
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping safely; a missing, unreadable, oversized or malformed file raises a
    one-line error."""
    path = readable_file(path, "config file")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise DataError(f"config file {path} is over {MAX_YAML_BYTES // 1000} kB")
        text = path.read_bytes()
    except OSError as err:
        raise DataError(f"config file {path} cannot be read ({err.strerror or err})") from None
    data = parse_yaml(text, f"config file {path}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_yaml(text: str | bytes, what: str) -> dict[str, Any]:
    """A YAML (or JSON) mapping from ``text`` (``what`` names it in errors), read with the safe
    loader of :func:`read_yaml` (plain data, no aliases); empty text is ``{}``."""
    if len(text) > MAX_YAML_BYTES:
        raise DataError(f"{what} is over {MAX_YAML_BYTES // 1000} kB")
    try:
        loader = _Loader(text)
        loader.name = what
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = f" ({' '.join(str(err).split())[:80]})" if where is None else ""
        raise DataError(f"{what} is not valid YAML{at}{problem}; fix its syntax") from None
    except (UnicodeDecodeError, RecursionError):
        raise DataError(f"{what} is not a readable YAML text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{what} must hold a mapping of option: value pairs")
    return data


def grid_list(kind: Callable[[Any], bool], what: str) -> Check:
    """A non-empty list of ``what`` without repeats (each is a grid axis)."""

    def ok(v: Any) -> bool:
        return (
            isinstance(v, list)
            and len(v) >= 1
            and all(kind(x) for x in v)
            and len(set(v)) == len(v)
        )

    return Check(ok, f"a non-empty list of {what} without repeats (each is a grid axis)")


def unit_grid_list(low_open: bool, high_open: bool, what: str) -> Check:
    """A non-empty list of floats in the unit interval, open or closed at each end, without
    repeats (a sweep's sizes and transparencies)."""

    def ok(v: Any) -> bool:
        return grid_list(lambda x: isinstance(x, float), "").ok(v) and all(
            (x > 0 if low_open else x >= 0) and (x < 1 if high_open else x <= 1) for x in v
        )

    lb, rb = "(" if low_open else "[", ")" if high_open else "]"
    return Check(ok, f"a non-empty list of {what} in {lb}0, 1{rb} without repeats")
