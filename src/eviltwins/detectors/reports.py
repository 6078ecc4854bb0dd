"""Detector results: a model inspector's verdict (:class:`InspectionReport`) and an input
filter's evaluation (:class:`FilterReport`, its metrics from :func:`filter_result`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from eviltwins.errors import DataError
from eviltwins.io import write_json
from eviltwins.metrics import detection_metrics
from eviltwins.paths import make_folder, publish_mode
from eviltwins.results import Result, internal

INSPECTION_SCHEMA = "eviltwins.inspection/1"
FILTER_SCHEMA = "eviltwins.filter/1"


#: Keys of an inspection report's dict that are derived from its fields (not read back).
_DERIVED = ("is_backdoored", "max_anomaly", "suspect")


def _empty() -> Tensor:
    return torch.zeros(0)


def is_tested(details: Mapping[str, Any], label: Any) -> bool:
    """Whether an inspection report's ``details`` say ``label`` was measured: True unless
    they hold a ``tested_labels`` list without it (ABS: a label without a candidate)."""
    tested = details.get("tested_labels")
    return not isinstance(tested, list) or label in tested


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
        """The anomaly measure of ``label``, or None when it was not inspected or not tested
        (a report whose ``details["tested_labels"]`` lists the labels it measured, as ABS's:
        a label without a candidate neuron holds 0 by convention, not a measured REASR)."""
        if label not in self.labels or not is_tested(self.details, label):
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

        out = make_folder(out_dir)
        write_json(out / "report.json", self.to_dict())
        save_file(
            {"masks": self.masks.contiguous(), "patterns": self.patterns.contiguous()},
            str(out / "reversed.safetensors"),
        )
        publish_mode(out / "reversed.safetensors")  # safetensors writes its file with mode 0600
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

    * ``"effective"`` (default of :func:`evaluate_filter`; the IMC authors' protocol for every
      input filter): clean = held-out clean evaluation inputs
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
