"""A calibrated p(trojan) for a scan: a logistic model on the model inspectors' per-model
statistics, fitted on a population of clean and backdoored models.

The TrojAI rounds (NIST/IARPA) and the Trojan Detection Challenge ask a scanner for one
probability per model that it is trojaned, and score it over a population of models by
cross-entropy and ROC-AUC (:func:`eviltwins.metrics.population_scores`). How the inspectors'
measures become that probability is our own documented choice, not a published method:

- each inspector's statistic is its largest anomaly over the labels (:func:`model_statistic`:
  NeuralCleanse's largest anomaly index, ABS's largest REASR, 0 when ABS found no candidate
  neuron), the statistic the population reports rank models by;
- p(trojan) = logistic(intercept + sum of coef x statistic) (:class:`Calibration`), fitted by
  :func:`fit_calibration`: scikit-learn's L2 logistic regression (C = 1) on standardised
  statistics, both classes weighted equally (p(trojan) assumes even odds, not the population's
  share of backdoored models), the scaling folded back into ``coef`` and ``intercept``;
- its quality is measured out of fold (seeded stratified k-fold): AUC, cross-entropy, Brier and
  FPR at 95% TPR of the held-out predictions.

A calibration applies only to the input shape and inspector settings it was fitted with;
eviltwins ships some in ``calibrations/``, matched to a scan by
:mod:`~eviltwins.detectors.calibration_choice`. A calibration file is JSON only, every field
checked on reading.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eviltwins.base import SEED_RANGE, Interval, input_fits
from eviltwins.detectors.reports import InspectionReport
from eviltwins.errors import DataError, ParamError
from eviltwins.io.jsonfile import refuse_constant
from eviltwins.metrics import population_scores
from eviltwins.paths import readable_file, unreadable
from eviltwins.results import Result, plain
from eviltwins.utils import is_int, is_real

CALIBRATION_SCHEMA = "eviltwins.calibration/1"
#: Folds of the out-of-fold measurement.
FOLDS = Interval(int, 2, 100)
#: At most this many detectors in a calibration, and this size of file.
MAX_DETECTORS = 16
MAX_CALIBRATION_BYTES = 1_000_000
#: Statistics are clipped to this size (an anomaly index is infinite when the MAD is 0).
STAT_LIMIT = 1e6
#: Parameters that leave an inspector's statistic unchanged, ignored when a scan's settings are
#: matched against a calibration's: the output switch, the flagging threshold (it flags labels,
#: the largest anomaly is the same) and the settings that only change the order of the
#: arithmetic (layout, rewrites, images per pass, labels per chunk).
NEUTRAL_PARAMS = frozenset(
    {"quiet", "threshold", "channels_last", "rewrites", "pass_images", "label_chunk"}
)
_CV_KEYS = ("auc", "cross_entropy", "brier", "fpr_at_tpr", "tpr_at_fpr")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def largest_anomaly(max_anomaly: float | None, no_candidate: bool = False) -> float:
    """An inspector's per-model statistic from its largest per-label anomaly: 0 when it found
    no candidate (ABS: nothing tested, nothing found), NaN when nothing was measured."""
    if no_candidate:
        return 0.0
    return math.nan if max_anomaly is None else float(max_anomaly)


def model_statistic(report: InspectionReport | Mapping[str, Any] | Any) -> float:
    """An inspector's statistic for one model (:func:`largest_anomaly`), from its
    :class:`~eviltwins.detectors.InspectionReport`, the report's dict (``to_dict``, as a sweep
    cell stores it under ``detectors[label]``) or a cell's detector record."""
    if isinstance(report, Mapping):
        details, top = report.get("details"), report.get("max_anomaly")
    else:
        details, top = getattr(report, "details", None), getattr(report, "max_anomaly", None)
    details = details if isinstance(details, Mapping) else {}
    return largest_anomaly(top if is_real(top) else None, bool(details.get("no_candidate")))


def logistic(z: float) -> float:
    """1 / (1 + e^-z), without overflow."""
    return math.exp(-float(np.logaddexp(0.0, -z)))


def recorded_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """An inspector's parameters as plain JSON data, without ``quiet``: what a calibration
    records of the settings its statistics were measured with."""
    data = json.loads(json.dumps(plain(dict(params)), default=str))
    return {k: v for k, v in data.items() if k != "quiet"}


def param_difference(fitted: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
    """The first setting (:data:`NEUTRAL_PARAMS` aside) where the ``given`` parameters differ
    from the ``fitted`` ones, as ``steps 200, not None``; None when they agree."""
    a, b = recorded_params(fitted), recorded_params(given)
    for key in sorted((set(a) | set(b)) - NEUTRAL_PARAMS):
        if a.get(key, "unset") != b.get(key, "unset"):
            return f"{key} {a.get(key, 'unset')}, not {b.get(key, 'unset')}"
    return None


def shape_text(shape: Sequence[int]) -> str:
    """``1x32x32``."""
    return "x".join(str(int(s)) for s in shape)


@dataclass(frozen=True)
class Calibration(Result):
    """p(trojan) = logistic(``intercept`` + sum of ``coef[i]`` x statistic of
    ``detectors[i]``), fitted on ``n_models`` models (``n_trojaned`` backdoored) of inputs
    ``input_shape`` (C, H, W), each inspector run with ``params[detector]``; ``cv`` holds the
    out-of-fold ``auc``, ``cross_entropy``, ``brier``, ``fpr_at_tpr``, ``tpr_at_fpr`` and the
    ``folds``; ``source`` says which population (free text)."""

    SCHEMA: ClassVar[str] = CALIBRATION_SCHEMA

    detectors: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    input_shape: tuple[int, int, int]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_models: int = 0
    n_trojaned: int = 0
    cv: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def score(self, stats: Mapping[str, float]) -> float:
        """intercept + sum of coef x statistic (the log-odds); a statistic is clipped to
        +-:data:`STAT_LIMIT`, a missing or NaN one is one line."""
        z = self.intercept
        for name, c in zip(self.detectors, self.coef, strict=True):
            if name not in stats:
                raise ParamError(f"p(trojan) needs the statistic of {name} (calibrated on it)")
            s = float(stats[name])
            if math.isnan(s):
                raise DataError(f"{name} measured no label: p(trojan) is undefined")
            z += c * min(max(s, -STAT_LIMIT), STAT_LIMIT)
        return z

    def p_trojan(self, stats: Mapping[str, float]) -> float:
        """The probability that the model is backdoored, from each detector's statistic
        (:func:`model_statistic`) by detector name."""
        return logistic(self.score(stats))

    def describe(self) -> dict[str, Any]:
        """What a scan report records of the calibration it used (its fields but ``params``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("schema", "params")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "calibration") -> Calibration:
        """A calibration from :meth:`to_dict`'s output, every field checked (a file may come
        from a stranger): one :class:`~eviltwins.errors.DataError` line when it is unusable."""
        try:
            return _checked(data)
        except _Bad as err:
            raise DataError(f"{source} is not a usable calibration: {err}"[:300]) from None


class _Bad(Exception):
    """What is wrong with a calibration's data (one phrase)."""


def _ok_value(v: Any, list_ok: bool = True) -> bool:
    """null, a boolean, a finite number, a short string or a short list of those."""
    if isinstance(v, list):
        return list_ok and len(v) <= 1024 and all(_ok_value(x, False) for x in v)
    if isinstance(v, float):
        return math.isfinite(v)
    return v is None or isinstance(v, bool | int) or (isinstance(v, str) and len(v) <= 200)


def _check_params(params: Any, detectors: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    _need(
        isinstance(params, dict) and set(params) == set(detectors),
        "params must hold one object of parameters per detector",
    )
    for name, values in params.items():
        _need(
            isinstance(values, dict)
            and len(values) <= 64
            and all(
                isinstance(k, str) and len(k) <= 64 and _ok_value(v) for k, v in values.items()
            ),
            f"params.{name} must map at most 64 names to numbers, strings or short lists",
        )
    return {n: dict(params[n]) for n in detectors}


def _check_cv(cv: Any) -> dict[str, Any]:
    _need(
        isinstance(cv, dict) and not set(cv) - {*_CV_KEYS, "folds"} and FOLDS.ok(cv.get("folds")),
        f"cv must hold folds ({FOLDS.describe()}) and some of {', '.join(_CV_KEYS)}",
    )
    for key in _CV_KEYS:
        v, high = cv.get(key), 100.0 if key == "cross_entropy" else 1.0
        _need(v is None or (is_real(v) and 0 <= v <= high), f"cv.{key} must be in [0, {high:g}]")
    return dict(cv)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _checked(data: Any) -> Calibration:
    _need(isinstance(data, dict), f"not a JSON object but {type(data).__name__}")
    _need(data.get("schema") == CALIBRATION_SCHEMA, f"its schema is not {CALIBRATION_SCHEMA!r}")
    unknown = sorted(
        str(k)[:40] for k in set(data) - {"schema", *(f.name for f in fields(Calibration))}
    )
    _need(not unknown, f"unknown field {unknown[0]!r}" if unknown else "")
    dets, coef, b = data.get("detectors"), data.get("coef"), data.get("intercept")
    _need(
        isinstance(dets, list)
        and 1 <= len(dets) <= MAX_DETECTORS
        and all(isinstance(d, str) and _NAME.fullmatch(d) for d in dets)
        and len(set(dets)) == len(dets),
        f"detectors must be a list of 1 to {MAX_DETECTORS} distinct registry names",
    )
    _need(
        isinstance(coef, list)
        and len(coef) == len(dets)
        and all(is_real(v) and abs(v) <= STAT_LIMIT for v in [*coef, b]),
        f"coef (one per detector) and intercept must be finite numbers of at most {STAT_LIMIT:g}",
    )
    shape = data.get("input_shape")
    _need(
        isinstance(shape, list)
        and len(shape) == 3
        and all(is_int(v) and v >= 1 for v in shape)
        and input_fits(*shape),
        "input_shape must be [C, H, W], three positive integers",
    )
    n, k = data.get("n_models", 0), data.get("n_trojaned", 0)
    _need(
        is_int(n) and is_int(k) and 2 <= k <= n - 2 and n <= 10**9,
        "n_models and n_trojaned must count at least 2 models of each kind",
    )
    source = data.get("source", "")
    _need(
        isinstance(source, str) and len(source) <= 2000 and source.isprintable(),
        "source must be one line of text of at most 2000 characters",
    )
    params, cv = _check_params(data.get("params"), tuple(dets)), _check_cv(data.get("cv"))
    dets, coef, shape = tuple(dets), tuple(float(c) for c in coef), tuple(shape)
    return Calibration(dets, coef, float(b), shape, params, n, k, cv, source)


def parse_calibration(raw: bytes, source: str) -> Calibration:
    """A calibration from the bytes of its JSON file (JSON only, never code; every field
    checked); anything else is one :class:`~eviltwins.errors.DataError` line naming ``source``."""
    if len(raw) > MAX_CALIBRATION_BYTES:
        raise DataError(f"calibration {source} is over {MAX_CALIBRATION_BYTES // 1000} kB")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise DataError(f"calibration {source} is not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise DataError(f"calibration {source} is not valid JSON") from None
    return Calibration.from_dict(data, f"calibration {source}")


def load_calibration(path: str | Path) -> Calibration:
    """A calibration file (:func:`parse_calibration`)."""
    path = readable_file(path, "calibration")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CALIBRATION_BYTES + 1)
    except OSError as err:
        raise DataError(f"calibration {path} {unreadable(err)}") from None
    return parse_calibration(raw, str(path))


def _matrix(stats: Any, detectors: Sequence[str] | None = None) -> np.ndarray:
    """One row per model, one column per detector, from mappings or rows of numbers."""
    try:
        rows = [
            [s[d] for d in detectors] if isinstance(s, Mapping) and detectors else list(s)
            for s in stats
        ]
        x = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    except (KeyError, TypeError, ValueError):
        raise ParamError("stats must give every model one number per detector") from None
    if np.isnan(x).any() or (detectors is not None and x.shape[1] != len(detectors)):
        raise ParamError("every model needs a statistic for every detector (not NaN)")
    return np.clip(x, -STAT_LIMIT, STAT_LIMIT)


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """(coef, intercept) on raw statistics: logistic regression on standardised ones."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    model.fit((x - mean) / scale, y)
    coef = model.coef_[0] / scale
    return coef, float(model.intercept_[0] - (coef * mean).sum())


def out_of_fold_p(
    stats: Sequence[Sequence[float]] | np.ndarray,
    is_trojaned: Sequence[bool] | np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Each model's p(trojan) from the logistic model of :func:`fit_calibration` fitted on the
    other folds of a seeded stratified split (``folds``, lowered to the number of models of
    the smaller kind); ``stats`` has one row per model, one statistic per column. Fewer than 2
    models of either kind is one :class:`~eviltwins.errors.ParamError` line."""
    from sklearn.model_selection import StratifiedKFold

    FOLDS.check("out_of_fold_p", "folds", folds)
    SEED_RANGE.check("out_of_fold_p", "seed", seed)
    x, y = _matrix(stats), np.asarray(is_trojaned, dtype=bool).reshape(-1)
    if len(y) != len(x):
        raise ParamError(f"{len(x)} models' statistics but {len(y)} truths")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if min(n_pos, n_neg) < 2:
        raise ParamError(
            f"a calibration needs at least 2 clean and 2 backdoored models; got {n_neg} clean "
            f"and {n_pos} backdoored"
        )
    oof = np.empty(len(y))
    split = StratifiedKFold(min(folds, n_pos, n_neg), shuffle=True, random_state=seed % 2**32)
    for train, test in split.split(x, y):
        c, b = _fit_logistic(x[train], y[train])
        oof[test] = [logistic(b + float(c @ row)) for row in x[test]]
    return oof


def fit_calibration(
    stats: Sequence[Mapping[str, float]] | Sequence[Sequence[float]] | np.ndarray,
    is_trojaned: Sequence[bool] | np.ndarray,
    detectors: Sequence[str],
    input_shape: Sequence[int],
    params: Mapping[str, Mapping[str, Any]],
    folds: int = 5,
    seed: int = 0,
    source: str = "",
) -> Calibration:
    """Fit p(trojan) on a population: ``stats`` holds each model's statistic per detector
    (mappings by name, or rows in ``detectors`` order), ``is_trojaned`` the truth; the
    statistics were measured on inputs ``input_shape`` with ``params`` (detector -> its
    resolved parameters). ``cv`` is measured on :func:`out_of_fold_p` (its folds recorded).
    Fewer than 2 models of either kind is one :class:`~eviltwins.errors.ParamError` line."""
    detectors = list(detectors)
    if not detectors or len(detectors) > MAX_DETECTORS or len(set(detectors)) < len(detectors):
        raise ParamError(f"detectors must name 1 to {MAX_DETECTORS} distinct detectors")
    x, y = _matrix(stats, detectors), np.asarray(is_trojaned, dtype=bool).reshape(-1)
    scores = population_scores(out_of_fold_p(x, y, folds, seed), y)
    if set(params) != set(detectors):
        raise ParamError("params must hold the parameters of each detector calibrated")
    cv = {k: (None if math.isnan(scores[k]) else scores[k]) for k in _CV_KEYS}
    cv["folds"] = min(folds, int(y.sum()), int((~y).sum()))
    coef, intercept = _fit_logistic(x, y)
    data = {
        "schema": CALIBRATION_SCHEMA,
        "detectors": detectors,
        "coef": [float(c) for c in coef],
        "intercept": intercept,
        "input_shape": [int(s) for s in input_shape],
        "params": {d: recorded_params(params[d]) for d in detectors},
        "n_models": len(y),
        "n_trojaned": int(y.sum()),
        "cv": cv,
        "source": " ".join(str(source).split()),
    }
    return Calibration.from_dict(data, "the fitted calibration")  # the checks of a file


__all__ = [
    "CALIBRATION_SCHEMA",
    "FOLDS",
    "NEUTRAL_PARAMS",
    "Calibration",
    "fit_calibration",
    "largest_anomaly",
    "load_calibration",
    "logistic",
    "model_statistic",
    "out_of_fold_p",
    "param_difference",
    "parse_calibration",
    "recorded_params",
    "shape_text",
]
