"""The NeuralCleanse + STRIP ensemble of Pang et al. (CCS 2020), Section 5.4."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.base import MAX_IMAGES, MAX_MAGNITUDE, MAX_STEPS, SEED_RANGE, Interval, OneOf
from eviltwins.data import DatasetSpec
from eviltwins.detectors.base import (
    DETECTORS,
    InputFilter,
    ModelInspector,
    as_images,
    low_side_threshold,
)
from eviltwins.detectors.neural_cleanse import NeuralCleanse
from eviltwins.errors import ParamError
from eviltwins.metrics import prediction_entropy
from eviltwins.results import ShownMetric
from eviltwins.triggers import Trigger
from eviltwins.utils import device_of, eval_mode, make_generator


@DETECTORS.register("ensemble")
class NCStripEnsemble(InputFilter):
    """Ensemble (Pang et al., CCS 2020): mix inputs with NeuralCleanse's trigger.

    The NeuralCleanse + STRIP ensemble of Section 5.4, an input filter: (i) NeuralCleanse
    recovers the suspected trigger; (ii) it is stamped on benign inputs; (iii) the input under
    test is mixed with those stamped benign inputs at weights w = 0.0, 0.1, ..., 1.0 (mixture =
    w x + (1 - w) b*); (iv) the mean self-entropy of ``n_overlays`` mixtures is taken at each
    weight; (v) the score is minus the standard deviation of the 11 values (a trigger-carrying
    input keeps every mixture dominated by a trigger: low deviation; higher score = more
    suspicious).

    The paper gives no threshold; it is calibrated exactly like STRIP's paper variant (so that
    Fig. 15 compares the two at the same rule), on the held-out clean ``fit`` inputs, each mixed
    only with the *other* stamped clean inputs: ``threshold="quantile"`` (default) puts it at
    the empirical ``frr`` (0.05) quantile of their deviations (TrojanZoo's ``strip_fpr`` rule,
    the same function as STRIP's: :func:`~eviltwins.detectors.base.low_side_threshold`);
    ``"normal"`` at the ``frr`` quantile of a normal fitted to them (Gao et al.'s original STRIP
    rule), ``"fixed"`` uses ``deviation_threshold`` on the deviation. The calibration deviations
    are kept as ``calibration_deviation_``.

    ``fit(model, clean, trigger)`` takes the recovered trigger (e.g. from
    ``NeuralCleanse().inspect``: ``report.masks[suspect]``), or, when ``trigger`` is None,
    composes a model inspector (:meth:`inspector`: NeuralCleanse with the ensemble's seed and,
    when ``nc_steps`` is set, that many optimisation steps per label instead of its preset's),
    kept as ``inspector_``, and runs it on ``data.test``. Those inputs must be disjoint from the
    inputs the ensemble is evaluated on: :func:`~eviltwins.detectors.evaluate_filter` passes
    the test images outside its evaluated part.
    """

    name: ClassVar[str] = "ensemble"
    report_metric: ClassVar[ShownMetric] = ShownMetric(
        "f1", "ensemble F1", name="ensemble", figures=("fig15",)
    )
    _constraints = {
        "n_overlays": Interval(int, 1, MAX_IMAGES),
        "steps": Interval(int, 2, MAX_STEPS),
        "threshold": OneOf("quantile", "normal", "fixed"),
        "deviation_threshold": Interval(float, 0, MAX_MAGNITUDE),
        "frr": Interval(float, 0, 1, closed="neither"),
        "nc_steps": Interval(int, 1, MAX_STEPS, allow_none=True),
        "seed": SEED_RANGE,
    }
    fast_params: ClassVar[dict[str, Any]] = {"nc_steps": 20, "steps": 5}

    def __init__(
        self,
        n_overlays: int = 8,
        steps: int = 11,
        threshold: str = "quantile",
        deviation_threshold: float = 0.1,
        frr: float = 0.05,
        nc_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        self.n_overlays = n_overlays
        self.steps = steps
        self.threshold = threshold
        self.deviation_threshold = deviation_threshold
        self.frr = frr
        self.nc_steps = nc_steps
        self.seed = seed

    def inspector(self) -> ModelInspector:
        """The model inspector whose suspected trigger the ensemble mixes (step (i))."""
        return NeuralCleanse(steps=self.nc_steps, seed=self.seed, quiet=True)

    def _fit(
        self,
        model: nn.Module,
        clean: Tensor | Dataset,
        trigger: Trigger | None = None,
        data: DatasetSpec | None = None,
    ) -> NCStripEnsemble:
        """Calibrate on held-out ``clean`` images with the recovered ``trigger`` (or run
        NeuralCleanse on ``data.test``, which must not hold the inputs evaluated later)."""
        start = time.perf_counter()
        self.nc_report_ = None
        if trigger is None:
            if data is None:
                raise ParamError(
                    "the ensemble needs NeuralCleanse's recovered trigger: pass "
                    "trigger=... or data=<DatasetSpec> to run NeuralCleanse"
                )
            self.inspector_ = self.inspector()
            report = self.inspector_.inspect(model, data)
            s = report.suspect
            trigger = Trigger(report.masks[s], report.patterns[s])
            self.nc_report_ = report
        self.model_ = model
        self.trigger_ = trigger
        pool = as_images(clean).cpu()
        if len(pool) < 2:
            raise ParamError("the ensemble needs at least 2 held-out clean images to calibrate")
        self.pool_ = trigger.stamp(pool)  # benign inputs carrying the suspected trigger
        self.generator_ = make_generator(self.seed)
        if self.threshold == "fixed":
            self.calibration_deviation_ = None
            self.deviation_threshold_ = float(self.deviation_threshold)
        else:
            dev = self.deviation(pool, exclude_self=True)
            self.calibration_deviation_ = dev
            # Low deviation = suspicious: reject the lowest frr share of clean inputs, by
            # STRIP's rule (as the paper's Fig. 15 compares the two)
            self.deviation_threshold_ = low_side_threshold(dev, self.threshold, self.frr)
        self.threshold_ = -self.deviation_threshold_
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def deviation(self, x: Tensor, exclude_self: bool = False) -> Tensor:
        """Standard deviation over the mixture weights of the mean mixture entropy.
        ``exclude_self``: ``x`` holds the clean images whose stamped copies are the pool
        (calibration), so input i is never mixed with its own stamped copy."""
        model, n = self.model_, self.n_overlays
        w = torch.linspace(0, 1, self.steps)
        device = device_of(model)
        out = []
        per = max(1, 2048 // (n * self.steps))
        with torch.no_grad(), eval_mode(model):
            for start in range(0, len(x), per):
                xb = x[start : start + per].to(device)
                if exclude_self:
                    idx = torch.randint(
                        0, len(self.pool_) - 1, (len(xb), n), generator=self.generator_
                    )
                    own = torch.arange(start, start + len(xb))[:, None]
                    idx = idx + (idx >= own).long()
                else:
                    idx = torch.randint(0, len(self.pool_), (len(xb), n), generator=self.generator_)
                b = self.pool_[idx].to(device)  # (B, N, C, H, W)
                ww = w.to(device).view(1, -1, 1, 1, 1, 1)
                mixed = ww * xb[:, None, None] + (1 - ww) * b[:, None]  # (B, S, N, C, H, W)
                logits = model(mixed.reshape(-1, *xb.shape[1:]))
                h = prediction_entropy(logits).view(len(xb), self.steps, n).mean(2)
                out.append(h.std(1).cpu())
        return torch.cat(out) if out else torch.empty(0)

    def score(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return -self.deviation(as_images(x))

    def _report_details(self) -> dict[str, Any]:
        d: dict[str, Any] = {**super()._report_details(), "threshold_mode": self.threshold}
        rep = self.nc_report_
        if rep is not None:
            d["neural_cleanse"] = {
                "suspect": rep.suspect,
                "flagged": rep.flagged,
                "max_anomaly": rep.max_anomaly,
                "n_inputs": rep.details.get("n_inputs"),
            }
        return d
