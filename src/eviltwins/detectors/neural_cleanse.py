"""NeuralCleanse (Wang et al., S&P 2019), with every label optimised in one batched pass."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Generator, Tensor, nn

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
from eviltwins.data import DatasetSpec, load_all
from eviltwins.detectors.base import DETECTORS, InspectionReport, ModelInspector
from eviltwins.detectors.nc_schedule import CostState, next_cost
from eviltwins.errors import OptimisationError, ParamError
from eviltwins.evasion import EVASIONS, EvasionTerm
from eviltwins.metrics import anomaly_index
from eviltwins.models.layout import CHANNELS_LAST, channels_last, images_per_pass, nhwc
from eviltwins.models.rewrite import pool_before_relu, thin_conv_grads
from eviltwins.results import EvasionClaim, ShownMetric
from eviltwins.triggers import stamp
from eviltwins.utils import device_of, eval_mode, frozen_params, make_generator, progress

# Images per forward/backward pass on CPU (see NeuralCleanse.pass_images_on).
CPU_PASS_IMAGES = 64

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
    = 2 flags the label).

    All labels (or ``labels``) are optimised together: one forward pass per step over
    ``batch_size`` images x every label, each label with its own mask, pattern, cost and
    schedule state (chunks of ``label_chunk`` labels when memory requires).

    Cost schedule (original code, :func:`~eviltwins.detectors.nc_schedule.next_cost`): the cost
    starts at 0; once success >= ``success`` (0.99) held for ``patience`` checks it becomes
    ``init_cost`` (1e-3); then it is multiplied by 1.5 after ``patience`` successful checks and
    divided by 1.5^1.5 after ``patience`` failing ones (the check that sets the cost counts as
    the first successful one, as in Wang et al.'s ``visualizer.py``); the best mask (smallest L1
    with success >= 0.99) is kept; a label stops early once its best L1 has not improved by more
    than a factor ``early_stop_threshold`` (0.99: a check counts as no progress unless the best
    L1 fell below 0.99 x the best before it) for ``early_stop_patience`` (2 x ``patience``)
    checks in a row, with the cost both raised and lowered at least once (Wang et al.'s
    ``visualizer.py`` defaults, also TrojanZoo's; ``early_stop_threshold=1.0`` counts any
    decrease as progress, as their GTSRB example). The optimisation runs only on the labels
    still active: the batch shrinks as labels stop. A check is every ``check_every``
    mini-batches (``None``: once per epoch, the original).

    Budget in optimisation steps (Pang et al.'s epochs, counted as steps): ``steps``, or by
    default ``epochs`` x ceil(``n_inputs`` / ``batch_size``) with the *nominal* ``n_inputs``
    (``imc``: 10 x 1,600 / 32 = 500 steps per label). ``n_inputs`` random images are drawn from
    ``data.test`` (held-out clean data); when it holds fewer, every image is used and the
    optimisation cycles through them (a fresh shuffle per pass) until the steps are spent, so a
    small split never silently runs fewer steps. An "epoch" (the check interval when
    ``check_every`` is None) is ceil(``n_inputs`` / ``batch_size``) steps, as in Wang et al.'s
    code, whose data generator also cycles. Early stopping (``early_stop``, on by default: the
    original rule) may still end a label before the budget; ``details["steps"]`` records the
    steps each label actually ran and ``details["budget_steps"]`` the budget.

    Passes: each step's forward and backward run over whole labels, ``pass_images`` images at
    a time (None: 64 on CPU, where the activations then stay in cache, one pass on a GPU);
    the per-label losses are independent, so the gradients are the one-batch gradients and
    one Adam step follows (the method is unchanged, only the order of the arithmetic).

    Layout: ``channels_last`` (None = auto, the default: on CPU for a model with 2-D
    convolutions; True / False) holds the convolution weights and the stamped batch in NHWC for
    the run, after checking that the model gives the same logits in that layout (see
    :func:`eviltwins.models.layout.channels_last`); ``details["channels_last"]`` records
    whether it was used. ``rewrites`` (on by default) runs ReLU -> max-pool pairs pool-first
    (exact) and back-propagates through thin first convolutions with one matrix product (same
    sums, float rounding), each checked on a few inputs first (see
    :mod:`eviltwins.models.rewrite`); ``details["rewrites"]`` counts what was used.

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
        x_all, y_all = load_all(data.test)
        if not len(x_all):
            raise ParamError(f"{type(self).__name__} needs held-out images: data.test is empty")
        pick = torch.randperm(len(x_all), generator=g)[: self.resolved("n_inputs")]
        x, y = x_all[pick].to(device_of(model)), y_all[pick].to(device_of(model))
        chunk = self.label_chunk or len(labels)
        norms, masks, patterns, succ, steps = [], [], [], [], []
        with (
            eval_mode(model),
            frozen_params(model),
            channels_last(model, x[:4], self.channels_last) as nhwc_on,
            pool_before_relu(model, x[:4], self.rewrites) as n_reordered,
            thin_conv_grads(model, x[:4], self.rewrites) as n_thin,
        ):
            for i in range(0, len(labels), chunk):
                out = self._reverse(model, x, y, labels[i : i + chunk], g, nhwc_on)
                norms += out[0]
                masks.append(out[1])
                patterns.append(out[2])
                succ += out[3]
                steps += out[4]
        idx = anomaly_index(norms) if len(norms) > 2 else [0.0] * len(norms)
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
                "rewrites": {"pool_before_relu": n_reordered, "thin_conv_grads": n_thin},
                "pass_images": self.pass_images_on(x.device),
            },
            labels=[int(lab) for lab in labels],
        )

    def pass_images_on(self, device: torch.device) -> int:
        """Images per forward/backward pass: ``pass_images``, else 64 on CPU and unbounded on
        a GPU (:func:`~eviltwins.models.layout.images_per_pass`)."""
        if self.pass_images is not None:
            return int(self.pass_images)
        return images_per_pass(device, CPU_PASS_IMAGES)

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
    ) -> tuple[Tensor, Tensor, float]:
        """One forward and backward pass for labels ``kk`` on the mini-batch ``xb`` / ``yb``: the
        loss CE(f((1 - m) x + m p), y) + cost_y ||m||_1 (+ :meth:`_extra_loss`) summed over the
        labels, back-propagated into their rows of ``w_m`` / ``w_p`` (not when it is not finite);
        returns each label's attack success on the batch, its mask L1 and the loss."""
        c, h, w = xb.shape[1:]
        m = (torch.tanh(w_m[kk]) + 1) / 2  # (k, 1, H, W)
        p = (torch.tanh(w_p[kk]) + 1) / 2  # (k, C, H, W)
        stamped = stamp(xb[None], m[:, None], p[:, None]).reshape(-1, c, h, w)
        logits = model(nhwc(stamped) if fast else stamped).view(len(kk), len(xb), -1)
        y = target[kk][:, None].expand(-1, len(xb))
        ce = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
        )
        l1 = m.abs().sum(dim=(1, 2, 3))
        loss = ce.view(len(kk), len(xb)).mean(1) + cost[kk] * l1
        loss = (loss + self._extra_loss(model, xb, yb, m, p, target[kk], fast)).sum()
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

    def _reverse(
        self, model: nn.Module, x: Tensor, y: Tensor, labels: list[int], g: Generator, fast: bool
    ) -> tuple[list[float], Tensor, Tensor, list[float], list[int]]:
        """Batched reverse engineering of the triggers of ``labels`` (Wang et al., Alg. 1):
        :meth:`budget_steps` steps per label, cycling through ``x``; returns the norms, masks,
        patterns, success rates of the best masks and the steps each label ran."""
        n_lab, (c, h, w), dev = len(labels), x.shape[1:], x.device
        # tanh parameters, initialised at random like the original (uniform in [0, 1] space).
        w_m = torch.atanh((torch.rand(n_lab, 1, h, w, generator=g) * 2 - 1) * 0.999).to(dev)
        w_p = torch.atanh((torch.rand(n_lab, c, h, w, generator=g) * 2 - 1) * 0.999).to(dev)
        w_m.requires_grad_(True)
        w_p.requires_grad_(True)
        opt = torch.optim.Adam([w_m, w_p], lr=self.lr, betas=(0.5, 0.9))
        target = torch.tensor(labels, device=dev)
        n_batches = math.ceil(len(x) / self.batch_size)  # per pass over the available x
        budget = self.budget_steps()
        check_every = self.resolved("check_every") or self.steps_per_epoch()
        patience = self.resolved("patience")
        es_patience = self.early_stop_patience or 2 * patience
        inf = float("inf")
        sched = CostState.start(n_lab, dev)
        best_l1 = torch.full((n_lab,), inf, device=dev)
        best_m = torch.zeros(n_lab, 1, h, w, device=dev)
        best_p = torch.zeros(n_lab, c, h, w, device=dev)
        best_succ = torch.zeros(n_lab, device=dev)
        es_cnt = torch.zeros(n_lab, dtype=torch.long, device=dev)
        es_best = torch.full((n_lab,), inf, device=dev)
        active = torch.ones(n_lab, dtype=torch.bool, device=dev)
        steps_run = torch.zeros(n_lab, dtype=torch.long, device=dev)
        acc_sum = torch.zeros(n_lab, device=dev)
        l1_sum = torch.zeros(n_lab, device=dev)
        seen = 0
        ids = torch.arange(n_lab, device=dev)  # the labels still active
        per = max(1, self.pass_images_on(dev) // self.batch_size)  # labels per pass
        bar = progress(
            total=budget, desc=f"{self.name} labels {labels[0]}..{labels[-1]}", quiet=self.quiet
        )
        step = 0
        while step < budget and active.any():  # passes over x, cycling until the budget
            order = torch.randperm(len(x), generator=g).to(dev)
            for b in range(n_batches):
                if step >= budget or not active.any():
                    break
                rows = order[b * self.batch_size : (b + 1) * self.batch_size]
                xb, yb = x[rows], y[rows]
                # whole labels per forward/backward (``per``): the loss is a sum of per-label
                # terms, so the passes' gradients add up to the one-batch gradient
                opt.zero_grad(set_to_none=True)
                acc = torch.empty(len(ids), device=dev)
                l1 = torch.empty(len(ids), device=dev)
                for k0 in range(0, len(ids), per):
                    kk = ids[k0 : k0 + per]
                    acc_k, l1_k, loss_k = self._pass(
                        model, xb, yb, w_m, w_p, kk, target, sched.cost, fast
                    )
                    if not math.isfinite(loss_k):
                        bar.close()
                        raise OptimisationError(
                            f"{type(self).__name__} diverged at step {step + 1} (loss {loss_k}): "
                            "the model's outputs on stamped inputs are NaN/inf or huge; check the "
                            f"model, or lower lr (now {self.lr:g})"
                        )
                    acc[k0 : k0 + per], l1[k0 : k0 + per] = acc_k, l1_k
                opt.step()
                acc_sum[ids] += acc
                l1_sum[ids] += l1
                steps_run[ids] += 1
                seen += 1
                step += 1
                bar.update(1)
                if seen < check_every:
                    continue
                with torch.no_grad():
                    avg_acc, avg_l1 = acc_sum / seen, l1_sum / seen
                    acc_sum.zero_()
                    l1_sum.zero_()
                    seen = 0
                    ok = avg_acc >= self.success
                    # best mask: smallest L1 among successful checks (current parameters)
                    better = active & ok & (avg_l1 < best_l1)
                    if better.any():
                        best_l1[better] = avg_l1[better]
                        best_m[better] = (torch.tanh(w_m[better]) + 1) / 2
                        best_p[better] = (torch.tanh(w_p[better]) + 1) / 2
                        best_succ[better] = avg_acc[better]
                    # early stop
                    has_best = best_l1 < inf
                    stalled = best_l1 >= self.early_stop_threshold * es_best
                    es_cnt = torch.where(has_best & stalled, es_cnt + 1, torch.zeros_like(es_cnt))
                    es_best = torch.minimum(es_best, best_l1)
                    if self.early_stop:
                        done = sched.up_flag & sched.down_flag & (es_cnt >= es_patience)
                        active &= ~done
                        ids = active.nonzero().squeeze(1)
                    sched = next_cost(sched, ok, self.init_cost, patience)  # cost schedule
                bar.set_postfix(active=int(active.sum()))
        bar.close()
        with torch.no_grad():
            final_m = (torch.tanh(w_m) + 1) / 2
            final_p = (torch.tanh(w_p) + 1) / 2
            none = best_l1 == inf  # never reached the success rate: report the final mask
            best_m[none] = final_m[none]
            best_p[none] = final_p[none]
            norms = best_m.abs().sum(dim=(1, 2, 3))
        return norms.tolist(), best_m, best_p, best_succ.tolist(), steps_run.tolist()


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
