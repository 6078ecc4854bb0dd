"""The NeuralCleanse + STRIP ensemble of Pang et al. (CCS 2020), Section 5.4."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.base import Interval, OneOf
from eviltwins.detectors.base import DETECTORS, InputFilter, as_images, normal_threshold
from eviltwins.metrics import prediction_entropy
from eviltwins.triggers import Trigger
from eviltwins.utils import device_of, eval_mode, make_generator


@DETECTORS.register("ensemble")
class NCStripEnsemble(InputFilter):
    """Ensemble detector (Section 5.4): (i) NeuralCleanse recovers the suspected trigger;
    (ii) it is stamped on benign inputs; (iii) the input under test is mixed with those stamped
    benign inputs at weights w = 0.0, 0.1, ..., 1.0 (mixture = w x + (1 - w) b*); (iv) the mean
    self-entropy of ``n_overlays`` mixtures is taken at each weight; (v) the score is minus the
    standard deviation of the 11 values (a trigger-carrying input keeps every mixture dominated
    by a trigger: low deviation; higher score = more suspicious).

    The paper gives no threshold: ``threshold="frr"`` (default) puts it at the ``frr`` (0.05)
    quantile of a normal fitted to the deviations of the held-out clean ``fit`` inputs;
    ``"fixed"`` uses ``fixed_threshold`` on the deviation. ``fit(model, clean, trigger)`` takes
    the recovered trigger (e.g. from ``NeuralCleanse().inspect``: ``report.masks[suspect]``),
    or runs NeuralCleanse on ``data`` itself when ``trigger`` is None.
    """

    name: ClassVar[str] = "ensemble"
    needs_data: ClassVar[bool] = True  # fit runs NeuralCleanse on a DatasetSpec
    _constraints = {
        "n_overlays": Interval(int, 1, None),
        "steps": Interval(int, 2, None),
        "threshold": OneOf("fixed", "frr"),
        "fixed_threshold": Interval(float, 0, None),
        "frr": Interval(float, 0, 1, closed="neither"),
        "seed": Interval(int, 0, None),
    }

    def __init__(
        self,
        n_overlays: int = 8,
        steps: int = 11,
        threshold: str = "frr",
        fixed_threshold: float = 0.1,
        frr: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.n_overlays = n_overlays
        self.steps = steps
        self.threshold = threshold
        self.fixed_threshold = fixed_threshold
        self.frr = frr
        self.seed = seed

    def fit(
        self, model: nn.Module, clean: Tensor | Dataset, trigger: Trigger | None = None, data=None
    ) -> NCStripEnsemble:
        """Calibrate on held-out ``clean`` images with the recovered ``trigger``."""
        self._validate_params()
        if trigger is None:
            if data is None:
                from eviltwins.errors import ParamError

                raise ParamError(
                    "the ensemble needs NeuralCleanse's recovered trigger: pass "
                    "trigger=... or data=<DatasetSpec> to run NeuralCleanse"
                )
            from eviltwins.detectors.neural_cleanse import NeuralCleanse

            report = NeuralCleanse(seed=self.seed, quiet=True).inspect(model, data)
            s = report.suspect
            trigger = Trigger(report.masks[s], report.patterns[s])
            self.nc_report_ = report
        self.model_ = model
        self.trigger_ = trigger
        pool = as_images(clean).cpu()
        self.pool_ = trigger.stamp(pool)  # benign inputs carrying the suspected trigger
        self.generator_ = make_generator(self.seed)
        if self.threshold == "frr":
            dev = self.deviation(pool)
            # Low deviation = suspicious: reject the lowest frr share of clean inputs.
            self.deviation_threshold_ = normal_threshold(dev, self.frr)
        else:
            self.deviation_threshold_ = float(self.fixed_threshold)
        self.threshold_ = -self.deviation_threshold_
        return self

    def deviation(self, x: Tensor) -> Tensor:
        """Standard deviation over the mixture weights of the mean mixture entropy."""
        model, n = self.model_, self.n_overlays
        w = torch.linspace(0, 1, self.steps)
        device = device_of(model)
        out = []
        per = max(1, 2048 // (n * self.steps))
        with torch.no_grad(), eval_mode(model):
            for start in range(0, len(x), per):
                xb = x[start : start + per].to(device)
                idx = torch.randint(0, len(self.pool_), (len(xb), n), generator=self.generator_)
                b = self.pool_[idx].to(device)  # (B, N, C, H, W)
                ww = w.to(device).view(1, -1, 1, 1, 1, 1)
                mixed = ww * xb[:, None, None] + (1 - ww) * b[:, None]  # (B, S, N, C, H, W)
                logits = model(mixed.reshape(-1, *xb.shape[1:]))
                h = prediction_entropy(logits).view(len(xb), self.steps, n).mean(2)
                out.append(h.std(1).cpu())
        return torch.cat(out)

    def score(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return -self.deviation(as_images(x))
