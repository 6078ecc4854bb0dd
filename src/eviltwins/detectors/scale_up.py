"""SCALE-UP (Guo, Li, Chen, Guo, Sun, Liu, ICLR 2023): amplify an input's pixel values; an input
that carries a trigger keeps its prediction (scaled prediction consistency), a benign one loses
it. The input filter, and IMC's evasion term against it (registered as ``scale-up``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.base import MAX_IMAGES, MAX_MAGNITUDE, SEED_RANGE, Check, Interval, OneOf
from eviltwins.data import DatasetSpec
from eviltwins.detectors.base import DETECTORS, InputFilter, as_images, quantile_threshold
from eviltwins.evasion import EVASIONS, EvasionTerm, StepOutputs
from eviltwins.metrics import prediction_entropy
from eviltwins.models.layout import CPU_FORWARD_IMAGES, images_per_pass
from eviltwins.results import EvasionClaim, ShownMetric
from eviltwins.utils import device_of, eval_mode, is_real

#: The authors' scaling set N (BackdoorBox ``SCALE_UP``: ``scale_set = [3, 5, 7, 9, 11]``).
SCALES = (3, 5, 7, 9, 11)
#: The authors' threshold T on SPC (BackdoorBox ``SCALE_UP``: ``self.T = 0.5``).
SPC_THRESHOLD = 0.5
#: Images per forward at most on any device (on CPU, :data:`CPU_FORWARD_IMAGES`).
MAX_FORWARD = 2048


def amplify(x: Tensor, scales: Sequence[float]) -> Tensor:
    """clip(n * x, 0, 1) for every n of ``scales``: (B, C, H, W) -> (B, len(scales), C, H, W)."""
    s = torch.as_tensor(scales, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
    return (x[:, None] * s).clamp(0, 1)


def scaled_predictions(model: nn.Module, x: Tensor, scales: Sequence[float]) -> Tensor:
    """Labels ``model`` gives each input of ``x`` (images in [0, 1]) as it is (column 0) and
    amplified by each n of ``scales`` (column 1 + i: clip(scales[i] * x, 0, 1)): (B, 1 + |N|).

    An input and all its amplified copies go through the model in the same forward: chunks of
    ``max(1, F // (1 + |N|))`` inputs, F = 128 images on CPU (cache-sized) and 2,048 on other
    devices; no loop over inputs or scales."""
    device = device_of(model)
    copies = len(scales) + 1
    per = max(1, min(images_per_pass(device, CPU_FORWARD_IMAGES), MAX_FORWARD) // copies)
    out = []
    with torch.no_grad(), eval_mode(model):
        for xb in x.split(per):
            batch = amplify(xb.to(device), (1, *scales)).flatten(0, 1)
            out.append(model(batch).argmax(1).view(len(xb), copies).cpu())
    return torch.cat(out) if out else torch.empty(0, copies, dtype=torch.long)


def spc(predictions: Tensor) -> Tensor:
    """SPC(x) = (1/|N|) sum_n 1[f(clip(n x)) = f(x)] from :func:`scaled_predictions`' labels:
    the share of amplified copies labelled as the input itself (float64, exact ratios)."""
    agree = predictions[:, 1:] == predictions[:, :1]
    return agree.sum(1).double() / agree.shape[1]


def high_side_threshold(values: Tensor, rate: float) -> float:
    """The threshold above which a clean calibration score counts as suspicious, for a filter
    whose *high* scores are suspicious: :func:`~eviltwins.detectors.base.quantile_threshold`
    mirrored (the empirical ``1 - rate`` quantile, ``-quantile_threshold(-values, rate)``): at
    most ``int(rate * n)`` of the ``n`` clean values lie strictly above it, fewer when values
    tie at it (``values > threshold`` flags them)."""
    return -quantile_threshold(-values, rate)


def class_statistics(values: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, float, float]:
    """Mean and (unbiased) standard deviation of ``values`` per label (tables indexed by label,
    up to the largest label present), and the pooled mean and deviation. A label with fewer
    than two values takes the pooled mean and deviation; a zero deviation takes the pooled one
    (1 where that is zero too)."""
    v = values.double()
    pooled_mean = float(v.mean()) if len(v) else 0.0
    pooled_std = float(v.std()) if len(v) > 1 else 0.0
    pooled_std = pooled_std if pooled_std > 0 else 1.0
    k = int(labels.max()) + 1 if len(labels) else 0
    mean = torch.full((k,), pooled_mean, dtype=torch.float64)
    std = torch.full((k,), pooled_std, dtype=torch.float64)
    for c in labels.unique().tolist():  # one step per class present, not per input
        vc = v[labels == c]
        if len(vc) > 1:
            mean[c] = vc.mean()
            std[c] = vc.std() if float(vc.std()) > 0 else pooled_std
    return mean, std, pooled_mean, pooled_std


@DETECTORS.register("scale-up")
class ScaleUp(InputFilter):
    """SCALE-UP (Guo et al., ICLR 2023): flag inputs whose label resists scaling.

    The input filter of Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor
    Detection via Analyzing Scaled Prediction Consistency", ICLR 2023; reference code:
    BackdoorBox ``core/defenses/SCALE_UP.py``, by the paper's second author, and the authors'
    repository JunfengGo/SCALE-UP.

    For an input x with label c = f(x) and the scaling set N::

        SPC(x) = (1 / |N|) * sum_{n in N} 1[f(clip(n * x, 0, 1)) = c]

    Images are in [0, 1] and normalisation is the model's first layer, so clip(n x, 0, 1) is
    BackdoorBox's "no normalize" branch (``torch.clip(imgs * scale, 0.0, 1.0)``). A trigger
    keeps the label under amplification: high SPC = suspicious.

    Defaults (BackdoorBox): ``scales`` = N = (3, 5, 7, 9, 11) (``scale_set = [3, 5, 7, 9,
    11]``); ``threshold="fixed"`` with T = ``spc_threshold`` = 0.5 (``self.T = 0.5``), the
    paper's defender-specified threshold, never calibrated. An input is flagged when
    SPC(x) > T (the paper and BackdoorBox's docstring; its code tests ``>=``, the same for the
    default N, whose SPC values are multiples of 0.2). The authors' own scripts query every
    integer scale 1..11 (on inputs with +0.02 uniform noise) and average agreement over all 11
    columns, scale 1 included: an affine map of SPC over N = (2, ..., 11).

    Variants:

    * ``standardize=True``: the paper's data-limited variant (BackdoorBox ``valset``): score =
      (SPC(x) - mu_c) / sigma_c, the mean and (unbiased) deviation of the SPC of the clean
      calibration inputs that the model labels c = f(x) ("a few benign samples from each
      class"; :func:`class_statistics` for classes with fewer than two). BackdoorBox pools all
      classes into one mu, sigma and takes the benign SPC against true labels; ``fit`` gets
      no labels, so we take the model's (the same on a correctly labelled clean input). With
      ``threshold="fixed"`` T applies to the z-score, as in BackdoorBox (one T for both).
    * ``threshold="quantile"``: calibrated like STRIP's paper variant, mirrored for high
      scores (:func:`high_side_threshold`): the ``1 - fpr`` (0.95) empirical quantile of the
      scores of the held-out clean inputs given to ``fit``, never of the evaluated inputs.

    ``score(x)`` returns SPC(x) in {0, 1/|N|, ..., 1} (with ``standardize``, its z-score in the
    predicted class); higher = more suspicious; ``detect(x)`` = ``score(x) > threshold_``.
    SPC is discrete: the AUC counts ties one half (:func:`~eviltwins.metrics.roc_auc`), and a
    quantile threshold on tied values flags fewer than ``fpr`` of the clean inputs (none when
    more than ``fpr`` of them keep every label). The normalised score is an affine map of SPC
    per predicted class, so it breaks ties only across classes; the method reads labels only
    (black-box), and we add no continuous tie-breaker. ``seed``: SCALE-UP draws nothing at
    random; every detector takes one (sweeps and the CLI pass it).

    Example: ``ScaleUp().fit(model, held_out_clean).evaluate(clean, triggered)``.
    """

    name: ClassVar[str] = "scale-up"
    #: The IMC paper (2020) predates SCALE-UP: no claim to check.
    evasion_claim: ClassVar[EvasionClaim | None] = None
    report_metric: ClassVar[ShownMetric] = ShownMetric(
        "f1", "SCALE-UP F1", name="SCALE-UP", figures=()
    )
    #: The defaults already run in well under a second on the 360 digits test images (six
    #: labels per input, forwards of 126 images on CPU): nothing to shrink.
    fast_params: ClassVar[dict[str, Any]] = {}
    _constraints = {
        "scales": Check(
            lambda v: (
                isinstance(v, list | tuple)
                and 1 <= len(v) <= MAX_IMAGES
                and all(is_real(n) and 0 < n <= MAX_MAGNITUDE for n in v)
            ),
            f"a list of 1 to {MAX_IMAGES} amplification factors in (0, {MAX_MAGNITUDE}]",
            bad=(0,),
        ),
        "standardize": OneOf(True, False),
        "threshold": OneOf("fixed", "quantile"),
        "spc_threshold": Interval(float, -MAX_MAGNITUDE, MAX_MAGNITUDE),
        "fpr": Interval(float, 0, 1, closed="neither"),
        "seed": SEED_RANGE,
    }

    def __init__(
        self,
        scales: Sequence[float] = SCALES,
        standardize: bool = False,
        threshold: str = "fixed",
        spc_threshold: float = SPC_THRESHOLD,
        fpr: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.scales = scales
        self.standardize = standardize
        self.threshold = threshold
        self.spc_threshold = spc_threshold
        self.fpr = fpr
        self.seed = seed

    def _fit(self, model: nn.Module, clean: Tensor, *, data: DatasetSpec | None = None) -> ScaleUp:
        """Keep ``model``, score the held-out ``clean`` images (per-class SPC statistics with
        ``standardize``) and set ``threshold_``: ``spc_threshold`` (``fixed``) or the
        ``1 - fpr`` quantile of their scores (``quantile``). ``data`` is not used."""
        start = time.perf_counter()
        self.model_ = model
        self.scales_ = tuple(float(n) for n in self.scales)
        self.standardize_ = self.standardize
        preds = scaled_predictions(model, as_images(clean), self.scales_)
        raw = spc(preds)
        if self.standardize_:
            stats = class_statistics(raw, preds[:, 0])
            self.class_mean_, self.class_std_, self.pooled_mean_, self.pooled_std_ = stats
        scores = self._from_predictions(preds)
        self.threshold_mode_ = self.threshold
        self.fpr_ = None if self.threshold == "fixed" else float(self.fpr)
        if self.fpr_ is None:
            self.threshold_ = float(self.spc_threshold)
        else:
            self.threshold_ = high_side_threshold(scores, self.fpr_)
        self.calibration_scores_ = scores
        self.calibration_spc_ = raw
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _from_predictions(self, preds: Tensor) -> Tensor:
        raw = spc(preds)
        if not self.standardize_:
            return raw
        labels = preds[:, 0]
        known = labels < len(self.class_mean_)  # a label no calibration input got: pooled
        mean = torch.full_like(raw, self.pooled_mean_)
        std = torch.full_like(raw, self.pooled_std_)
        mean[known] = self.class_mean_[labels[known]]
        std[known] = self.class_std_[labels[known]]
        return (raw - mean) / std

    def score(self, x: Tensor) -> Tensor:
        """SPC(x) (with ``standardize``: its z-score in the predicted class); higher = more
        suspicious."""
        self._check_fitted()
        return self._from_predictions(scaled_predictions(self.model_, as_images(x), self.scales_))

    def _report_details(self) -> dict[str, Any]:
        cal = self.calibration_scores_
        details = {
            **super()._report_details(),
            "scales": list(self.scales_),
            "score": "spc z-score in the predicted class" if self.standardize_ else "spc",
            "threshold_rule": self.threshold_mode_,
            "threshold": float(self.threshold_),
            "fpr": self.fpr_,
            "n_calibration": len(cal),
            "calibration_flagged": _mean(cal > self.threshold_),
            "calibration_spc_mean": _mean(self.calibration_spc_),
        }
        if self.standardize_:
            details["pooled_mean"], details["pooled_std"] = self.pooled_mean_, self.pooled_std_
            details["class_mean"] = self.class_mean_.tolist()
            details["class_std"] = self.class_std_.tolist()
        return details


def _mean(values: Tensor) -> float | None:
    return float(values.double().mean()) if len(values) else None


def scale_up_copies(stamped: Tensor, clean: Tensor, state: Any = None) -> Tensor | None:
    """IMC's rows against SCALE-UP in the re-training batch: each stamped copy
    x*_i = psi(clean_i) amplified once, clip(n_i * x*_i, 0, 1), with the authors' scales
    cycled over the rows (n_i = SCALES[i mod |N|]): deterministic, every scale in use on a batch
    of five or more stamped copies, one row per stamped copy (as many rows as STRIP's mixtures);
    the batches are shuffled, so an image meets every scale over an epoch. Clean rows are never
    amplified (``clean`` is unused). ``None`` without stamped copies."""
    if len(stamped) == 0:
        return None
    s = torch.as_tensor(SCALES, dtype=stamped.dtype, device=stamped.device)
    n = s[torch.arange(len(stamped), device=stamped.device) % len(s)]
    return (stamped * n.view(-1, 1, 1, 1)).clamp(0, 1)


def scale_up_specificity(out: StepOutputs, state: Any = None) -> Tensor:
    """l_s(theta) = E_x[-H(f(clip(n x*, 0, 1); theta))] on the logits of the amplified stamped
    copies (:func:`scale_up_copies`) from the re-training forward: minimising it maximises
    their prediction entropy, in [-ln K, 0]. Zero without rows.

    Why entropy: SPC counts amplified copies that keep the target label; the term receives
    neither the target nor the true labels (only the rows), and an amplified stamped copy
    pushed to a flat prediction no longer carries the backdoor's confident target label, so
    its label follows the benign content instead, as a benign input's does under amplification.
    Bounded on both sides (unlike -log(1 - p_target), which is unbounded exactly where the
    backdoor is strong), so it cannot swamp the backdoor's cross-entropy, and in the same units
    as STRIP's term (:func:`~eviltwins.detectors.strip.strip_specificity`), whose weight it
    takes. For an opaque trigger the amplified copy keeps the trigger pixels: the term then works
    against the backdoor's own cross-entropy; report efficacy with every evasion run."""
    if len(out.logits) == 0:
        return out.logits.new_zeros(())
    return -prediction_entropy(out.logits).mean()


EVASIONS.register("scale-up")(
    lambda: EvasionTerm(
        "scale-up",
        0.6,
        model_loss=scale_up_specificity,
        model_inputs=scale_up_copies,
        doc="entropy of stamped copies amplified by SCALE-UP's scales (clip(n x*), n in 3..11), "
        "maximised on the model step's poisoned batches (weight 0.6: STRIP's term, same units)",
    )
)
