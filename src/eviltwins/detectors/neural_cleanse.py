"""NeuralCleanse (Wang et al., S&P 2019), with every label optimised in one batched pass."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.base import (
    MAX_BATCH,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_LR,
    MAX_MAGNITUDE,
    MAX_STEPS,
    SEED_RANGE,
    Check,
    Interval,
    OneOf,
)
from eviltwins.data import DatasetSpec, load_at
from eviltwins.detectors.base import DETECTORS, InspectionReport, ModelInspector
from eviltwins.detectors.nc_reverse import reverse_labels
from eviltwins.detectors.nc_schedule import (
    LABEL_SCHEDULES,
    merged_schedules,
    scheduled_index,
    screen_counts,
)
from eviltwins.errors import ParamError
from eviltwins.evasion import EVASIONS, EvasionTerm
from eviltwins.models.fold import fold_batchnorm
from eviltwins.models.layout import (
    CHANNELS_LAST,
    channels_last,
    nhwc,
    pass_size,
)
from eviltwins.models.precision import PRECISIONS, autocast, checked_precision, dtype_of
from eviltwins.models.rewrite import pool_before_relu, thin_conv_grads
from eviltwins.results import EvasionClaim, ShownMetric
from eviltwins.triggers import stamp
from eviltwins.utils import device_of, eval_mode, frozen_params, make_generator

PRESETS: dict[str, dict[str, Any]] = {
    # Pang et al. (CCS 2020), Section 5.3.1: 1,600 random inputs, 10 epochs, batch 32:
    # 10 x 1,600 / 32 = 500 optimisation steps per label.
    "imc": {"n_inputs": 1600, "epochs": 10, "check_every": 10, "patience": 5},
    # Wang et al.'s released code: schedule checked once per epoch, long runs.
    "original": {"n_inputs": 1600, "epochs": 80, "check_every": None, "patience": 5},
}


@DETECTORS.register("neural-cleanse")
class NeuralCleanse(ModelInspector):
    """NeuralCleanse (Wang et al., S&P 2019): recover a trigger for every label.

    For every label y, min over (m, delta) of CE(f((1 - m) x + m delta), y) + cost_y * ||m||_1
    with a single-channel HxW mask and tanh parameters (Adam lr 0.1, betas (0.5, 0.9)); then the
    MAD outlier test on the per-label L1 norms of the best masks (anomaly index > ``threshold``
    = 2 flags the label). All labels (or ``labels``) are optimised together, each with its own
    mask, pattern, cost and schedule state (chunks of ``label_chunk`` labels when memory
    requires); the batch shrinks as labels stop.

    Cost schedule and early stop: Wang et al.'s ``visualizer.py`` (see
    :func:`~eviltwins.detectors.nc_schedule.next_cost`): cost 0 until success >= ``success``
    held for ``patience`` checks, then ``init_cost``, x1.5 / ÷1.5^1.5 after ``patience``
    successful / failing checks; the best mask is the smallest L1 with success >= 0.99; a label
    stops once its best L1 has not fallen below ``early_stop_threshold`` x the best before it
    for ``early_stop_patience`` (2 x ``patience``) checks, with the cost raised and lowered at
    least once. A check is every ``check_every`` mini-batches (None: once per epoch).

    Budget in optimisation steps: ``steps``, or ``epochs`` x ceil(``n_inputs`` /
    ``batch_size``) with the nominal ``n_inputs`` (``imc``: 10 x 1,600 / 32 = 500 steps per
    label), drawn at random from ``data.test`` and cycled through when it holds fewer.
    ``details["steps"]`` records the steps each label ran, ``details["budget_steps"]`` the
    budget.

    Label schedule: ``schedule="full"`` (default) gives every label the budget;
    ``schedule="k-arm"`` screens every label for ``screen_steps`` (a fifth of the budget) and
    finishes only the ``keep`` most promising ones and those the screen flags, none when a
    screen that counts flags none (after K-Arm, Shen et al., ICML 2021); a label's index is the
    smaller of its index on the end norms and on the screen's (see
    :mod:`eviltwins.detectors.nc_schedule` for how the other labels enter the MAD test).

    Same method, other order of arithmetic: passes of ``pass_images`` images (on CPU 64, 128
    in bfloat16); ``channels_last`` (auto); ``rewrites`` (batch norm folded into its
    convolution, ReLU -> max-pool run pool-first, thin first convolutions' input gradient as
    one matrix product), each checked on a few inputs first (:mod:`eviltwins.models.fold`,
    :mod:`eviltwins.models.rewrite`). ``precision="bf16"`` (or ``"auto"`` on hardware with
    native bfloat16) runs the model under bfloat16 autocast (:mod:`eviltwins.models.precision`):
    an approximation, recorded in ``details["precision"]``.

    Presets: ``imc`` (default; Pang et al.: 1,600 inputs, 10 epochs, checks every 10 batches)
    and ``original`` (80 epochs, checks once per epoch). Explicit parameters override a preset.
    """

    name: ClassVar[str] = "neural-cleanse"
    scan_measure: ClassVar[str] = "index"
    evasion_claim: ClassVar[EvasionClaim | None] = EvasionClaim(
        "nc-evaded",
        "target_anomaly",
        "NeuralCleanse is evaded by TrojanNN* (lower target index, no label flagged)",
        "index gap > 2 (Fig. 14, GTSRB size 0.4)",
    )
    report_metric: ClassVar[ShownMetric] = ShownMetric(
        "target_anomaly",
        "NC anomaly index (target)",
        2.0,
        name="NC",
        figures=("fig14",),
        columns=(
            ("target_anomaly", "NC index (target)"),
            ("flagged", "NC flagged labels"),
            ("steps_per_label", "NC steps per label"),
        ),
    )
    _constraints = {
        "preset": OneOf(*PRESETS),
        "n_inputs": Interval(int, 1, MAX_IMAGES, allow_none=True),
        "epochs": Interval(int, 1, MAX_EPOCHS, allow_none=True),
        "steps": Interval(int, 1, MAX_STEPS, allow_none=True),
        "batch_size": Interval(int, 1, MAX_BATCH),
        "lr": Interval(float, 0, MAX_LR, closed="right"),
        "init_cost": Interval(float, 0, MAX_MAGNITUDE, closed="right"),
        "success": Interval(float, 0, 1),
        "patience": Interval(int, 1, MAX_STEPS, allow_none=True),
        "check_every": Interval(int, 1, MAX_STEPS, allow_none=True),
        "early_stop": OneOf(True, False),
        "early_stop_patience": Interval(int, 1, MAX_STEPS, allow_none=True),
        "early_stop_threshold": Interval(float, 0, 1, closed="right"),
        "threshold": Interval(float, 0, MAX_MAGNITUDE),
        "label_chunk": Interval(int, 1, MAX_CLASSES, allow_none=True),
        "channels_last": CHANNELS_LAST,
        "rewrites": OneOf(True, False),
        "pass_images": Interval(int, 1, MAX_IMAGES, allow_none=True),
        "schedule": OneOf(*LABEL_SCHEDULES),
        "screen_steps": Interval(int, 1, MAX_STEPS, allow_none=True),
        "keep": Interval(int, 1, MAX_CLASSES, allow_none=True),
        "precision": PRECISIONS,
        "seed": SEED_RANGE,
        "labels": Check(
            lambda v: (
                v is None
                or v == "all"
                or (
                    isinstance(v, list | tuple)
                    and 0 < len(v) <= MAX_CLASSES
                    and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
                    and all(0 <= i < MAX_CLASSES for i in v)
                )
            ),
            f"None or 'all' (every label) or a non-empty list of class indices in "
            f"[0, {MAX_CLASSES - 1}]",
            bad="x",
        ),
    }
    fast_params: ClassVar[dict[str, Any]] = {"steps": 20, "n_inputs": 64, "labels": [0, 1, 2]}
    scan_params: ClassVar[dict[str, Any]] = {"schedule": "k-arm", "precision": "auto"}
    _presets = ("preset", PRESETS)

    def __init__(
        self,
        preset: str = "imc",
        n_inputs: int | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        batch_size: int = 32,
        lr: float = 0.1,
        init_cost: float = 1e-3,
        success: float = 0.99,
        patience: int | None = None,
        check_every: int | None = None,
        early_stop: bool = True,
        early_stop_patience: int | None = None,
        early_stop_threshold: float = 0.99,
        threshold: float = 2.0,
        labels: Sequence[int] | str | None = None,
        label_chunk: int | None = None,
        channels_last: bool | None = None,
        rewrites: bool = True,
        pass_images: int | None = None,
        schedule: str = "full",
        screen_steps: int | None = None,
        keep: int | None = None,
        precision: str = "fp32",
        seed: int = 0,
        quiet: bool | None = None,
    ) -> None:
        self.preset = preset
        self.n_inputs = n_inputs
        self.epochs = epochs
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.init_cost = init_cost
        self.success = success
        self.patience = patience
        self.check_every = check_every
        self.early_stop = early_stop
        self.early_stop_patience = early_stop_patience
        self.early_stop_threshold = early_stop_threshold
        self.threshold = threshold
        self.labels = labels
        self.label_chunk = label_chunk
        self.channels_last = channels_last
        self.rewrites = rewrites
        self.pass_images = pass_images
        self.schedule = schedule
        self.screen_steps = screen_steps
        self.keep = keep
        self.precision = precision
        self.seed = seed
        self.quiet = quiet

    def steps_per_epoch(self) -> int:
        """ceil(nominal ``n_inputs`` / ``batch_size``): the steps of one nominal epoch."""
        return math.ceil(self.resolved("n_inputs") / self.batch_size)

    def budget_steps(self) -> int:
        """Optimisation steps per label: ``steps``, else ``epochs`` x :meth:`steps_per_epoch`."""
        if self.steps is not None:
            return int(self.steps)
        return int(self.resolved("epochs")) * self.steps_per_epoch()

    def _inspect(self, model: nn.Module, data: DatasetSpec) -> InspectionReport:
        """Reverse-engineer a trigger per label and run the MAD test; the model is untouched."""
        every = self.labels is None or self.labels == "all"
        labels = list(range(data.num_classes)) if every else list(self.labels)
        if not labels or any(not 0 <= lab < data.num_classes for lab in labels):
            raise ParamError(f"labels must lie in 0..{data.num_classes - 1}; got {self.labels}")
        start = time.perf_counter()
        g = make_generator(self.seed)
        if not len(data.test):
            raise ParamError(f"{type(self).__name__} needs held-out images: data.test is empty")
        # a random pick by position: only the picked images are read and converted
        pick = torch.randperm(len(data.test), generator=g)[: self.resolved("n_inputs")]
        x, y = (t.to(device_of(model)) for t in load_at(data.test, pick))
        chunk = self.label_chunk or len(labels)
        norms, masks, patterns, succ, steps, sched = [], [], [], [], [], []
        with (
            eval_mode(model),
            frozen_params(model),
            channels_last(model, x[:4], self.channels_last) as nhwc_on,
            fold_batchnorm(model, x[:4], self.rewrites) as n_folded,
            pool_before_relu(model, x[:4], self.rewrites) as n_reordered,
            thin_conv_grads(model, x[:4], self.rewrites) as n_thin,
        ):
            precision = checked_precision(model, x[:4], self.precision)
            for i in range(0, len(labels), chunk):
                part = labels[i : i + chunk]
                out = reverse_labels(self, model, x, y, part, g, nhwc_on, dtype_of(precision))
                norms += out[0]
                masks.append(out[1])
                patterns.append(out[2])
                succ += out[3]
                steps += out[4]
                sched.append(out[5])
        merged = merged_schedules(sched)
        screen = merged["screen_norms"]
        merged["screen_counted"] = screen is not None and screen_counts(screen, x[0, 0].numel())
        screen = screen if merged["screen_counted"] else None
        idx = scheduled_index(norms, screen) if len(norms) > 2 else [0.0] * len(norms)
        flagged = [lab for lab, a in zip(labels, idx, strict=True) if a > self.threshold]
        return InspectionReport(
            self.name,
            [float(n) for n in norms],
            [float(a) for a in idx],
            flagged,
            self.threshold,
            torch.cat(masks).cpu(),
            torch.cat(patterns).cpu(),
            round(time.perf_counter() - start, 3),
            {
                "labels": labels,
                "success": succ,
                "n_inputs": len(x),
                "n_inputs_requested": self.resolved("n_inputs"),
                "epochs": self.resolved("epochs"),
                "budget_steps": self.budget_steps(),
                "steps": steps,
                "early_stop": self.early_stop,
                "early_stop_threshold": self.early_stop_threshold,
                "preset": self.preset,
                "channels_last": nhwc_on,
                "rewrites": {
                    "fold_batchnorm": n_folded,
                    "pool_before_relu": n_reordered,
                    "thin_conv_grads": n_thin,
                },
                "pass_images": self.pass_images_on(x.device, x[0, 0].numel(), dtype_of(precision)),
                "precision": precision,
                "schedule": self.schedule,
                **merged,
            },
            labels=[int(lab) for lab in labels],
        )

    def screen_at(self, check_every: int) -> int | None:
        """The step at which the ``k-arm`` label schedule's screen ends (``screen_steps``, by
        default a fifth of the budget, rounded up to a check); None for the ``full`` schedule
        or when the screen would last the whole budget."""
        if self.schedule != "k-arm":
            return None
        wanted = self.screen_steps or max(1, self.budget_steps() // 5)
        at = math.ceil(wanted / check_every) * check_every
        return at if at < self.budget_steps() else None

    def pass_images_on(
        self, device: torch.device, pixels: int = 1024, dtype: torch.dtype | None = None
    ) -> int:
        """Images per forward/backward pass: ``pass_images``, else on CPU, for images of up to
        32 x 32 ``pixels``, 64 in float32 and 128 in bfloat16 ``dtype`` (two and four labels'
        mini-batches; fewer for larger images, at least 16: a label's 32 images in two passes
        at 224 x 224) and unbounded on a GPU (:func:`~eviltwins.models.layout.pass_size`); a
        label whose mini-batch does not fit is split over passes
        (:func:`~eviltwins.models.layout.passes`)."""
        if self.pass_images is not None:
            return int(self.pass_images)
        return pass_size(device, pixels, dtype)

    def _pass(
        self,
        model: nn.Module,
        xb: Tensor,
        yb: Tensor,
        w_m: Tensor,
        w_p: Tensor,
        kk: Tensor,
        target: Tensor,
        cost: Tensor,
        fast: bool,
        dtype: torch.dtype | None = None,
        share: float = 1.0,
    ) -> tuple[Tensor, Tensor, float]:
        """One forward and backward pass for labels ``kk`` on the mini-batch ``xb`` / ``yb``: the
        loss CE(f((1 - m) x + m p), y) + cost_y ||m||_1 (+ :meth:`_extra_loss`) summed over the
        labels, back-propagated into their rows of ``w_m`` / ``w_p`` (not when it is not finite);
        returns each label's attack success on the batch, its mask L1 and the loss. ``share``:
        ``xb`` is this share of the step's mini-batch (a chunk of it), and each label's loss is
        weighted by it, so the chunks' losses add up to the mini-batch's (the CE and TABOR's
        image terms are means over the images, the other terms do not depend on them)."""
        c, h, w = xb.shape[1:]
        m = (torch.tanh(w_m[kk]) + 1) / 2  # (k, 1, H, W)
        p = (torch.tanh(w_p[kk]) + 1) / 2  # (k, C, H, W)
        stamped = stamp(xb[None], m[:, None], p[:, None]).reshape(-1, c, h, w)
        with autocast(xb.device, dtype):
            logits = model(nhwc(stamped) if fast else stamped)
        logits = logits.float().view(len(kk), len(xb), -1)
        y = target[kk][:, None].expand(-1, len(xb))
        ce = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
        )
        l1 = m.abs().sum(dim=(1, 2, 3))
        loss = ce.view(len(kk), len(xb)).mean(1) + cost[kk] * l1
        loss = share * (loss + self._extra_loss(model, xb, yb, m, p, target[kk], fast)).sum()
        if torch.isfinite(loss):
            loss.backward()
        with torch.no_grad():
            acc = (logits.argmax(-1) == y).float().mean(1)
        return acc, l1.detach(), float(loss.detach())

    def _extra_loss(
        self, model: nn.Module, xb: Tensor, yb: Tensor, m: Tensor, p: Tensor, t: Tensor, fast: bool
    ) -> Tensor | float:
        """Per-label terms (k,) added to the losses of labels ``t``: none (TABOR's hook)."""
        return 0.0


def neural_cleanse_fidelity(
    model: nn.Module, stamped: Tensor, benign: Tensor, mask: Tensor, n_pixels: int
) -> Tensor:
    """IMC's term against NeuralCleanse: l_f(m) = ||m||_1 / (pixels covered by the trigger)
    (Pang et al., Section 5.3.2: "we set lambda as the number of pixels covered by the
    trigger"; the authors' code divides by it), on the trigger step."""
    return mask.abs().sum() / max(1, n_pixels)


EVASIONS.register("neural-cleanse")(
    lambda: EvasionTerm(
        "neural-cleanse",
        1.0,
        trigger_loss=neural_cleanse_fidelity,
        needs_learned_mask=True,
        doc="mask L1 normalised by trigger pixels, on the trigger step",
    )
)
