"""One scan of one model by several model inspectors, and one verdict (``eviltwins scan``).

:func:`inspectors` builds and checks the inspectors a scan runs (NeuralCleanse and ABS by
default) before any model or data is loaded; :func:`run_scan` runs them and returns a
:class:`ScanReport`, whose :attr:`~ScanReport.verdict` is ``clean`` or ``backdoor suspected:
label L (NeuralCleanse index X, ABS REASR Y)``. Writing the report's files (``scan.json``, the
reversed triggers, ``scan.html``) is :mod:`eviltwins.report.scan`'s job.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from eviltwins.data import DatasetSpec
from eviltwins.detectors.base import DETECTORS, InspectionReport, ModelInspector
from eviltwins.detectors.evaluation import run_detector
from eviltwins.errors import DataError, ParamError, UnknownNameError
from eviltwins.results import Result, plain
from eviltwins.utils import is_real

SCAN_SCHEMA = "eviltwins.scan/1"

#: The inspectors a scan runs by default.
DEFAULT_DETECTORS = ("neural-cleanse", "abs")

#: Keys of a scan report's dict derived from its fields (written, not read back).
_DERIVED = ("verdict", "is_backdoored", "flagged")


def inspector_names() -> list[str]:
    """The registered model inspectors (the detectors a scan can run)."""
    return [n for n in DETECTORS.names() if _is_inspector(DETECTORS.get(n))]


def display_name(detector: str) -> str:
    """The inspector's class name (``NeuralCleanse``, ``ABS``), else ``detector`` itself."""
    return (
        getattr(DETECTORS.get(detector), "__name__", detector)
        if detector in DETECTORS
        else detector
    )


def measure_name(detector: str) -> str:
    """How the verdict calls ``detector``'s per-label measure (the inspector's
    ``scan_measure``): ``NeuralCleanse index``."""
    cls = DETECTORS.get(detector) if detector in DETECTORS else None
    return f"{display_name(detector)} {getattr(cls, 'scan_measure', 'anomaly')}"


def _is_inspector(factory: Any) -> bool:
    return isinstance(factory, type) and issubclass(factory, ModelInspector)


def _key(name: Any) -> str:
    """The registry name of detector ``name`` (a model inspector), else one line."""
    known = inspector_names()
    try:
        factory = DETECTORS.get(name)
    except UnknownNameError:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(
            f"unknown detector {name!r}"[:120] + f"{hint}; scan runs the model inspectors: "
            f"{', '.join(known)}"
        ) from None
    key = next(n for n in DETECTORS.names() if DETECTORS.get(n) is factory)
    if not _is_inspector(factory):
        raise ParamError(
            f"{key} is an input filter: it is evaluated on inputs stamped with a known trigger, "
            f"which a scan does not have; scan runs the model inspectors ({', '.join(known)}); "
            f"use 'eviltwins detect {key} --trigger FILE' instead"
        )
    return key


def inspectors(
    detectors: str | Sequence[str] = DEFAULT_DETECTORS,
    params: Mapping[str, Mapping[str, Any] | None] | None = None,
    quiet: bool | None = None,
) -> dict[str, ModelInspector]:
    """The model inspectors named by ``detectors`` (a sequence, or one comma-separated string),
    each configured with its entry of ``params`` (detector name -> its parameters) and
    validated, before any model or data is loaded. Unknown names, input filters, params for a
    detector not run and bad parameter values are one line each."""
    if isinstance(detectors, str):
        detectors = [d for d in detectors.split(",") if d.strip()]
    if not isinstance(detectors, Sequence) or not detectors:
        raise ParamError(
            f"detectors must name at least one model inspector ({', '.join(inspector_names())})"
        )
    keys = list(dict.fromkeys(_key(d) for d in detectors))  # in order, once each
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ParamError(
            "params must map a detector name to its parameters, e.g. "
            f"{{'neural-cleanse': {{'steps': 100}}}}; got {params!r}"[:200]
        )
    given: dict[str, Mapping[str, Any]] = {}
    for name, values in params.items():
        key = _key(name)
        if key not in keys:
            raise ParamError(
                f"params for {key}, which this scan does not run (detectors: {', '.join(keys)})"
            )
        if values is not None and not isinstance(values, Mapping):
            raise ParamError(
                f"params of {key} must be a mapping of its parameters; got {values!r}"[:200]
            )
        given[key] = values or {}
    built = {k: DETECTORS.build(k, given.get(k), quiet) for k in keys}
    return {k: det for k, det in built.items() if isinstance(det, ModelInspector)}


@dataclass(frozen=True)
class ScanReport(Result):
    """A scan of ``model`` on ``dataset`` by several model inspectors: each inspector's
    :class:`~eviltwins.detectors.InspectionReport` (``reports``, by detector name, in the order
    run), the class names, the parameters each inspector ran with and the wall time.

    ``flagged`` (the labels any inspector flagged), ``is_backdoored`` and ``verdict`` are
    derived: written by :meth:`to_dict`, recomputed (not read) by :meth:`from_dict`.
    """

    SCHEMA: ClassVar[str] = SCAN_SCHEMA

    model: str
    dataset: str
    reports: dict[str, InspectionReport]
    seconds: float = 0.0
    classes: list[str] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def flagged(self) -> list[int]:
        """The labels flagged by at least one inspector, ascending."""
        return sorted({int(lab) for rep in self.reports.values() for lab in rep.flagged})

    @property
    def is_backdoored(self) -> bool:
        return bool(self.flagged)

    def flagged_by(self, label: int) -> list[str]:
        """The inspectors that flagged ``label``."""
        return [name for name, rep in self.reports.items() if label in rep.flagged]

    def figure(self, detector: str, label: int) -> str:
        """``detector``'s measure of ``label`` as the verdict shows it (``5.12``; ``untested``
        when the inspector did not measure that label, e.g. ABS found no candidate for it)."""
        rep = self.reports[detector]
        value = rep.anomaly_of(label)
        tested = rep.details.get("tested_labels")
        if value is None or (isinstance(tested, list) and label not in tested):
            return "untested"
        return f"{value:.2f}"

    @property
    def verdict(self) -> str:
        """``clean``, or ``backdoor suspected: label L (NeuralCleanse index X, ABS REASR Y)``
        for every flagged label, with ``; flagged by D only`` when the inspectors disagree."""
        if not self.flagged:
            return "clean"
        parts = []
        for lab in self.flagged:
            figures = ", ".join(
                f"{measure_name(name)} {self.figure(name, lab)}" for name in self.reports
            )
            by = self.flagged_by(lab)
            if len(by) < len(self.reports):
                figures += f"; flagged by {', '.join(display_name(n) for n in by)} only"
            parts.append(f"label {lab} ({figures})")
        return "backdoor suspected: " + ", ".join(parts)

    def summary(self) -> str:
        """The verdict line."""
        return self.verdict

    def to_dict(self) -> dict[str, Any]:
        """The scan's JSON form: the verdict first, then the fields (each report's own dict)."""
        return {
            "schema": self.SCHEMA,
            "verdict": self.verdict,
            "is_backdoored": self.is_backdoored,
            "flagged": self.flagged,
            "model": self.model,
            "dataset": self.dataset,
            "seconds": self.seconds,
            "classes": list(self.classes),
            "params": plain(self.params),
            "reports": {k: rep.to_dict() for k, rep in self.reports.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "scan report") -> ScanReport:
        """A scan report from :meth:`to_dict`'s output (``scan.json``); the derived keys are
        recomputed; a malformed file is one :class:`~eviltwins.errors.DataError` line."""
        if not isinstance(data, Mapping):
            raise DataError(f"{source} is not a JSON object but {type(data).__name__}")
        data = {k: v for k, v in data.items() if k not in _DERIVED}
        reports = data.get("reports")
        if not isinstance(reports, Mapping) or not all(isinstance(k, str) for k in reports):
            raise DataError(f"{source}.reports is not an object of inspection reports by name")
        data["reports"] = {
            k: InspectionReport.from_dict(v, f"{source}.reports.{k}") for k, v in reports.items()
        }
        classes, params = data.get("classes", []), data.get("params", {})
        checks = (
            ("model", isinstance(data.get("model"), str), "a string"),
            ("dataset", isinstance(data.get("dataset"), str), "a string"),
            ("seconds", is_real(data.get("seconds", 0.0)), "a number"),
            (
                "classes",
                isinstance(classes, list) and all(isinstance(c, str) for c in classes),
                "a list of class names",
            ),
            (
                "params",
                isinstance(params, Mapping)
                and all(isinstance(v, Mapping) for v in params.values()),
                "an object of parameters by detector",
            ),
        )
        for name, ok, what in checks:
            if not ok:
                raise DataError(f"{source}.{name} is not {what}")
        return super().from_dict(data, source)


def run_scan(
    detectors: Mapping[str, ModelInspector],
    model: nn.Module,
    data: DatasetSpec,
    *,
    source: str,
    classes: Sequence[str] = (),
) -> ScanReport:
    """Run each inspector of ``detectors`` (from :func:`inspectors`) on ``model`` with the
    held-out ``data.test`` images; ``source`` names the model in the report and ``classes``
    its class names (default: the dataset's)."""
    start = time.perf_counter()
    reports: dict[str, InspectionReport] = {}
    for name, det in detectors.items():
        rep = run_detector(det, model, data)
        assert isinstance(rep, InspectionReport)
        reports[name] = rep
    params = {
        name: {k: v for k, v in det.resolved_params().items() if k != "quiet"}
        for name, det in detectors.items()
    }
    return ScanReport(
        str(source),
        data.name,
        reports,
        round(time.perf_counter() - start, 3),
        [str(c) for c in (classes or data.classes)],
        params,
    )


__all__ = [
    "DEFAULT_DETECTORS",
    "SCAN_SCHEMA",
    "ScanReport",
    "display_name",
    "inspector_names",
    "inspectors",
    "measure_name",
    "run_scan",
]
