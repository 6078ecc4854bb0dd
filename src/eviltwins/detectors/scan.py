"""One scan of one model by several model inspectors, and one verdict (``eviltwins scan``).

:func:`inspectors` builds and checks the inspectors a scan runs (NeuralCleanse and ABS by
default) before any model or data is loaded; :func:`run_scan` runs them and returns a
:class:`ScanReport`, whose :attr:`~ScanReport.verdict` is ``clean`` or ``backdoor suspected:
label L (NeuralCleanse index X, ABS REASR Y)``. With a calibration that applies to the scan
(:mod:`eviltwins.detectors.calibration`: a logistic model on the inspectors' largest
statistics) the report also holds p(trojan), and the verdict follows it (backdoored when
p(trojan) >= 0.5); without one, a label flagged by any inspector makes the verdict. Writing the
report's files (``scan.json``, the reversed triggers, ``scan.html``) is
:mod:`eviltwins.report.scan`'s job.
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
from eviltwins.detectors.calibration import Calibration, model_statistic
from eviltwins.detectors.calibration_choice import scan_calibration
from eviltwins.detectors.evaluation import run_detector
from eviltwins.errors import DataError, ParamError, UnknownNameError
from eviltwins.results import Result, plain
from eviltwins.utils import is_real

SCAN_SCHEMA = "eviltwins.scan/1"

#: The inspectors a scan runs by default.
DEFAULT_DETECTORS = ("neural-cleanse", "abs")

#: Keys of a scan report's dict derived from its fields (written, not read back).
_DERIVED = ("verdict", "rule", "is_backdoored", "flagged")
#: How an uncalibrated verdict states its rule (the union of the inspectors' own verdicts).
UNCALIBRATED_CLEAN = "no inspector flags; uncalibrated"
UNCALIBRATED_FLAG = "an inspector flags; uncalibrated"
#: The verdict's rule with a calibration: backdoored when p(trojan) is at least this.
P_TROJAN_CUT = 0.5


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


def inspector_key(name: Any) -> str:
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
    keys = list(dict.fromkeys(inspector_key(d) for d in detectors))  # in order, once each
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ParamError(
            "params must map a detector name to its parameters, e.g. "
            f"{{'neural-cleanse': {{'steps': 100}}}}; got {params!r}"[:200]
        )
    given: dict[str, Mapping[str, Any]] = {}
    for name, values in params.items():
        key = inspector_key(name)
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
    out = {k: det for k, det in built.items() if isinstance(det, ModelInspector)}
    for k, det in out.items():  # scan's speed defaults, where the user did not choose
        det.apply_scan_params(given.get(k, {}))
    return out


def _params_of(detectors: Mapping[str, ModelInspector]) -> dict[str, dict[str, Any]]:
    return {
        name: {k: v for k, v in det.resolved_params().items() if k != "quiet"}
        for name, det in detectors.items()
    }


@dataclass(frozen=True)
class ScanReport(Result):
    """A scan of ``model`` on ``dataset`` by several model inspectors: each inspector's
    :class:`~eviltwins.detectors.InspectionReport` (``reports``, by detector name, in the order
    run), the class names, the parameters each inspector ran with and the wall time.

    ``p_trojan`` is the calibrated probability that the model is backdoored (None without a
    calibration that applies); ``calibration`` describes the calibration used (its detectors,
    coefficients, population and out-of-fold AUC / cross-entropy), or holds the ``reason``
    there is none (None in reports written before p(trojan) existed).

    ``flagged`` (the labels any inspector flagged), ``is_backdoored``, ``rule`` and ``verdict``
    are derived: written by :meth:`to_dict`, recomputed (not read) by :meth:`from_dict`.
    """

    SCHEMA: ClassVar[str] = SCAN_SCHEMA

    model: str
    dataset: str
    reports: dict[str, InspectionReport]
    seconds: float = 0.0
    classes: list[str] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    p_trojan: float | None = None
    calibration: dict[str, Any] | None = None

    @property
    def flagged(self) -> list[int]:
        """The labels flagged by at least one inspector, ascending."""
        return sorted({int(lab) for rep in self.reports.values() for lab in rep.flagged})

    @property
    def is_backdoored(self) -> bool:
        """p(trojan) >= 0.5 with a calibration; else a label flagged by any inspector."""
        if self.p_trojan is not None:
            return self.p_trojan >= P_TROJAN_CUT
        return bool(self.flagged)

    @property
    def statistics(self) -> dict[str, float]:
        """Each inspector's per-model statistic (its largest anomaly over the labels; see
        :func:`~eviltwins.detectors.calibration.model_statistic`), by detector name."""
        return {name: model_statistic(rep) for name, rep in self.reports.items()}

    @property
    def rule(self) -> str:
        """The rule the verdict follows, in words."""
        if self.p_trojan is not None:
            return f"p(trojan) >= {P_TROJAN_CUT:g} (calibrated)"
        reason = (self.calibration or {}).get("reason")
        return "any inspector flags a label; " + (reason or "no calibration")

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

    def _figures(self, label: int) -> str:
        return ", ".join(f"{measure_name(n)} {self.figure(n, label)}" for n in self.reports)

    def _leading_label(self) -> int:
        """The most anomalous label of the inspector whose coef x statistic adds most to
        p(trojan) (the label a calibrated verdict names when no inspector flagged one)."""
        cal = self.calibration or {}
        stats = self.statistics
        terms = {
            n: c * s
            for n, c in zip(cal.get("detectors", []), cal.get("coef", []), strict=False)
            if n in self.reports and (s := stats[n]) == s
        }
        lead = max(terms, key=lambda n: terms[n]) if terms else next(iter(self.reports))
        return self.reports[lead].suspect

    def _who(self, by: list[str]) -> str:
        names = [display_name(n) for n in by]
        return (
            f"{names[0]} alone" if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        )

    @property
    def verdict(self) -> str:
        """Without a calibration (the union rule): ``clean (no inspector flags; uncalibrated)``,
        or ``backdoor suspected (an inspector flags; uncalibrated): label L (NeuralCleanse index
        X, ABS REASR Y)`` for every flagged label, with ``; flagged by D only`` when the
        inspectors disagree.

        With a calibration: ``backdoor suspected (p(trojan) 0.97, calibrated): label L (...)``
        when p(trojan) >= 0.5 (the label the inspectors flagged; none flagged: the most
        anomalous label of the inspector that adds most to p(trojan)), else ``clean (p(trojan)
        0.12, calibrated)``, naming any label an inspector flagged all the same."""
        if self.p_trojan is not None:
            return self._calibrated_verdict(self.p_trojan)
        if not self.flagged:
            return f"clean ({UNCALIBRATED_CLEAN})"
        return f"backdoor suspected ({UNCALIBRATED_FLAG}): {self._labels()}"

    def _labels(self) -> str:
        parts = []
        for lab in self.flagged:
            figures = self._figures(lab)
            by = self.flagged_by(lab)
            if len(by) < len(self.reports):
                figures += f"; flagged by {', '.join(display_name(n) for n in by)} only"
            parts.append(f"label {lab} ({figures})")
        return ", ".join(parts)

    def _calibrated_verdict(self, p: float) -> str:
        head = f"(p(trojan) {p:.2f}, calibrated"
        if p >= P_TROJAN_CUT:
            if self.flagged:
                return f"backdoor suspected {head}): {self._labels()}"
            lab = self._leading_label()
            return (
                f"backdoor suspected {head}): label {lab} ({self._figures(lab)}; "
                "flagged by no inspector)"
            )
        groups: dict[tuple[str, ...], list[int]] = {}
        for lab in self.flagged:
            groups.setdefault(tuple(self.flagged_by(lab)), []).append(lab)
        if not groups:
            return f"clean {head})"
        flags = "; by ".join(
            f"{self._who(list(by))}: label{'s' if len(labs) > 1 else ''} "
            + ", ".join(str(lab) for lab in labs)
            for by, labs in groups.items()
        )
        return f"clean {head}; flagged by {flags})"

    def summary(self) -> str:
        """The verdict line."""
        return self.verdict

    def to_dict(self) -> dict[str, Any]:
        """The scan's JSON form: the verdict first, then the fields (each report's own dict)."""
        return {
            "schema": self.SCHEMA,
            "verdict": self.verdict,
            "rule": self.rule,
            "is_backdoored": self.is_backdoored,
            "flagged": self.flagged,
            "p_trojan": self.p_trojan,
            "calibration": plain(self.calibration),
            "model": self.model,
            "dataset": self.dataset,
            "seconds": self.seconds,
            "classes": list(self.classes),
            "params": plain(self.params),
            "reports": {k: rep.to_dict() for k, rep in self.reports.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "scan report") -> ScanReport:
        """A scan report from :meth:`to_dict`'s output (``scan.json``, also one written before
        p(trojan) existed); the derived keys are recomputed; a malformed file is one
        :class:`~eviltwins.errors.DataError` line."""
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
        p, cal = data.get("p_trojan"), data.get("calibration")
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
            ("p_trojan", p is None or (is_real(p) and 0 <= p <= 1), "null or a number in [0, 1]"),
            ("calibration", _described(cal, p is not None), "null or a calibration's description"),
        )
        for name, ok, what in checks:
            if not ok:
                raise DataError(f"{source}.{name} is not {what}")
        return super().from_dict(data, source)


def _described(cal: Any, used: bool) -> bool:
    """``cal`` reads as a scan report's ``calibration``: None, or an object, which names its
    detectors and one real coefficient each when it was used (p(trojan) given)."""
    if not isinstance(cal, Mapping) or not used:
        return cal is None or isinstance(cal, Mapping)
    dets, coef = cal.get("detectors"), cal.get("coef")
    if not (isinstance(dets, list) and isinstance(coef, list) and len(coef) == len(dets)):
        return False
    return all(isinstance(d, str) for d in dets) and all(is_real(c) for c in coef)


def scan_settings(
    detectors: Mapping[str, ModelInspector],
    calibration: Calibration | str | None,
    input_shape: Sequence[int],
) -> tuple[
    Mapping[str, ModelInspector], dict[str, dict[str, Any]], Calibration | None, dict[str, Any]
]:
    """The inspectors a scan runs, their parameters, its calibration and what the report says
    of it (:func:`~eviltwins.detectors.calibration_choice.scan_calibration`). With
    ``calibration="auto"``, when no shipped calibration applies to the inspectors as given but
    one applies to them without the scan's speed defaults (``scan_params``: label scheduling,
    bfloat16), those defaults give way and the inspectors run as the calibration was fitted."""
    params = _params_of(detectors)
    cal, about = scan_calibration(calibration, list(detectors), params, input_shape)
    if cal is None and calibration == "auto":
        plain = {n: d.without_scan_params() for n, d in detectors.items()}
        found, why = scan_calibration("auto", list(plain), _params_of(plain), input_shape)
        if found is not None:
            return plain, _params_of(plain), found, why
    return detectors, params, cal, about


def run_scan(
    detectors: Mapping[str, ModelInspector],
    model: nn.Module,
    data: DatasetSpec,
    *,
    source: str,
    classes: Sequence[str] = (),
    calibration: Calibration | str | None = "auto",
) -> ScanReport:
    """Run each inspector of ``detectors`` (from :func:`inspectors`) on ``model`` with the
    held-out ``data.test`` images; ``source`` names the model in the report and ``classes``
    its class names (default: the dataset's). ``calibration`` (see :func:`scan_calibration`;
    checked before any inspector runs) gives the report its p(trojan)."""
    detectors, params, cal, about = scan_settings(detectors, calibration, data.shape)
    start = time.perf_counter()
    reports: dict[str, InspectionReport] = {}
    for name, det in detectors.items():
        rep = run_detector(det, model, data)
        assert isinstance(rep, InspectionReport)
        reports[name] = rep
    p_trojan = None
    if cal is not None:
        try:
            p_trojan = cal.p_trojan({n: model_statistic(r) for n, r in reports.items()})
        except DataError as err:  # an inspector measured no label
            about = {"reason": f"no p(trojan): {err}"}
    return ScanReport(
        str(source),
        data.name,
        reports,
        round(time.perf_counter() - start, 3),
        [str(c) for c in (classes or data.classes)],
        params,
        p_trojan,
        about,
    )


__all__ = [
    "DEFAULT_DETECTORS",
    "scan_settings",
    "P_TROJAN_CUT",
    "SCAN_SCHEMA",
    "ScanReport",
    "display_name",
    "inspector_key",
    "inspector_names",
    "inspectors",
    "measure_name",
    "run_scan",
]
