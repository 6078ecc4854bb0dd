"""The click types of the commands' own options, and the types a YAML config may give them.

On the command line an option keeps its text forms (``1,28,28``, ``a,b``); in a ``--config``
YAML each value must have the option's real type: ``true`` / ``false`` for a flag, a list for a
list option, a number for a number, a mapping for a mapping (:func:`config_problem`). A number
option's bound (:class:`Bounded`) is stated in its ``--help`` and checked when it is parsed.
"""

from __future__ import annotations

from typing import Any

import click

from eviltwins.base import Interval
from eviltwins.cli.estimators import ListOf
from eviltwins.config import parse_yaml
from eviltwins.utils import is_int, is_real


def rule_text(rule: Interval) -> str:
    """``rule`` as a ``--help`` states it: ``an int in [0, 10000]`` (None: not given)."""
    return rule.describe().removesuffix(" or None")


class Bounded(click.ParamType):
    """A number that ``rule`` (an :class:`~eviltwins.base.Interval`) accepts; anything else is
    one line naming the option and the rule."""

    def __init__(self, rule: Interval) -> None:
        self.rule = rule
        self.name = "integer" if rule.kind is int else "float"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.name.upper()

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str):
            value = (click.INT if self.rule.kind is int else click.FLOAT).convert(value, param, ctx)
        if not self.rule.ok(value):
            self.fail(f"{value!r} is not {rule_text(self.rule)}"[:300], param, ctx)
        return float(value) if self.rule.kind is float else value


class Numbers(click.ParamType):
    """Comma-separated numbers (``1,28,28``; a YAML list in a config), as a tuple of
    ``kind``."""

    def __init__(self, kind: type, metavar: str) -> None:
        self.kind, self.metavar, self.name = kind, metavar, f"{kind.__name__}s"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.metavar

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[Any, ...]:
        if isinstance(value, list | tuple):  # a config's list: numbers as written, not text
            number = is_int if self.kind is int else is_real
            if all(number(v) for v in value):
                try:
                    return tuple(self.kind(v) for v in value)
                except OverflowError:
                    pass
            self.fail(f"{value!r} is not a list of {self.kind.__name__}s"[:300], param, ctx)
        try:
            return tuple(self.kind(v.strip()) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not comma-separated {self.kind.__name__}s", param, ctx)


class Mapping(click.ParamType):
    """A YAML/JSON mapping given inline (``'{width: 16}'``; a mapping in a config)."""

    name = "mapping"

    def convert(self, value: Any, param: Any, ctx: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        return parse_yaml(str(value), f"--{param.name.replace('_', '-')} {value!r}")


def config_problem(param: click.Parameter, value: Any) -> str | None:
    """What a config's ``value`` for the option ``param`` must be, when it is not of the
    option's type (a string ``"5"`` for a number, ``maybe`` or ``1`` for a flag, ``abs`` for a
    list); None when it is (its range and choices are checked by the cast that follows)."""
    kind = param.type
    if getattr(param, "multiple", False) or isinstance(kind, Numbers | ListOf):
        return None if isinstance(value, list) else "a list (e.g. [a, b])"
    if isinstance(kind, click.types.BoolParamType):
        return None if isinstance(value, bool) else "true or false"
    whole = isinstance(kind, click.types.IntParamType)
    if whole or (isinstance(kind, Bounded) and kind.rule.kind is int):
        return None if is_int(value) else "an integer"
    if isinstance(kind, click.types.FloatParamType | Bounded):
        return None if is_real(value) else "a number"
    if isinstance(kind, Mapping):
        return None if isinstance(value, dict) else "a mapping (e.g. {width: 16})"
    if isinstance(kind, click.Choice):
        if all(str(c).isdigit() for c in kind.choices):
            return None if is_int(value) else "an integer"
        return None if isinstance(value, str) else "a string"
    if isinstance(kind, click.types.StringParamType | click.Path):
        return None if isinstance(value, str) else "a string"
    return None
