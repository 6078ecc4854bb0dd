"""The base of every typed result: a dataclass that lower layers return and upper layers
render, with JSON as the interchange format (docs/architecture.md, API conventions).

:meth:`Result.to_dict` is derived from the dataclass fields (plus ``schema``, the class's
:attr:`Result.SCHEMA`); fields marked with :func:`internal` (a model, a tensor kept for the
caller) stay out of it. :meth:`Result.from_dict` is its inverse for plain-data fields: it checks
the schema name and major version, refuses unknown keys and rebuilds nested results from the
field annotations. A class with an :func:`extra` field is open: unknown keys are kept there and
written back at the top level, so a file round-trips unchanged.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from eviltwins.errors import DataError

R = TypeVar("R", bound="Result")


def internal(**kwargs: Any) -> Any:
    """A dataclass field that is not part of the result's dict (``to_dict`` / ``from_dict``)."""
    return dataclasses.field(metadata={"internal": True}, **kwargs)


def extra() -> Any:
    """The field of an open result that keeps the keys its class does not name (read from a
    file by ``from_dict``, written back at the top level by ``to_dict``)."""
    return dataclasses.field(default_factory=dict, metadata={"extra": True})


def plain(value: Any) -> Any:
    """``value`` as plain JSON-able data: results and dataclasses as dicts, tuples as lists,
    tensors and numpy arrays as (nested) lists, numpy scalars as Python numbers."""
    if isinstance(value, Result):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch / numpy
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str):
        return value.item()
    return value


def schema_version(schema: str) -> tuple[str, int]:
    """``"eviltwins.cell/1"`` -> ``("eviltwins.cell", 1)``; anything else raises DataError."""
    name, _, version = schema.rpartition("/")
    if not name or not version.isdigit():
        raise DataError(f"{schema!r}"[:80] + " is not a schema name (name/version)")
    return name, int(version)


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of typed results. Subclasses are dataclasses and set ``SCHEMA``
    (``"eviltwins.<kind>/<major version>"``)."""

    SCHEMA: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-able data, ``schema`` first."""
        out: dict[str, Any] = {"schema": self.SCHEMA} if self.SCHEMA else {}
        for f in dataclasses.fields(self):
            if f.metadata.get("extra"):
                out.update(plain(getattr(self, f.name)))
            elif not f.metadata.get("internal"):
                out[f.name] = plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], source: str = "result") -> R:
        """Rebuild a result from :meth:`to_dict`'s output; a wrong schema, an unknown key
        (unless the class has an :func:`extra` field) or a missing required field raises one
        :class:`DataError` line naming ``source``."""
        if not isinstance(data, Mapping):
            raise DataError(f"{source} is not a JSON object but {type(data).__name__}")
        data = dict(data)
        schema = data.pop("schema", cls.SCHEMA)
        if cls.SCHEMA:
            if not isinstance(schema, str):
                raise DataError(f"{source} has a schema that is not a string")
            want, major = schema_version(cls.SCHEMA)
            got, got_major = schema_version(schema)
            if got != want or got_major > major:
                raise DataError(
                    f"{source} has schema {schema!r}"[:120] + f", not {cls.SCHEMA!r}; it was "
                    "written by another tool or a newer eviltwins"
                )
        fields = dataclasses.fields(cls)
        known = {
            f.name: f for f in fields if not (f.metadata.get("internal") or f.metadata.get("extra"))
        }
        open_as = next((f.name for f in fields if f.metadata.get("extra")), None)
        unknown = sorted(set(data) - set(known))
        if unknown and open_as is None:
            raise DataError(
                f"{source} has unknown field {unknown[0]!r}"[:120] + f"; known: {', '.join(known)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            if name in data:
                kwargs[name] = _rebuild(hints.get(name), data[name], f"{source}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DataError(f"{source} lacks the field {name!r}")
        if open_as is not None:
            kwargs[open_as] = {k: data[k] for k in unknown}
        return cls(**kwargs)


def hint_members(hint: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None`` -> ``(int, NoneType)``), or the
    annotation alone."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _rebuild(hint: Any, value: Any, source: str) -> Any:
    """``value`` rebuilt as the nested result its annotation names (else unchanged)."""
    for opt in hint_members(hint):
        if isinstance(opt, type) and issubclass(opt, Result) and isinstance(value, Mapping):
            return opt.from_dict(value, source)
    return value


@dataclasses.dataclass(frozen=True)
class EvasionClaim:
    """A paper's claim that an evasion attack (TrojanNN*) beats a detector, declared by the
    detector class as ``evasion_claim`` (so the claims check names no detector): ``metric`` is
    the row column compared between each baseline and its TrojanNN* twin (an input filter's
    ``f1``: lower is evaded; a model inspector's ``target_anomaly``: lower, and no label
    flagged, is evaded), ``text`` the claim and ``paper`` what the paper reports."""

    id: str
    metric: str
    text: str
    paper: str


@dataclasses.dataclass(frozen=True)
class ShownMetric:
    """What the sweep report shows of a detector, declared by the detector class as
    ``report_metric`` (so the report names no detector).

    ``key`` is the column of the cell's row that the figures plot (per detector label, e.g.
    ``target_anomaly`` or ``f1``), ``label`` its axis label and ``threshold`` the detector's
    decision line (None: none drawn). ``name`` is the detector's short name in legends,
    ``figures`` the paper figures that plot ``key`` (names of the report's figure registry), and
    ``columns`` the summary table's columns as (row column, header); ``{label}`` in a header
    stands for the detector's label in the sweep. No ``columns``: the family's default (an input
    filter's F1, all-stamped F1 and triggered inputs)."""

    key: str
    label: str
    threshold: float | None = None
    name: str = ""
    figures: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
