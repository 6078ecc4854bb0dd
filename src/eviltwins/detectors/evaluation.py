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
from eviltwins.detectors.base import InputFilter, _report
from eviltwins.detectors.reports import PROTOCOLS, FilterReport, InspectionReport, filter_result
from eviltwins.errors import DataError, ParamError
from eviltwins.training import predict
from eviltwins.triggers import Trigger
from eviltwins.utils import make_generator, nonfinite_outputs_message


def _subset(ds: Dataset, index: Tensor) -> Dataset:
    if hasattr(ds, "subset"):
        return ds.subset(index)
    return Subset(ds, index.tolist())


def split_filter_data(
    data: DatasetSpec, n_clean: int, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Index split of ``data.test`` for :func:`evaluate_filter`: (calibration, evaluation,
    NeuralCleanse pool), each sorted. A seeded random permutation of the split (never the
    first N: image folders and GTSRB are stored sorted by class, so the first N images are a
    few classes) gives calibration = its first ``n_clean`` images, evaluation =
    the next ``n_clean`` (each half of the split when it holds fewer than ``2 * n_clean``), and
    the NeuralCleanse pool = every test image *outside* the evaluation part (calibration +
    rest)."""
    n = len(data.test)
    n_clean = min(n_clean, n // 2)
    perm = torch.randperm(n, generator=make_generator(seed))
    fit_i, ev_i, rest = perm[:n_clean], perm[n_clean : 2 * n_clean], perm[2 * n_clean :]
    nc_i = torch.cat([fit_i, rest])
    return fit_i.sort().values, ev_i.sort().values, nc_i.sort().values


#: Test images :func:`non_target_examples` draws from (a bounded read of a large split).
EXAMPLE_POOL = 512


def non_target_examples(data: DatasetSpec, target: int, n: int, seed: int = 0) -> Tensor:
    """Up to ``n`` test images whose true label is not ``target`` (examples to stamp), from a
    seeded random draw of :data:`EXAMPLE_POOL` test images, never the first ones (on a
    class-sorted split those can all be the target)."""
    index = torch.randperm(len(data.test), generator=make_generator(seed))[:EXAMPLE_POOL]
    x, y = load_all(_subset(data.test, index.sort().values))
    keep = torch.randperm(len(y), generator=make_generator(seed))
    keep = keep[y[keep] != target][:n]
    return x[keep.sort().values]


def evaluate_filter(
    detector: InputFilter,
    model: nn.Module,
    data: DatasetSpec,
    trigger: Trigger,
    target: int,
    n_clean: int = 1000,
    protocol: str = "effective",
    seed: int = 0,
) -> FilterReport:
    """Fit an input filter on held-out clean test images and evaluate it (the IMC authors'
    protocol for every input filter; the paper's Section 5.3).

    ``n_clean`` random test images (seeded by ``seed``; :func:`split_filter_data`) calibrate
    (and are STRIP's overlay pool); ``n_clean`` other random ones are evaluated: clean as they
    are, and those whose true label is not ``target`` stamped with ``trigger``. With fewer
    than ``2 * n_clean`` test images each part gets half.
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
    fit_i, ev_i, nc_i = split_filter_data(data, n_clean, seed)
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
    seed: int = 0,
) -> InspectionReport | FilterReport:
    """Run any registered detector on ``model``: a :class:`ModelInspector` inspects it with
    ``data`` (``trigger`` / ``target`` / ``seed`` unused); an :class:`InputFilter` is fitted
    and evaluated with :func:`evaluate_filter` (``n_clean``, ``protocol``, ``seed`` of the
    calibration / evaluation split), which needs the ``trigger`` and ``target`` the inputs are
    stamped with."""
    family = getattr(detector, "family", None)
    if family == "inspector":
        return detector.inspect(model, data)
    if family != "filter":
        raise ParamError(
            f"{type(detector).__name__} is neither a ModelInspector nor an InputFilter"
        )
    if trigger is None or target is None:
        raise ParamError(
            f"the input filter {detector.name!r} is evaluated on stamped inputs: pass the "
            "trigger and the target"
        )
    return evaluate_filter(detector, model, data, trigger, target, n_clean, protocol, seed)
