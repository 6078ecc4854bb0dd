"""The per-cell result of a sweep and its files: a typed :class:`CellResult` written atomically
by the runner (:func:`write_cell`) and read back, checked, by the runner and the report
(:func:`read_cell`, :func:`scan_cells`).

A cell file is ``cells/<key>.json`` (schema ``eviltwins.cell/1``), its side files (trigger,
stamped examples, optionally the poisoned model) in ``cells/<key>/``. The records are open
(:func:`eviltwins.results.extra`): keys they do not name (an attack's history, a detector
report's scores) are kept and written back, and a key a file does not hold is not added, so
``read_cell(path).to_dict()`` equals the file's JSON.

Reading checks the shape the readers rely on, strictly (no coercion: ``"0"`` is not a seed),
and turns anything else into one :class:`CellFileError` line: too big, not UTF-8, not JSON, a
NaN/Infinity literal, or ``wrong shape: <where>: <what>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from eviltwins.errors import DataError
from eviltwins.experiments.spec import Entry
from eviltwins.io import write_json
from eviltwins.io.jsonfile import refuse_constant
from eviltwins.results import Result, extra, internal, schema_version
from eviltwins.utils import is_int, is_real

CELL_SCHEMA = "eviltwins.cell/1"
#: Largest cell result read (they are a few kB).
MAX_CELL_BYTES = 64_000_000

R = TypeVar("R", bound="_Record")


class CellFileError(DataError):
    """A cell result file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        reason = " ".join(reason.split())
        msg = f"cell result {path} is unusable ({reason}); re-run the sweep to recompute it"
        super().__init__(" ".join(msg.split()))  # one line, whatever the file is called
        self.path = path
        self.reason = reason


class _WrongShape(Exception):
    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc or 'top level'}: {msg}")


# --- records -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Record(Result):
    """An open result read from (or written to) a cell file: the named fields a file holds
    (``given``) are written back, the others left out, so a file round-trips unchanged."""

    given: frozenset[str] | None = internal(default=None, kw_only=True, repr=False, compare=False)
    #: field name -> builder of its value from plain data (nested records)
    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.given is None:
            return out
        named = set(_named(type(self)))
        return {k: v for k, v in out.items() if k not in named or k in self.given}

    @classmethod
    def load(cls: type[R], data: Mapping[str, Any]) -> R:
        """The record of plain data already checked by :func:`check_shape` (or written by
        the runner)."""
        kwargs: dict[str, Any] = {}
        for name in _named(cls):
            if name in data:
                build = cls._NESTED.get(name)
                value = data[name]
                kwargs[name] = build(value) if build is not None and value is not None else value
        rest = {k: v for k, v in data.items() if k not in kwargs}
        if cls.SCHEMA:
            rest.pop("schema", None)
        return cls(**kwargs, extra=rest, given=frozenset(kwargs))


def _named(cls: type[_Record]) -> list[str]:
    """The fields of a record that are keys of its dict."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if not (f.metadata.get("internal") or f.metadata.get("extra"))
    ]


@dataclasses.dataclass(frozen=True)
class CellConfig(_Record):
    """What a cell ran: the grid point, the attack's parameters and the detectors (``extra``
    keeps ``clean``, ``n_clean`` and the rest of :meth:`~eviltwins.experiments.Cell.config`)."""

    dataset: str
    model: str
    attack: str
    label: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    size: float | None = None
    transparency: float | None = None
    seed: int = 0
    detectors: list[Entry] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = extra()

    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "detectors": lambda v: [Entry(d["name"], d.get("label"), d.get("params", {})) for d in v]
    }


@dataclasses.dataclass(frozen=True)
class AttackRecord(_Record):
    """The attack's result (:meth:`~eviltwins.attacks.BackdoorResult.to_dict`, or the clean
    model's accuracy for a ``none`` cell); ``extra`` keeps history, parameters, trigger info."""

    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = extra()


@dataclasses.dataclass(frozen=True)
class DetectorRecord(_Record):
    """One detector's result on the cell's model: an input filter's report (``kind:
    "filter"``), a model inspection (``"inspection"``, with ``target_anomaly`` and
    ``target_flagged`` for the attack's target) or ``skipped`` with the reason."""

    kind: str | None = None
    skipped: str | None = None
    metrics: dict[str, Any] | None = None
    n_clean: int | None = None
    n_triggered: int | None = None
    all_stamped: dict[str, Any] | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_anomaly: float | None = None
    target_anomaly: float | None = None
    target_flagged: bool | None = None
    flagged: list[int | str] = dataclasses.field(default_factory=list)
    seconds: float | None = None
    peak_mb: float | None = None
    extra: dict[str, Any] = extra()


@dataclasses.dataclass(frozen=True)
class CellResult(_Record):
    """One cell's result: ``status`` ``"ok"`` (with ``attack`` and ``detectors``) or
    ``"error"`` (with ``error`` and, for a cell that ran, ``traceback``). ``key`` is the file's
    stem (not written)."""

    SCHEMA: ClassVar[str] = CELL_SCHEMA

    status: str
    cell: CellConfig
    error: str | None = None
    traceback: str | None = None
    seconds: float | None = None
    threads: int | None = None
    versions: dict[str, Any] = dataclasses.field(default_factory=dict)
    target: int | None = None
    attack: AttackRecord | None = None
    detectors: dict[str, DetectorRecord] | None = None
    extra: dict[str, Any] = extra()
    key: str = internal(default="", kw_only=True)

    _NESTED: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "cell": CellConfig.load,
        "attack": AttackRecord.load,
        "detectors": lambda v: {k: DetectorRecord.load(d) for k, d in v.items()},
    }

    @property
    def ok(self) -> bool:
        """The cell finished."""
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "cell result") -> CellResult:
        """A checked cell result (:func:`check_shape`); one :class:`DataError` line else."""
        try:
            check_shape(data)
        except _WrongShape as err:
            raise DataError(f"{source} has the wrong shape: {err}") from None
        return cls.load(data)

    def with_key(self, key: str) -> CellResult:
        return dataclasses.replace(self, key=key)


# --- the shape check (strict types: what the readers use) ----------------------------------
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (is_int, "an integer"),
    "float": (is_real, "a number"),
    "bool": (lambda v: isinstance(v, bool), "a boolean"),
    "dict": (lambda v: isinstance(v, dict), "a JSON object"),
    "list": (lambda v: isinstance(v, list), "a list"),
}


def _field(
    data: Mapping[str, Any],
    name: str,
    kind: str,
    loc: str,
    required: bool = False,
    nullable: bool = True,
) -> Any:
    """``data[name]`` checked to be of ``kind``: absent only unless ``required``, ``null`` only
    when ``nullable`` (a field the readers take as a dict or list when present is not)."""
    at = f"{loc}.{name}" if loc else name
    if name not in data:
        if required:
            raise _WrongShape(at, "field required")
        return None
    value = data[name]
    if value is None and nullable and not required:
        return None
    ok, what = _KINDS[kind]
    if not ok(value):
        raise _WrongShape(at, f"must be {what}; got {type(value).__name__}")
    return value


def _object(value: Any, loc: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _WrongShape(loc, f"must be a JSON object; got {type(value).__name__}")
    return value


def _unit(data: Mapping[str, Any], name: str, loc: str) -> None:
    v = _field(data, name, "float", loc)
    if v is not None and not 0 <= v <= 1:
        raise _WrongShape(f"{loc}.{name}", f"must be in [0, 1]; got {v!r}")


def _check_config(cfg: Mapping[str, Any]) -> None:
    for name in ("dataset", "model", "attack"):
        _field(cfg, name, "str", "cell", required=True)
    _field(cfg, "label", "str", "cell")
    params = _field(cfg, "params", "dict", "cell", nullable=False)
    if params is not None and not isinstance(params.get("init", ""), str):
        raise _WrongShape("cell.params", "params.init must be an attack name")
    _unit(cfg, "size", "cell")
    _unit(cfg, "transparency", "cell")
    _field(cfg, "seed", "int", "cell", required=True)
    for i, d in enumerate(_field(cfg, "detectors", "list", "cell", nullable=False) or []):
        loc = f"cell.detectors.{i}"
        d = _object(d, loc)
        _field(d, "name", "str", loc, required=True)
        _field(d, "label", "str", loc)
        _field(d, "params", "dict", loc, nullable=False)


def _check_detector(d: Any, loc: str) -> None:
    d = _object(d, loc)
    skipped = _field(d, "skipped", "str", loc)
    kind = _field(d, "kind", "str", loc)
    metrics = _field(d, "metrics", "dict", loc)
    _field(d, "n_clean", "int", loc)
    _field(d, "n_triggered", "int", loc)
    stamped = _field(d, "all_stamped", "dict", loc)
    if stamped is not None:
        _field(stamped, "metrics", "dict", f"{loc}.all_stamped")
        _field(stamped, "n_triggered", "int", f"{loc}.all_stamped")
    details = _field(d, "details", "dict", loc, nullable=False)
    if details is not None:
        for i, s in enumerate(_field(details, "steps", "list", f"{loc}.details") or []):
            if not is_real(s):
                raise _WrongShape(f"{loc}.details.steps.{i}", "must be a number")
    for name in ("max_anomaly", "target_anomaly", "peak_mb"):
        _field(d, name, "float", loc)
    _field(d, "target_flagged", "bool", loc)
    for i, f in enumerate(_field(d, "flagged", "list", loc, nullable=False) or []):
        if not (is_int(f) or isinstance(f, str)):
            raise _WrongShape(f"{loc}.flagged.{i}", "must be an integer or a string")
    if skipped is None and kind == "filter" and metrics is None:
        raise _WrongShape(loc, "an input filter's result needs 'metrics'")


def check_shape(data: Any) -> None:
    """Raise ``_WrongShape(where, what)`` unless ``data`` has a cell result's shape."""
    data = _object(data, "")
    schema = data.get("schema", CELL_SCHEMA)
    if not isinstance(schema, str):
        raise _WrongShape("schema", "must be a string")
    try:
        name, major = schema_version(schema)
    except DataError:
        raise _WrongShape("schema", f"{schema!r}"[:60] + " is not a schema name") from None
    want, want_major = schema_version(CELL_SCHEMA)
    if name != want or major > want_major:
        raise _WrongShape("schema", f"{schema!r}"[:60] + f" is not {CELL_SCHEMA!r}")
    status = _field(data, "status", "str", "", required=True)
    if status not in ("ok", "error"):
        raise _WrongShape("status", f"must be 'ok' or 'error'; got {status!r}"[:100])
    _check_config(_object(_field(data, "cell", "dict", "", required=True), "cell"))
    _field(data, "error", "str", "")
    _field(data, "target", "int", "")
    attack = _field(data, "attack", "dict", "")
    if attack is not None:
        _field(attack, "metrics", "dict", "attack", nullable=False)
    detectors = _field(data, "detectors", "dict", "")
    for label, d in (detectors or {}).items():
        _check_detector(d, f"detectors.{label}")
    if status == "ok" and (attack is None or detectors is None):
        raise _WrongShape("", "a finished cell needs 'attack' and 'detectors'")


# --- files ---------------------------------------------------------------------------------
def read_cell(path: str | os.PathLike[str]) -> CellResult:
    """A cell result file, checked: a JSON object of the shape the runner writes (what the
    report reads, with the right types). Anything else (cut short, not JSON, not UTF-8, a
    folder, the wrong shape) raises a one-line :class:`CellFileError`."""
    path = Path(path)
    if path.is_dir():
        raise CellFileError(path, "a folder, not a file")
    if not path.is_file():
        raise CellFileError(path, "missing or not a regular file")
    try:
        if path.stat().st_size > MAX_CELL_BYTES:
            raise CellFileError(path, f"over {MAX_CELL_BYTES // 10**6} MB")
        raw = path.read_bytes()
    except OSError as err:
        raise CellFileError(path, f"cannot be read: {err.strerror or err}") from None
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise CellFileError(path, "not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise CellFileError(path, "not valid JSON") from None
    if not isinstance(data, dict):
        raise CellFileError(path, f"not a JSON object but {type(data).__name__}")
    try:
        check_shape(data)
    except _WrongShape as err:
        raise CellFileError(path, f"wrong shape: {str(err)[:160]}") from None
    return CellResult.load(data).with_key(path.stem)


def is_finished(path: str | os.PathLike[str]) -> bool:
    """A cell result exists, is well-formed and succeeded (an unusable file counts as
    unfinished: the sweep recomputes it)."""
    try:
        return read_cell(path).ok
    except DataError:
        return False


def write_cell(out: str | os.PathLike[str], key: str, result: CellResult, files: dict) -> Path:
    """Write ``result`` as ``out/cells/<key>.json``: side files (``files``: name -> bytes)
    into ``out/cells/<key>/`` first, the JSON last and atomically, since its presence marks
    the cell as done. Returns the JSON's path."""
    cells = Path(out) / "cells"
    if files:
        from eviltwins.triggers import Trigger

        folder = cells / key
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in files.items():
            if name == "trigger.safetensors":  # Trigger.save also writes the PNG preview
                Trigger.from_bytes(blob).save(folder / "trigger")
                continue
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(blob)
            os.replace(tmp, folder / name)
    path = cells / f"{key}.json"
    write_json(path, result.to_dict())
    return path


def scan_cells(run_dir: str | os.PathLike[str]) -> tuple[list[CellResult], dict[str, str]]:
    """Every usable cell result of a run folder (finished or failed, sorted by key, each with
    its ``key``) and the unusable files, as ``{"cells/<name>": reason}`` (cut short, not JSON,
    the wrong shape, a folder): the sweep recomputes those."""
    folder = Path(run_dir) / "cells"
    if not folder.is_dir():
        raise DataError(
            f"{run_dir} holds no cells/ folder; pass a folder written by 'eviltwins sweep'"
        )
    rows: list[CellResult] = []
    unreadable: dict[str, str] = {}
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError as err:
        raise DataError(f"{folder} cannot be read ({err.strerror or err})") from None
    for p in paths:
        try:
            rows.append(read_cell(p))
        except CellFileError as err:
            unreadable[f"cells/{p.name}"] = err.reason
    return rows, unreadable


def load_cells(run_dir: str | os.PathLike[str]) -> list[CellResult]:
    """Every usable cell result of a run folder (finished or failed), sorted by key; unusable
    files are left out (:func:`scan_cells` names them)."""
    return scan_cells(run_dir)[0]


__all__ = [
    "CELL_SCHEMA",
    "AttackRecord",
    "CellConfig",
    "CellFileError",
    "CellResult",
    "DetectorRecord",
    "check_shape",
    "is_finished",
    "load_cells",
    "read_cell",
    "scan_cells",
    "write_cell",
]
