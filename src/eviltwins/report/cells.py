"""What the report reads from a sweep cell: structural types (``typing.Protocol``) that the
sweep store's typed cell (``eviltwins.experiments.store.CellResult``) satisfies, so the report
takes cells as objects without importing the layer above it.

A cell's detectors are found in the detector registry by their entry's ``name``; each detector
class declares what the report shows of it (``report_metric``, a
:class:`~eviltwins.results.ShownMetric`), so the report names no detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eviltwins.detectors import DETECTORS
from eviltwins.results import ShownMetric


class EntryLike(Protocol):
    """A detector entry of the sweep: registry ``name`` and the sweep's ``label``."""

    name: str
    label: str | None


class CellConfigLike(Protocol):
    """The grid point of a cell."""

    dataset: str
    model: str
    attack: str
    label: str | None
    params: Mapping[str, Any]
    size: Any
    transparency: Any
    seed: Any
    detectors: Sequence[EntryLike]


class AttackLike(Protocol):
    """The attack's record of a cell."""

    metrics: Mapping[str, Any]


class DetectorLike(Protocol):
    """One detector's record of a cell (an input filter's or a model inspector's numbers)."""

    kind: str | None
    skipped: str | None
    metrics: Mapping[str, Any] | None
    n_clean: Any
    n_triggered: Any
    all_stamped: Mapping[str, Any] | None
    details: Mapping[str, Any] | None
    max_anomaly: Any
    target_anomaly: Any
    target_flagged: Any
    flagged: Sequence[Any] | None
    seconds: Any


class CellLike(Protocol):
    """A sweep cell as the report reads it: finished (``ok``) or failed (``error``)."""

    key: str
    status: str
    error: str | None
    seconds: Any
    target: int | None
    cell: CellConfigLike
    attack: AttackLike | None
    detectors: Mapping[str, DetectorLike] | None

    @property
    def ok(self) -> bool: ...


@dataclass(frozen=True)
class Shown:
    """A detector of the sweep that the report shows: its sweep ``label`` (the prefix of its
    row columns), its registry ``name``, what it declares (``metric``) and its family."""

    name: str
    label: str
    metric: ShownMetric
    is_filter: bool

    def column(self, key: str | None = None) -> str:
        """The row column of ``key`` (default: the shown metric) for this detector."""
        return f"{self.label}.{key or self.metric.key}"


def detector_labels(cells: Sequence[CellLike]) -> dict[str, str]:
    """Detector name -> the label of its first entry in the sweep (for figures and claims)."""
    out: dict[str, str] = {}
    for c in cells:
        for d in c.cell.detectors or ():
            out.setdefault(d.name, d.label or d.name)
    return out


def shown_detectors(det: Mapping[str, str]) -> list[Shown]:
    """The detectors of ``det`` (name -> label) whose class declares a ``report_metric``:
    model inspectors first, then input filters, each in the sweep's order."""
    out = []
    for name, label in det.items():
        if name not in DETECTORS:  # a name this version does not know: nothing to show
            continue
        metric = getattr(DETECTORS.get(name), "report_metric", None)
        if isinstance(metric, ShownMetric):
            out.append(Shown(name, label, metric, family(name) == "filter"))
    return sorted(out, key=lambda s: s.is_filter)


def family(name: str) -> str | None:
    """The family (``inspector`` / ``filter``) of the registered detector ``name``; None for
    a name this version does not know."""
    return getattr(DETECTORS.get(name), "family", None) if name in DETECTORS else None
