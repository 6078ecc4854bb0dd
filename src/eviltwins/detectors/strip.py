"""STRIP (Gao et al., ACSAC 2019): superimpose benign images on an input; a trigger keeps the
prediction fixed, so the predictions' entropy stays low."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.base import Interval, OneOf
from eviltwins.detectors.base import DETECTORS, InputFilter, as_images, normal_threshold
from eviltwins.metrics import prediction_entropy
from eviltwins.utils import device_of, eval_mode, make_generator

VARIANTS: dict[str, dict[str, Any]] = {
    # Pang et al. (CCS 2020), Section 5.3.1: 8 overlays, equal weights, ln, threshold 0.05.
    "imc": {
        "n_overlays": 8,
        "blend": "average",
        "log_base": math.e,
        "threshold": "fixed",
        "fixed_threshold": 0.05,
    },
    # Gao et al.: 100 overlays, both at weight 1 (clipped), log2, normal fit at a chosen FRR.
    "original": {
        "n_overlays": 100,
        "blend": "add",
        "log_base": 2.0,
        "threshold": "frr",
        "fixed_threshold": 0.05,
    },
}


def overlay_entropy(
    model: nn.Module,
    x: Tensor,
    pool: Tensor,
    n: int,
    blend: str,
    log_base: float,
    generator: torch.Generator,
    batch_size: int = 2048,
) -> Tensor:
    """Mean prediction entropy of each input of ``x`` superimposed with ``n`` random images of
    ``pool``; all N overlays of a batch go through the model in one batched forward."""
    device = device_of(model)
    per = max(1, batch_size // n)
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(x), per):
            xb = x[start : start + per].to(device)
            idx = torch.randint(0, len(pool), (len(xb), n), generator=generator)
            ov = pool[idx].to(device)  # (B, N, C, H, W)
            mixed = (xb[:, None] + ov) / 2 if blend == "average" else (xb[:, None] + ov).clamp(0, 1)
            logits = model(mixed.reshape(-1, *xb.shape[1:]))
            h = prediction_entropy(logits, base=log_base).view(len(xb), n)
            out.append(h.mean(1).cpu())
    return torch.cat(out)


@DETECTORS.register("strip")
class STRIP(InputFilter):
    """STRIP input filter. ``score(x)`` = minus the mean overlay entropy (higher = more
    suspicious); ``detect(x)`` flags ``entropy < threshold``.

    Variants: ``imc`` (default; Pang et al.: N = 8 overlays, 0.5/0.5 average, natural log,
    fixed threshold 0.05) and ``original`` (Gao et al.: N = 100, both images at weight 1 then
    clipped, log2, threshold at the ``frr`` quantile of a normal fitted to the entropies of the
    held-out clean inputs given to ``fit``). ``n_overlays``, ``threshold`` (``fixed`` / ``frr``)
    and ``fixed_threshold`` override the variant. Overlay images come from the ``fit`` data.
    """

    name: ClassVar[str] = "strip"
    _constraints = {
        "variant": OneOf(*VARIANTS),
        "n_overlays": Interval(int, 1, None, allow_none=True),
        "threshold": OneOf("fixed", "frr", None),
        "fixed_threshold": Interval(float, 0, None, allow_none=True),
        "frr": Interval(float, 0, 1, closed="neither"),
        "seed": Interval(int, 0, None),
    }

    def __init__(
        self,
        variant: str = "imc",
        n_overlays: int | None = None,
        threshold: str | None = None,
        fixed_threshold: float | None = None,
        frr: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.variant = variant
        self.n_overlays = n_overlays
        self.threshold = threshold
        self.fixed_threshold = fixed_threshold
        self.frr = frr
        self.seed = seed

    def _opt(self, name: str) -> Any:
        v = getattr(self, name, None)
        return VARIANTS[self.variant][name] if v is None else v

    def fit(self, model: nn.Module, clean: Tensor | Dataset) -> STRIP:
        """Keep ``model`` and the held-out ``clean`` images (overlay pool), and set the
        threshold (fixed, or from the clean inputs' entropies at ``frr``)."""
        self._validate_params()
        self.model_ = model
        self.pool_ = as_images(clean).cpu()
        self.generator_ = make_generator(self.seed)
        if self._opt("threshold") == "frr":
            h = self.entropy(self.pool_)
            self.entropy_threshold_ = normal_threshold(h, self.frr)
        else:
            self.entropy_threshold_ = float(self._opt("fixed_threshold"))
        self.threshold_ = -self.entropy_threshold_
        return self

    def entropy(self, x: Tensor) -> Tensor:
        """Mean overlay entropy per input (low = trigger suspected)."""
        return overlay_entropy(
            self.model_,
            x,
            self.pool_,
            self._opt("n_overlays"),
            self._opt("blend"),
            self._opt("log_base"),
            self.generator_,
        )

    def score(self, x: Tensor) -> Tensor:
        self._check_fitted()
        return -self.entropy(as_images(x))
