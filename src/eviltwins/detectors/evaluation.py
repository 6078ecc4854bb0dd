"""Running a detector on a (possibly poisoned) model: the input-filter evaluation protocol
(:func:`evaluate_filter`) and :func:`run_detector`, the one entry point for both families
(used by the API and the sweep runner)."""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from eviltwins.base import Estimator
from eviltwins.data import DatasetSpec, load_all
from eviltwins.detectors.base import InputFilter, ModelInspector, _report
from eviltwins.detectors.reports import PROTOCOLS, FilterReport, InspectionReport, filter_result
from eviltwins.errors import DataError, ParamError
from eviltwins.training import predict
from eviltwins.triggers import Trigger
from eviltwins.utils import nonfinite_outputs_message


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
    trigger: Trigger,
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
    start = time.perf_counter()
    fit_i, ev_i, nc_i = split_filter_data(data, n_clean)
    x, y = load_all(data.test)
    fit_x, ev_x, ev_y = x[fit_i], x[ev_i], y[ev_i]
    detector.fit(model, fit_x, data=replace(data, test=_subset(data.test, nc_i)))
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


def run_detector(
    detector: Estimator,
    model: nn.Module,
    data: DatasetSpec,
    *,
    trigger: Trigger | None = None,
    target: int | None = None,
    n_clean: int = 1000,
    protocol: str = "effective",
) -> InspectionReport | FilterReport:
    """Run any registered detector on ``model``: a :class:`ModelInspector` inspects it with
    ``data`` (``trigger`` / ``target`` unused); an :class:`InputFilter` is fitted and evaluated
    with :func:`evaluate_filter` (``n_clean``, ``protocol``), which needs the ``trigger`` and
    ``target`` the inputs are stamped with."""
    if isinstance(detector, ModelInspector):
        return detector.inspect(model, data)
    if not isinstance(detector, InputFilter):
        raise ParamError(
            f"{type(detector).__name__} is neither a ModelInspector nor an InputFilter"
        )
    if trigger is None or target is None:
        raise ParamError(
            f"the input filter {detector.name!r} is evaluated on stamped inputs: pass the "
            "trigger and the target"
        )
    return evaluate_filter(detector, model, data, trigger, target, n_clean, protocol)
