"""Detector bases: model inspection (``inspect``) and input filtering (``fit`` / ``score`` /
``detect`` / ``evaluate``), after TrojanZoo's taxonomy and scikit-learn's verbs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.base import Estimator
from eviltwins.data import DatasetSpec, check_images, load_all
from eviltwins.errors import NotFittedError
from eviltwins.io import write_json
from eviltwins.metrics import detection_metrics
from eviltwins.registry import Registry

INSPECTION_SCHEMA = "eviltwins.inspection/1"
FILTER_SCHEMA = "eviltwins.filter/1"


@dataclass(frozen=True)
class InspectionReport:
    """A model-inspection verdict: per-label scores and the labels flagged as backdoor targets.

    ``scores`` are per-label measures (NeuralCleanse: L1 norms of the reversed masks; ABS: the
    best REASR per label); ``anomaly`` the per-label anomaly measure the verdict uses (MAD index;
    REASR); ``flagged`` the labels over ``threshold``. ``masks`` / ``patterns`` hold the reversed
    triggers per label (or per candidate) for figures and the ensemble detector.
    """

    detector: str
    scores: list[float]
    anomaly: list[float]
    flagged: list[int]
    threshold: float
    masks: Tensor = field(repr=False)
    patterns: Tensor = field(repr=False)
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

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
        return {
            "schema": INSPECTION_SCHEMA,
            "detector": self.detector,
            "is_backdoored": self.is_backdoored,
            "flagged": self.flagged,
            "max_anomaly": self.max_anomaly,
            "suspect": self.suspect,
            "threshold": self.threshold,
            "scores": self.scores,
            "anomaly": self.anomaly,
            "seconds": self.seconds,
            "details": self.details,
        }

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """``report.json``, ``reversed.safetensors`` (masks, patterns) and ``reversed.png``."""
        from safetensors.torch import save_file

        from eviltwins.report.figures import save_image_grid

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "report.json", self.to_dict())
        save_file(
            {"masks": self.masks.contiguous(), "patterns": self.patterns.contiguous()},
            str(out / "reversed.safetensors"),
        )
        shown = self.patterns * self.masks
        labels = self.details.get("labels", list(range(len(self.masks))))
        titles = [f"{lab}: {a:.2f}" for lab, a in zip(labels, self.anomaly, strict=False)]
        save_image_grid(
            torch.cat([self.masks.expand_as(shown), shown]),
            out / "reversed.png",
            titles=[f"mask {t}" for t in titles] + ["m*r" for _ in titles],
            ncols=len(self.masks),
            suptitle=f"{self.detector}: reversed triggers (label: anomaly)",
        )
        return out

    def summary(self) -> str:
        verdict = (
            f"BACKDOORED, flagged label(s) {self.flagged}" if self.flagged else "no backdoor found"
        )
        return (
            f"{self.detector}: {verdict}; max anomaly {self.max_anomaly:.3f} at label "
            f"{self.suspect} (threshold {self.threshold}); {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class FilterReport:
    """An input filter's evaluation on clean vs triggered inputs: F1, precision, recall, FRR,
    FAR from its decisions and ROC AUC from its continuous scores."""

    detector: str
    metrics: dict[str, float]
    threshold: float
    n_clean: int
    n_triggered: int
    score_clean_mean: float
    score_triggered_mean: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": FILTER_SCHEMA,
            "detector": self.detector,
            "metrics": self.metrics,
            "threshold": self.threshold,
            "n_clean": self.n_clean,
            "n_triggered": self.n_triggered,
            "score_clean_mean": self.score_clean_mean,
            "score_triggered_mean": self.score_triggered_mean,
            "details": self.details,
        }

    def summary(self) -> str:
        m = self.metrics
        return (
            f"{self.detector}: F1 {m['f1']:.3f}, precision {m['precision']:.3f}, recall "
            f"{m['recall']:.3f}, FRR {m['frr']:.3f}, FAR {m['far']:.3f}, AUC {m['auc']:.3f} "
            f"({self.n_clean} clean / {self.n_triggered} triggered inputs)"
        )


class ModelInspector(Estimator):
    """Scans a model for a backdoor: ``inspect(model, data) -> InspectionReport``."""

    name: ClassVar[str] = ""

    def inspect(self, model: nn.Module, data: DatasetSpec) -> InspectionReport:
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

    def fit(self, model: nn.Module, clean: Tensor | Dataset) -> InputFilter:
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

    def evaluate(self, clean: Tensor | Dataset, triggered: Tensor | Dataset) -> FilterReport:
        """Detection metrics on held-out ``clean`` inputs vs ``triggered`` inputs."""
        xc, xt = as_images(clean), as_images(triggered)
        sc, st = self.score(xc), self.score(xt)
        scores = torch.cat([sc, st]).numpy()
        truth = np.r_[np.zeros(len(sc), bool), np.ones(len(st), bool)]
        m = detection_metrics(scores > self.threshold_, truth, scores)
        return FilterReport(
            self.name,
            m,
            float(self.threshold_),
            len(sc),
            len(st),
            float(sc.mean()),
            float(st.mean()),
            {"params": self.get_params()},
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


DETECTORS: Registry[Estimator] = Registry("detector")


def evaluate_filter(
    detector: InputFilter,
    model: nn.Module,
    data: DatasetSpec,
    trigger: Any,
    target: int,
    n_clean: int = 1000,
) -> FilterReport:
    """Fit an input filter on held-out clean test images and evaluate it (the protocol of the
    paper's Section 5.3): the first ``n_clean`` test images calibrate, the next ``n_clean`` are
    the clean half of the evaluation and, stamped with ``trigger``, those whose true label is not
    ``target`` are the triggered half. With fewer than ``2 * n_clean`` test images each half gets
    half of them. The ensemble additionally runs NeuralCleanse on (up to 2,000) test images."""
    x, y = load_all(data.test)
    n_clean = min(n_clean, len(x) // 2)
    fit_x, ev_x, ev_y = x[:n_clean], x[n_clean : 2 * n_clean], y[n_clean : 2 * n_clean]
    if detector.needs_data:
        detector.fit(model, fit_x, data=data.subset(test=min(len(data.test), 2000)))
    else:
        detector.fit(model, fit_x)
    return detector.evaluate(ev_x, trigger.stamp(ev_x[ev_y != target]))
