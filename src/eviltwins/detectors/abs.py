"""ABS, Artificial Brain Stimulation (Liu et al., CCS 2019), for Pang et al.'s Appendix C."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.base import (
    MAX_IMAGES,
    MAX_LR,
    MAX_MAGNITUDE,
    MAX_NEURONS,
    MAX_STEPS,
    SEED_RANGE,
    Check,
    Interval,
    OneOf,
)
from eviltwins.data import DatasetSpec, load_at, load_labels
from eviltwins.detectors.abs_remask import MASK_SIZES
from eviltwins.detectors.abs_reverse import reverse_candidates
from eviltwins.detectors.abs_schedule import CANDIDATE_SCHEDULES
from eviltwins.detectors.abs_stimulation import (
    STIMULATION_ELEMENTS,
    layer_output,
    low_high_split,
    stimulated,
    stimulation_levels,
)
from eviltwins.detectors.base import DETECTORS, InspectionReport, ModelInspector
from eviltwins.models import layer_or_feature_layer
from eviltwins.models.fold import fold_batchnorm
from eviltwins.models.layout import CHANNELS_LAST, channels_last
from eviltwins.models.precision import PRECISIONS, checked_precision, dtype_of
from eviltwins.models.rewrite import thin_conv_grads
from eviltwins.results import EvasionClaim, ShownMetric
from eviltwins.utils import (
    device_of,
    eval_mode,
    frozen_params,
    is_real,
    make_generator,
    progress,
)


@DETECTORS.register("abs")
class ABS(ModelInspector):
    """ABS: stimulate neurons, then reverse a trigger from the suspicious ones.

    Liu et al., CCS 2019, as the authors' code runs it:

    1. Stimulation: on ``seeds_per_class`` held-out images per class, each channel of
       ``layer`` (default: the model's feature layer) is set, over its whole map, to each of
       ``levels`` x the *layer's* largest activation on the seeds (0 included; one scalar for
       the layer, as the original ABS and TrojanZoo: :func:`stimulation_levels`), and the
       logits recorded.
    2. Elevation (step 2; the original and TrojanZoo's ``find_min_max``): per
       channel, seed image and label, the elevation is the label's maximum logit over the
       high stimulation levels minus its minimum over the low ones (levels sorted ascending;
       low = the first ``max(1, n // 5)``, high = the rest; see :func:`low_high_split`), not
       the raw maximum logit. Per channel and seed, the label (other than the seed's own)
       with the largest elevation, and its margin over the runner-up (own label excluded);
       channels that raise the same label on >= ``consistency`` (90%) of the seeds of other
       classes are ranked by their smallest margin, and the top ``top_k`` (10) kept
       (:meth:`candidates`).
    3. Reverse engineering, all candidates batched: a mask (1 x H x W) and pattern (tanh
       parameters, Adam lr ``lr``, ``steps`` steps) minimising, summed over the seed images
       and positions, -act(candidate) + 1e-4 x the other channels' activations + w x
       ||m||_1 (:func:`~eviltwins.detectors.abs_remask.remask_loss`), w = 0.01 while the
       mask is within the bound ``mask_bound`` x H x W, 500 above it, 1000 above 1.2x
       (``mask_size``: the mask's L1, default, or as the original ABS the count of its
       pixels above 0.01); in the second half 100 x the label's logit (summed) is subtracted
       too, as in the original code (:data:`~eviltwins.detectors.abs_remask.LOGIT_WEIGHT`).
       The penalty is soft, so each mask is then projected onto the bound
       (:func:`~eviltwins.detectors.abs_remask.project_mask`) before REASR; the report holds
       the projected masks.
    4. REASR: the share of other held-out images (not the seeds, label != candidate label) that
       the recovered trigger (projected mask) sends to the label; a label is flagged at
       REASR >= ``threshold`` (0.8).

    Speed (same method): step 1 runs the layers before ``layer`` once and only the layers
    after it per stimulated copy (checked on the first channel; ``details["stimulation"]``);
    step 3 runs in passes of at most 64 images, 128 in bfloat16, and step 4 in forwards of 128
    (fewer for images larger than 32 x 32, :mod:`~eviltwins.models.layout`); ``channels_last``
    and ``rewrites`` (batch norm folded, thin first convolution) as in :class:`NeuralCleanse`.
    ``schedule="k-arm"`` screens every candidate for ``screen_steps`` (a quarter of ``steps``)
    and finishes the ``keep`` best (:mod:`~eviltwins.detectors.abs_schedule`);
    ``seed_batch`` runs each step of 3 on that many seed images, a class-balanced batch, as
    the original code's re-mask mini-batches (default: every seed, as TrojanZoo);
    ``precision="bf16"`` runs the model under bfloat16 autocast (an approximation).

    A label without a candidate is untested: its entry in ``scores`` / ``anomaly`` is 0 by
    convention, not a measured REASR, ``details["label_reasr"]`` is None for it, it is missing
    from ``details["tested_labels"]``, and ``report.anomaly_of(label)`` is None. When no
    channel passes step 2 nothing is tested: ``details["no_candidate"]`` is True and the
    summary says "no candidate neuron". The sweep report plots the attack target's REASR
    (``target_anomaly``, blank when untested) and tabulates it beside the largest over labels.
    """

    name: ClassVar[str] = "abs"
    scan_measure: ClassVar[str] = "REASR"
    evasion_claim: ClassVar[EvasionClaim | None] = EvasionClaim(
        "abs-evaded",
        "target_anomaly",
        "ABS is evaded by TrojanNN* (lower target REASR, no label flagged)",
        "lower (App. C)",
    )
    report_metric: ClassVar[ShownMetric] = ShownMetric(
        "target_anomaly",
        "ABS REASR (target)",
        0.8,
        name="ABS",
        figures=("abs",),
        columns=(
            ("target_anomaly", "ABS REASR, target (blank: untested)"),
            ("max_anomaly", "ABS REASR, max (blank: no candidate)"),
            ("flagged", "ABS flagged labels"),
        ),
    )
    _constraints = {
        "seeds_per_class": Interval(int, 1, MAX_IMAGES),
        "levels": Check(
            lambda v: (
                isinstance(v, list | tuple)
                and 2 <= len(v) <= MAX_STEPS
                and all(is_real(a) and 0 <= a <= MAX_MAGNITUDE for a in v)
            ),
            f"a list of 2 to {MAX_STEPS} multiples in [0, {MAX_MAGNITUDE}]",
            bad=(1,),
        ),
        "top_k": Interval(int, 1, MAX_NEURONS),
        "consistency": Interval(float, 0, 1),
        "mask_bound": Interval(float, 0, 1, closed="right"),
        "mask_size": OneOf(*MASK_SIZES),
        "steps": Interval(int, 1, MAX_STEPS),
        "lr": Interval(float, 0, MAX_LR, closed="right"),
        "n_eval": Interval(int, 1, MAX_IMAGES),
        "threshold": Interval(float, 0, 1),
        "channels_last": CHANNELS_LAST,
        "rewrites": OneOf(True, False),
        "schedule": OneOf(*CANDIDATE_SCHEDULES),
        "screen_steps": Interval(int, 1, MAX_STEPS, allow_none=True),
        "keep": Interval(int, 1, MAX_NEURONS),
        "seed_batch": Interval(int, 1, MAX_IMAGES, allow_none=True),
        "precision": PRECISIONS,
        "seed": SEED_RANGE,
    }
    fast_params: ClassVar[dict[str, Any]] = {"steps": 10, "n_eval": 100, "top_k": 3}
    scan_params: ClassVar[dict[str, Any]] = {
        "schedule": "k-arm",
        "precision": "auto",
        "seed_batch": 50,
    }

    def __init__(
        self,
        layer: str | None = None,
        seeds_per_class: int = 5,
        levels: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
        top_k: int = 10,
        consistency: float = 0.9,
        mask_bound: float = 0.06,
        mask_size: str = "l1",
        steps: int = 200,
        lr: float = 0.1,
        n_eval: int = 1000,
        threshold: float = 0.8,
        channels_last: bool | None = None,
        rewrites: bool = True,
        schedule: str = "full",
        screen_steps: int | None = None,
        keep: int = 3,
        seed_batch: int | None = None,
        precision: str = "fp32",
        seed: int = 0,
        quiet: bool | None = None,
    ) -> None:
        self.layer = layer
        self.seeds_per_class = seeds_per_class
        self.levels = levels
        self.top_k = top_k
        self.consistency = consistency
        self.mask_bound = mask_bound
        self.mask_size = mask_size
        self.steps = steps
        self.lr = lr
        self.n_eval = n_eval
        self.threshold = threshold
        self.channels_last = channels_last
        self.rewrites = rewrites
        self.schedule = schedule
        self.screen_steps = screen_steps
        self.keep = keep
        self.seed_batch = seed_batch
        self.precision = precision
        self.seed = seed
        self.quiet = quiet

    def layer_of(self, model: nn.Module) -> str:
        """The layer ABS stimulates in ``model``: ``layer``, else the model's feature layer."""
        return layer_or_feature_layer(model, self.layer, self.quiet)

    def candidates(
        self, model: nn.Module, layer: str, xs: Tensor, ys: Tensor, num_classes: int
    ) -> list[tuple[int, int]]:
        """Steps 1-2 on seed images ``xs`` (labels ``ys``): the candidate (channel, label)
        pairs of ``layer``, best first (at most ``top_k``; empty when no channel qualifies).
        The model runs in eval mode without gradients and is left as it was."""
        self._validate_params()
        with eval_mode(model), frozen_params(model):
            return self._candidates(model, layer, xs, ys, num_classes)[0]

    def _inspect(self, model: nn.Module, data: DatasetSpec) -> InspectionReport:
        """ABS steps 1-4 (see the class docstring); the model is untouched."""
        layer = self.layer_of(model)
        start = time.perf_counter()
        g = make_generator(self.seed)
        dev = device_of(model)
        y_all = load_labels(data.test)  # images converted only for the seeds and REASR's
        perm = torch.randperm(len(y_all), generator=g)
        seed_idx = torch.cat(
            [perm[y_all[perm] == k][: self.seeds_per_class] for k in range(data.num_classes)]
        )
        rest = perm[~torch.isin(perm, seed_idx)][: self.n_eval]
        xs, ys = (t.to(dev) for t in load_at(data.test, seed_idx))
        xe, ye = (t.to(dev) for t in load_at(data.test, rest))
        with (
            eval_mode(model),
            frozen_params(model),
            channels_last(model, xs[:4], self.channels_last) as nhwc,
            fold_batchnorm(model, xs[:4], self.rewrites, keep=(layer,)) as n_folded,
            thin_conv_grads(model, xs[:4], self.rewrites) as n_thin,
        ):
            precision = checked_precision(model, xs[:4], self.precision)
            cands, elev, tail_only = self._candidates(model, layer, xs, ys, data.num_classes)
            dtype = dtype_of(precision)
            masks, patterns, rates, unfinished = reverse_candidates(
                self, model, layer, cands, (xs, ys), (xe, ye), g, dtype
            )
        k = data.num_classes
        best = torch.zeros(k)
        best_i = torch.full((k,), -1, dtype=torch.long)
        for i, (_, label) in enumerate(cands):
            if best_i[label] < 0 or rates[i] > best[label]:
                best[label], best_i[label] = rates[i], i
        c, h, w = data.shape
        out_m = torch.zeros(k, 1, h, w)
        out_p = torch.zeros(k, c, h, w)
        for label in range(k):
            if best_i[label] >= 0:
                out_m[label], out_p[label] = masks[best_i[label]], patterns[best_i[label]]
        flagged = [lab for lab in range(k) if best_i[lab] >= 0 and best[lab] >= self.threshold]
        tested = [lab for lab in range(k) if best_i[lab] >= 0]
        return InspectionReport(
            self.name,
            best.tolist(),
            best.tolist(),
            flagged,
            self.threshold,
            out_m,
            out_p,
            round(time.perf_counter() - start, 3),
            {
                "layer": layer,
                "no_candidate": not cands,
                "candidates": [[int(n), int(lab)] for n, lab in cands],
                "candidate_reasr": [float(r) for r in rates],
                "candidate_mask_l1": [float(v) for v in masks.sum(dim=(1, 2, 3))],
                "mask_bound_l1": self.mask_bound * h * w,
                "elevation": elev,
                "tested_labels": tested,
                "label_reasr": [float(best[lab]) if lab in tested else None for lab in range(k)],
                "labels": list(range(k)),
                "n_seeds": len(xs),
                "n_eval": len(xe),
                "channels_last": nhwc,
                "rewrites": {"fold_batchnorm": n_folded, "thin_conv_grads": n_thin},
                "precision": precision,
                "schedule": self.schedule,
                "unfinished_candidates": unfinished,
                "stimulation": "layers after the stimulated one" if tail_only else "whole model",
            },
            labels=list(range(k)),
        )

    def _candidates(
        self, model: nn.Module, layer: str, xs: Tensor, ys: Tensor, n_classes: int
    ) -> tuple[list[tuple[int, int]], list[float], bool]:
        """Steps 1-2: stimulation analysis and candidate selection (see the class docstring);
        returns the candidates, their robust margins and whether the stimulation ran only the
        layers after ``layer``
        (:func:`~eviltwins.detectors.abs_stimulation.stimulated`)."""
        base = layer_output(model, layer, xs)
        n_ch = base.shape[1]
        levels = stimulation_levels(base, self.levels)
        n_lv, n_s = len(levels), len(xs)
        n_low = low_high_split(n_lv)
        elev = torch.empty(n_ch, n_s, n_classes, device=xs.device)
        # channels per batched forward: the stimulated copies of the layer's output stay
        # within STIMULATION_ELEMENTS floats (and at most 4,096 images)
        per_image = base[0].numel()
        per = max(1, min(4096, STIMULATION_ELEMENTS // per_image) // (n_lv * n_s))
        tail_only = True  # run the layers before ``layer`` once, not once per copy
        bar = progress(total=n_ch, desc="abs stimulation", quiet=self.quiet)
        for c0 in range(0, n_ch, per):
            chans = torch.arange(c0, min(n_ch, c0 + per), device=xs.device)
            vals = levels.repeat(len(chans))  # (channel, level): the same levels for each
            logits = None
            if tail_only:
                logits = stimulated(model, layer, xs, chans, vals, n_lv, True, base)
                if logits is not None and c0 == 0:  # check the shortcut once (channel 0)
                    ref = stimulated(model, layer, xs, chans[:1], vals[:n_lv], n_lv, False)
                    if not torch.allclose(logits[: n_lv * n_s], ref, rtol=1e-4, atol=1e-4):
                        logits = None
                tail_only = logits is not None
            if logits is None:
                logits = stimulated(model, layer, xs, chans, vals, n_lv, expand=False)
            logits = logits.view(len(chans), n_lv, n_s, n_classes)
            # elevation = max over the high levels - min over the low levels (find_min_max)
            elev[chans] = logits[:, n_low:].amax(1) - logits[:, :n_low].amin(1)
            bar.update(len(chans))
        bar.close()
        # Elevated label per (channel, seed), excluding the seed's own label.
        own = torch.nn.functional.one_hot(ys, n_classes).bool()[None]
        e = elev.masked_fill(own, float("-inf"))
        top2 = e.topk(2, dim=2)
        label = top2.indices[..., 0]  # (n_ch, n_s)
        margin = top2.values[..., 0] - top2.values[..., 1]
        mode = label.mode(dim=1).values  # (n_ch,)
        eligible = ys[None] != mode[:, None]
        agree = ((label == mode[:, None]) & eligible).sum(1).float() / eligible.sum(1).clamp_min(1)
        robust = torch.where(
            eligible & (label == mode[:, None]), margin, torch.full_like(margin, float("inf"))
        ).amin(1)
        ok = agree >= self.consistency
        score = torch.where(ok, robust, torch.full_like(robust, float("-inf")))
        order = score.argsort(descending=True)[: self.top_k]
        cands = [(int(c), int(mode[c])) for c in order if torch.isfinite(score[c])]
        return cands, [float(score[c]) for c, _ in cands], tail_only

    def screen_at(self) -> int | None:
        """The step at which the ``k-arm`` schedule's screen ends (``screen_steps``, by default a
        quarter of ``steps``); None for the ``full`` schedule or a screen as long as ``steps``."""
        if self.schedule != "k-arm":
            return None
        at = self.screen_steps or max(1, self.steps // 4)
        return at if at < self.steps else None
