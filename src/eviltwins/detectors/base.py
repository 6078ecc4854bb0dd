"""Detector families as abstract bases, after TrojanZoo's taxonomy and scikit-learn's verbs:
model inspection (:class:`ModelInspector`: ``inspect``) and input filtering
(:class:`InputFilter`: ``fit`` / ``score`` / ``detect`` / ``evaluate``); the detector registry
and the threshold rules the filters share."""

from __future__ import annotations

import abc
import time
from collections.abc import Collection
from inspect import signature
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.allocator import reuse_freed_memory
from eviltwins.base import Estimator
from eviltwins.data import DatasetSpec, check_images, load_all
from eviltwins.detectors.reports import (
    FILTER_SCHEMA,
    INSPECTION_SCHEMA,
    PROTOCOLS,
    FilterReport,
    InspectionReport,
    filter_result,
)
from eviltwins.errors import NotFittedError, ParamError
from eviltwins.registry import Registry
from eviltwins.results import EvasionClaim
from eviltwins.utils import CHECK_IMAGES, check_finite_outputs


class ModelInspector(Estimator, abc.ABC):
    """Scans a model for a backdoor: ``inspect(model, data) -> InspectionReport``.

    A subclass implements ``_inspect`` (its algorithm only); ``inspect`` validates the
    parameters and refuses a broken model first.
    """

    name: ClassVar[str] = ""
    #: The detector's family (TrojanZoo's taxonomy): what one dispatch per family reads.
    family: ClassVar[str] = "inspector"
    #: How a scan's verdict names the per-label measure (``NeuralCleanse index``).
    scan_measure: ClassVar[str] = "anomaly"
    #: The paper's claim that TrojanNN* evades this detector (None: no claim checked).
    evasion_claim: ClassVar[EvasionClaim | None] = None
    #: What ``scan`` changes from the class defaults to run faster (parameters the user did
    #: not set); a shipped calibration fitted without them takes precedence.
    scan_params: ClassVar[dict[str, Any]] = {}
    #: The ``scan_params`` :meth:`apply_scan_params` set on this inspector (empty until then).
    scan_params_applied_: dict[str, Any]

    def apply_scan_params(self, chosen: Collection[str] = ()) -> ModelInspector:
        """Set the class's ``scan_params`` except those the user ``chosen`` explicitly, and
        remember which were set (``scan_params_applied_``) for :meth:`without_scan_params`;
        returns ``self``."""
        self.scan_params_applied_ = {p: v for p, v in self.scan_params.items() if p not in chosen}
        self.set_params(**self.scan_params_applied_)
        return self

    def without_scan_params(self) -> ModelInspector:
        """A new inspector with this one's parameters, the scan defaults that
        :meth:`apply_scan_params` set back at the class's defaults."""
        applied = getattr(self, "scan_params_applied_", {})
        sig = signature(type(self)).parameters
        return type(self)(**{**self.get_params(), **{p: sig[p].default for p in applied}})

    def inspect(self, model: nn.Module, data: DatasetSpec) -> InspectionReport:
        """Inspect ``model`` (left untouched) with held-out ``data.test`` images.

        A model with NaN/inf weights or outputs on ``data.test`` is refused with a one-line
        :class:`~eviltwins.errors.DataError` before any work: no verdict is ever drawn from
        non-finite logits. The report's ``details["params"]`` records the parameters it ran
        with, presets resolved."""
        self._validate_params()
        reuse_freed_memory()
        x, _ = load_all(data.test, limit=CHECK_IMAGES)
        check_finite_outputs(model, x, data.name)
        report = self._inspect(model, data)
        report.details.setdefault("params", self.resolved_params())  # the values it ran with
        return report

    @abc.abstractmethod
    def _inspect(self, model: nn.Module, data: DatasetSpec) -> InspectionReport:
        """The inspection algorithm on a checked model (parameters already validated)."""


class InputFilter(Estimator, abc.ABC):
    """Flags trigger-carrying inputs at inference time.

    ``fit(model, clean)`` stores the model and calibrates on held-out clean images;
    ``score(x)`` gives continuous scores (higher = more suspicious); ``detect(x)`` gives
    booleans (``score > threshold_``); ``evaluate(clean, triggered)`` gives a FilterReport.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "filter"
    #: The paper's claim that TrojanNN* evades this filter (None: no claim checked).
    evasion_claim: ClassVar[EvasionClaim | None] = None

    def fit(self, model: nn.Module, clean: Tensor | Dataset, **kwargs: Any) -> InputFilter:
        """Store ``model`` and calibrate on the held-out ``clean`` images (a tensor or a
        dataset); ``kwargs`` go to the filter's ``_fit`` (see each filter; every filter takes
        ``data``, held-out data disjoint from the inputs it will score, and may ignore it).

        A model with NaN/inf weights or outputs on ``clean`` is refused with a one-line
        :class:`~eviltwins.errors.DataError` before any work: no threshold or score is ever
        computed from non-finite logits."""
        self._validate_params()
        reuse_freed_memory()
        images = as_images(clean)
        check_finite_outputs(model, images[:CHECK_IMAGES], "the held-out clean")
        return self._fit(model, images, **kwargs)

    @abc.abstractmethod
    def _fit(
        self, model: nn.Module, clean: Tensor, *, data: DatasetSpec | None = None, **kwargs: Any
    ) -> InputFilter:
        """Calibrate on checked ``clean`` images; ``data`` is held-out data the filter may
        inspect the model with (the ensemble runs NeuralCleanse on it), never the inputs it
        is evaluated on. Sets ``threshold_``."""

    @abc.abstractmethod
    def score(self, x: Tensor) -> Tensor:
        """Continuous scores of the inputs ``x``, higher = more suspicious."""

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                f"{type(self).__name__} is not fitted; call fit(model, clean) first"
            )

    def detect(self, x: Tensor) -> Tensor:
        """True for inputs judged trigger-carrying."""
        return self.score(x) > self.threshold_

    def _report_details(self) -> dict[str, Any]:
        """What a FilterReport's ``details`` records about this fitted filter."""
        return {"params": self.resolved_params()}

    def evaluate(self, clean: Tensor | Dataset, triggered: Tensor | Dataset) -> FilterReport:
        """Detection metrics on held-out ``clean`` inputs vs ``triggered`` inputs, taken as
        given (protocol ``"given"``; :func:`evaluate_filter` applies the authors' protocol)."""
        self._check_fitted()
        start = time.perf_counter()
        res = filter_result(
            self.score(as_images(clean)), self.score(as_images(triggered)), self.threshold_
        )
        seconds = getattr(self, "fit_seconds_", 0.0) + time.perf_counter() - start
        return _report(self, res, "given", None, None, seconds)


def _report(
    detector: InputFilter,
    res: dict[str, Any],
    protocol: str,
    effective: dict[str, Any] | None,
    all_stamped: dict[str, Any] | None,
    seconds: float,
) -> FilterReport:
    return FilterReport(
        detector.name,
        res["metrics"],
        float(detector.threshold_),
        res["n_clean"],
        res["n_triggered"],
        res["score_clean_mean"],
        res["score_triggered_mean"],
        detector._report_details(),
        protocol=protocol,
        effective=effective,
        all_stamped=all_stamped,
        seconds=round(seconds, 3),
        defined=res["defined"],
    )


def as_images(x: Tensor | Dataset) -> Tensor:
    """A float NCHW tensor in [0, 1] from a tensor or a dataset."""
    if isinstance(x, Tensor):
        check_images(x)
        return x
    return load_all(x)[0]


def normal_threshold(values: Tensor, frr: float) -> float:
    """The ``frr`` quantile of a normal fitted to clean ``values`` (STRIP's original rule):
    clean values below it are falsely rejected with probability ``frr``."""
    from scipy.stats import norm

    v = values.double()
    return float(norm.ppf(frr, loc=float(v.mean()), scale=float(v.std().clamp_min(1e-12))))


def quantile_threshold(values: Tensor, rate: float) -> float:
    """The empirical ``rate`` quantile of clean ``values`` as the authors' STRIP code takes it
    (TrojanZoo ``strip_fpr``: ``sorted(values)[int(rate * n)]``): about ``rate`` of the clean
    values lie strictly below it, so ``values < threshold`` rejects that share of them."""
    v = values.double().sort().values
    if not len(v):
        raise ParamError("cannot calibrate a threshold on no clean inputs")
    return float(v[min(int(rate * len(v)), len(v) - 1)])


#: The calibrated threshold rules of the input filters (:func:`low_side_threshold`).
THRESHOLD_RULES = ("quantile", "normal")


def low_side_threshold(values: Tensor, rule: str, rate: float) -> float:
    """The threshold under which a clean calibration score counts as suspicious, for every
    input filter whose low values are suspicious (STRIP's entropy, the ensemble's deviation):
    ``rule="quantile"`` (STRIP's paper variant, Pang et al., Sections 5.3.1 and 5.4):
    the empirical ``rate`` quantile (:func:`quantile_threshold`); ``"normal"`` (Gao et al.'s
    original STRIP): the ``rate`` quantile of a normal fit (:func:`normal_threshold`)."""
    if rule == "quantile":
        return quantile_threshold(values, rate)
    if rule == "normal":
        return normal_threshold(values, rate)
    raise ParamError(f"a threshold rule must be one of {', '.join(THRESHOLD_RULES)}; got {rule!r}")


DETECTORS: Registry[Estimator] = Registry("detector")

__all__ = [
    "DETECTORS",
    "FILTER_SCHEMA",
    "INSPECTION_SCHEMA",
    "PROTOCOLS",
    "FilterReport",
    "InputFilter",
    "InspectionReport",
    "ModelInspector",
    "THRESHOLD_RULES",
    "as_images",
    "filter_result",
    "low_side_threshold",
    "normal_threshold",
    "quantile_threshold",
]
