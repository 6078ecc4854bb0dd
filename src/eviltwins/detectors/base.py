"""Detector bases: model inspection (``inspect``) and input filtering (``fit`` / ``score`` /
``detect`` / ``evaluate``), after TrojanZoo's taxonomy and scikit-learn's verbs."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from eviltwins.base import Estimator
from eviltwins.data import DatasetSpec, check_images, load_all
from eviltwins.errors import DataError, NotFittedError, ParamError
from eviltwins.io import write_json
from eviltwins.metrics import detection_metrics
from eviltwins.registry import Registry
from eviltwins.results import Result, internal
from eviltwins.utils import CHECK_IMAGES, check_finite_outputs, nonfinite_outputs_message

INSPECTION_SCHEMA = "eviltwins.inspection/1"
FILTER_SCHEMA = "eviltwins.filter/1"


#: Keys of an inspection report's dict that are derived from its fields (not read back).
_DERIVED = ("is_backdoored", "max_anomaly", "suspect")


def _empty() -> Tensor:
    return torch.zeros(0)


@dataclass(frozen=True)
class InspectionReport(Result):
    """A model-inspection verdict: per-label scores and the labels flagged as backdoor targets.

    ``scores`` are per-label measures (NeuralCleanse: L1 norms of the reversed masks; ABS: the
    best REASR per label); ``anomaly`` the per-label anomaly measure the verdict uses (MAD index;
    REASR), one per entry of ``labels`` (the labels inspected; default all, ``0..len(anomaly)-1``);
    ``flagged`` the labels over ``threshold``. ``masks`` / ``patterns`` hold the reversed
    triggers per label (or per candidate) for figures and the ensemble detector; they are not
    part of :meth:`to_dict` (:meth:`save` writes them), and a report read back with
    :meth:`from_dict` has empty ones.
    """

    SCHEMA: ClassVar[str] = INSPECTION_SCHEMA

    detector: str
    scores: list[float]
    anomaly: list[float]
    flagged: list[int]
    threshold: float
    masks: Tensor = internal(default_factory=_empty, repr=False)
    patterns: Tensor = internal(default_factory=_empty, repr=False)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    labels: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labels and self.anomaly:  # files written before labels were a field
            labels = self.details.get("labels", range(len(self.anomaly)))
            object.__setattr__(self, "labels", [int(lab) for lab in labels])

    def anomaly_of(self, label: int) -> float | None:
        """The anomaly measure of ``label``, or None when it was not inspected."""
        if label not in self.labels:
            return None
        return float(self.anomaly[self.labels.index(label)])

    @property
    def is_backdoored(self) -> bool:
        return bool(self.flagged)

    @property
    def max_anomaly(self) -> float:
        return float(max(self.anomaly)) if self.anomaly else float("nan")

    @property
    def suspect(self) -> int:
        """The most anomalous label (flagged or not)."""
        return int(np.argmax(self.anomaly))

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON form, with the derived verdict (``is_backdoored``,
        ``max_anomaly``, ``suspect``) next to the fields."""
        return {
            "schema": self.SCHEMA,
            "detector": self.detector,
            "is_backdoored": self.is_backdoored,
            "flagged": self.flagged,
            "max_anomaly": self.max_anomaly,
            "suspect": self.suspect,
            "threshold": self.threshold,
            "scores": self.scores,
            "anomaly": self.anomaly,
            "labels": self.labels,
            "seconds": self.seconds,
            "details": self.details,
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "inspection report"
    ) -> InspectionReport:
        """A report from :meth:`to_dict`'s output (or a file written before ``labels`` was a
        field); the derived verdict keys are recomputed, not read."""
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k not in _DERIVED}
        return super().from_dict(data, source)

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """``report.json``, ``reversed.safetensors`` (masks, patterns) and ``reversed.png``."""
        from safetensors.torch import save_file

        from eviltwins.io.images import save_image_grid  # matplotlib only when drawing

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", self.to_dict())
        save_file(
            {"masks": self.masks.contiguous(), "patterns": self.patterns.contiguous()},
            str(out / "reversed.safetensors"),
        )
        shown = self.patterns * self.masks
        titles = [f"{lab}: {a:.2f}" for lab, a in zip(self.labels, self.anomaly, strict=False)]
        save_image_grid(
            torch.cat([self.masks.expand_as(shown), shown]),
            out / "reversed.png",
            titles=[f"mask {t}" for t in titles] + ["m*r" for _ in titles],
            ncols=len(self.masks),
            suptitle=f"{self.detector}: reversed triggers (label: anomaly)",
        )
        return out

    def summary(self) -> str:
        if self.details.get("no_candidate"):
            # ABS found no candidate neuron: nothing was reverse-engineered or tested.
            return (
                f"{self.detector}: no candidate neuron (no stimulated neuron raised one label "
                f"consistently), nothing tested: no backdoor found; {self.seconds:.1f} s"
            )
        verdict = (
            f"BACKDOORED, flagged label(s) {self.flagged}" if self.flagged else "no backdoor found"
        )
        return (
            f"{self.detector}: {verdict}; max anomaly {self.max_anomaly:.3f} at label "
            f"{self.suspect} (threshold {self.threshold}); {self.seconds:.1f} s"
        )


PROTOCOLS = ("effective", "all-stamped")

#: Metrics that need at least one triggered input (None when the triggered set is empty).
_NEED_TRIGGERED = ("f1", "precision", "recall", "far", "auc")
#: Metrics that need at least one clean input (None when the clean set is empty).
_NEED_CLEAN = ("frr", "auc")


def _mean(v: Tensor) -> float | None:
    return float(v.double().mean()) if len(v) else None


def filter_result(scores_clean: Tensor, scores_triggered: Tensor, threshold: float) -> dict:
    """Metrics of one evaluation set: ``metrics`` (decisions ``score > threshold``; AUC from
    the scores), ``n_clean``, ``n_triggered``, the mean scores, and ``defined``.

    With an empty triggered set (e.g. the attack sent no stamped input to the target) F1,
    precision, recall, FAR and AUC are undefined: they are ``None`` (never 0 or NaN) and
    ``defined`` is False; likewise FRR and AUC with an empty clean set. NaN/inf scores (the
    model's outputs were not finite) raise :class:`~eviltwins.errors.DataError`.
    """
    sc, st = scores_clean.detach().cpu(), scores_triggered.detach().cpu()
    n_bad = int((~torch.isfinite(sc)).sum() + (~torch.isfinite(st)).sum())
    if n_bad:
        raise DataError(
            f"{n_bad} of {len(sc) + len(st)} detector scores are NaN/inf: the model outputs "
            "non-finite values on those inputs; it is broken: retrain it"
        )
    scores = torch.cat([sc, st]).double().numpy()
    truth = np.r_[np.zeros(len(sc), bool), np.ones(len(st), bool)]
    m: dict[str, float | None] = dict(detection_metrics(scores > threshold, truth, scores))
    undefined = (_NEED_TRIGGERED if not len(st) else ()) + (_NEED_CLEAN if not len(sc) else ())
    for k in undefined:
        m[k] = None
    return {
        "metrics": m,
        "n_clean": len(sc),
        "n_triggered": len(st),
        "score_clean_mean": _mean(sc),
        "score_triggered_mean": _mean(st),
        "defined": not undefined,
    }


@dataclass(frozen=True)
class FilterReport(Result):
    """An input filter's evaluation on clean vs triggered inputs: F1, precision, recall, FRR,
    FAR from its decisions and ROC AUC from its continuous scores.

    ``metrics``, ``n_clean``, ``n_triggered`` and the mean scores belong to ``protocol``:

    * ``"effective"`` (default of :func:`evaluate_filter`; the authors' protocol, ALGORITHMS.md
      "Evaluation protocol for every input filter"): clean = held-out clean evaluation inputs
      the model classifies correctly; triggered = stamped non-target inputs the model actually
      sends to the target, so F1 measures the detector, not the attack's misses;
    * ``"all-stamped"``: every clean evaluation input vs every stamped non-target input;
    * ``"given"``: the sets passed to :meth:`InputFilter.evaluate`, as they are.

    :func:`evaluate_filter` fills both ``effective`` and ``all_stamped`` (each a dict of
    ``metrics``, ``n_clean``, ``n_triggered``, ``score_clean_mean``, ``score_triggered_mean``,
    ``defined``; see :func:`filter_result`). ``defined`` is False when a set is empty: the
    metrics that need it are then ``None`` (e.g. F1 when the attack sent no stamped input to
    the target). ``seconds`` is the wall time of fit + evaluation.
    """

    SCHEMA: ClassVar[str] = FILTER_SCHEMA

    detector: str
    metrics: dict[str, float | None]
    threshold: float
    n_clean: int
    n_triggered: int
    score_clean_mean: float | None
    score_triggered_mean: float | None
    details: dict[str, Any] = field(default_factory=dict)
    protocol: str = "given"
    effective: dict[str, Any] | None = None
    all_stamped: dict[str, Any] | None = None
    seconds: float | None = None
    defined: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON form, keys in their historical order."""
        return {
            "schema": self.SCHEMA,
            "detector": self.detector,
            "protocol": self.protocol,
            "metrics": self.metrics,
            "defined": self.defined,
            "threshold": self.threshold,
            "n_clean": self.n_clean,
            "n_triggered": self.n_triggered,
            "score_clean_mean": self.score_clean_mean,
            "score_triggered_mean": self.score_triggered_mean,
            "effective": self.effective,
            "all_stamped": self.all_stamped,
            "seconds": self.seconds,
            "details": self.details,
        }

    @staticmethod
    def _line(m: dict[str, float | None]) -> str:
        def f(k: str) -> str:
            v = m.get(k)
            return "undefined" if v is None else f"{v:.3f}"

        return (
            f"F1 {f('f1')}, precision {f('precision')}, recall {f('recall')}, FRR {f('frr')}, "
            f"FAR {f('far')}, AUC {f('auc')}"
        )

    def summary(self) -> str:
        text = (
            f"{self.detector} ({self.protocol}): {self._line(self.metrics)} "
            f"({self.n_clean} clean / {self.n_triggered} triggered inputs)"
        )
        if not self.n_triggered:
            text += "; no triggered input (the trigger sent no stamped input to the target)"
        other = self.all_stamped if self.protocol == "effective" else self.effective
        if other is not None and self.protocol in PROTOCOLS:
            name = "all-stamped" if self.protocol == "effective" else "effective"
            text += (
                f"; {name}: {self._line(other['metrics'])} ({other['n_clean']} clean / "
                f"{other['n_triggered']} triggered)"
            )
        if self.seconds is not None:
            text += f"; {self.seconds:.1f} s"
        return text


class ModelInspector(Estimator):
    """Scans a model for a backdoor: ``inspect(model, data) -> InspectionReport``.

    A subclass implements ``_inspect`` (its algorithm only); ``inspect`` validates the
    parameters and refuses a broken model first.
    """

    name: ClassVar[str] = ""

    def inspect(self, model: nn.Module, data: DatasetSpec) -> InspectionReport:
        """Inspect ``model`` (left untouched) with held-out ``data.test`` images.

        A model with NaN/inf weights or outputs on ``data.test`` is refused with a one-line
        :class:`~eviltwins.errors.DataError` before any work: no verdict is ever drawn from
        non-finite logits."""
        self._validate_params()
        x, _ = load_all(data.test, limit=CHECK_IMAGES)
        check_finite_outputs(model, x, data.name)
        return self._inspect(model, data)

    def _inspect(self, model: nn.Module, data: DatasetSpec) -> InspectionReport:
        raise NotImplementedError  # pragma: no cover


class InputFilter(Estimator):
    """Flags trigger-carrying inputs at inference time.

    ``fit(model, clean)`` stores the model and calibrates on held-out clean images;
    ``score(x)`` gives continuous scores (higher = more suspicious); ``detect(x)`` gives
    booleans (``score > threshold_``); ``evaluate(clean, triggered)`` gives a FilterReport.
    """

    name: ClassVar[str] = ""
    higher_is_suspicious: ClassVar[bool] = True
    needs_data: ClassVar[bool] = False  # True: fit(..., data=DatasetSpec) as well

    def fit(self, model: nn.Module, clean: Tensor | Dataset, **kwargs: Any) -> InputFilter:
        """Store ``model`` and calibrate on the held-out ``clean`` images (a tensor or a
        dataset); ``kwargs`` go to the filter's ``_fit`` (see each filter).

        A model with NaN/inf weights or outputs on ``clean`` is refused with a one-line
        :class:`~eviltwins.errors.DataError` before any work: no threshold or score is ever
        computed from non-finite logits."""
        self._validate_params()
        images = as_images(clean)
        check_finite_outputs(model, images[:CHECK_IMAGES], "the held-out clean")
        return self._fit(model, images, **kwargs)

    def _fit(self, model: nn.Module, clean: Tensor, **kwargs: Any) -> InputFilter:
        raise NotImplementedError  # pragma: no cover

    def score(self, x: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover

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
        return {"params": self.get_params()}

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


DETECTORS: Registry[Estimator] = Registry("detector")


def _subset(ds: Dataset, index: Tensor) -> Dataset:
    if hasattr(ds, "subset"):
        return ds.subset(index)
    return Subset(ds, index.tolist())


def split_filter_data(data: DatasetSpec, n_clean: int) -> tuple[Tensor, Tensor, Tensor]:
    """Index split of ``data.test`` for :func:`evaluate_filter`: (calibration, evaluation,
    NeuralCleanse pool). Calibration = the first ``n_clean`` test images, evaluation = the next
    ``n_clean`` (each half of the split when it holds fewer than ``2 * n_clean``), and the
    NeuralCleanse pool = every test image *outside* the evaluation part (calibration + rest)."""
    n = len(data.test)
    n_clean = min(n_clean, n // 2)
    idx = torch.arange(n)
    fit_i, ev_i = idx[:n_clean], idx[n_clean : 2 * n_clean]
    nc_i = torch.cat([idx[:n_clean], idx[2 * n_clean :]])
    return fit_i, ev_i, nc_i


def evaluate_filter(
    detector: InputFilter,
    model: nn.Module,
    data: DatasetSpec,
    trigger: Any,
    target: int,
    n_clean: int = 1000,
    protocol: str = "effective",
) -> FilterReport:
    """Fit an input filter on held-out clean test images and evaluate it (ALGORITHMS.md,
    "Evaluation protocol for every input filter"; the paper's Section 5.3).

    The first ``n_clean`` test images calibrate (and are STRIP's overlay pool); the next
    ``n_clean`` are evaluated: clean as they are, and those whose true label is not ``target``
    stamped with ``trigger``. With fewer than ``2 * n_clean`` test images each part gets half.
    Two sets of metrics are computed from the same scores:

    * ``effective`` (the authors' protocol, default ``protocol``): the clean inputs the model
      classifies correctly vs the stamped inputs the model sends to ``target``;
    * ``all-stamped``: every clean evaluation input vs every stamped non-target input.

    ``protocol`` picks which one fills the report's ``metrics`` / ``n_clean`` /
    ``n_triggered``; both are in ``report.effective`` and ``report.all_stamped``. The ensemble
    runs NeuralCleanse on the test images outside the evaluated part only (the calibration
    part and any images after the evaluated part), never on the inputs it is evaluated on.
    """
    if protocol not in PROTOCOLS:
        raise ParamError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    from eviltwins.training import predict

    start = time.perf_counter()
    fit_i, ev_i, nc_i = split_filter_data(data, n_clean)
    x, y = load_all(data.test)
    fit_x, ev_x, ev_y = x[fit_i], x[ev_i], y[ev_i]
    if detector.needs_data:
        detector.fit(model, fit_x, data=replace(data, test=_subset(data.test, nc_i)))
    else:
        detector.fit(model, fit_x)
    stamped = trigger.stamp(ev_x[ev_y != target])
    logits_clean, logits_stamped = predict(model, ev_x), predict(model, stamped)
    for logits, what in ((logits_clean, "held-out clean"), (logits_stamped, "stamped")):
        if not bool(torch.isfinite(logits).all()):
            raise DataError(nonfinite_outputs_message(what))
    correct = logits_clean.argmax(1) == ev_y
    hit = logits_stamped.argmax(1) == target
    sc, st = detector.score(ev_x), detector.score(stamped)
    thr = float(detector.threshold_)
    eff = filter_result(sc[correct], st[hit], thr)
    alls = filter_result(sc, st, thr)
    chosen = eff if protocol == "effective" else alls
    return _report(detector, chosen, protocol, eff, alls, time.perf_counter() - start)
