"""The benchmarked methods: how each is built (full or ``--quick`` budget), run and timed, which
passes its eager floor counts (:class:`~benchmarks.floors.Phase` lists, from the method's
parameters and, where the method decides how much it does, from its result), and its verdict.

Every method runs on the BadNet model (the detectors) or the clean model (the attacks) with the
target label 0. Floors per method (``n_s``: seed images, ``B``: batch size):

* ``nc`` NeuralCleanse (``imc`` preset, defaults): ``budget_steps()`` x fwd+bwd-to-input at
  ``n_labels x batch_size`` images (the full budget: early stopping counts as a gain).
* ``nc-serial``: the same, one label at a time (``benchmarks/detector_speed.py``'s loop):
  ``n_labels x budget_steps()`` x fwd+bwd-to-input at ``batch_size``.
* ``abs`` ABS (defaults): stimulation ``n_channels x n_levels x n_seeds`` forward images at the
  method's chunk (about 4,096 images); reverse engineering ``steps`` x fwd+bwd-to-input at
  ``n_candidates x n_s`` (``top_k`` before the run; the candidates it found after); REASR
  ``n_candidates`` forwards of the held-out images of other labels.
* ``strip`` / ``strip-original`` STRIP (``evaluate_filter``, 1,000 clean inputs): (calibration +
  clean + stamped evaluation inputs) x N overlay forwards at the overlay batch (2,048 / N
  inputs x N), plus the two prediction passes at 512.
* ``trojannn`` TrojanNN (defaults), ``imc`` TrojanNN* (IMC defaults): ``BackdoorAttack.fit``'s
  evaluations (benign accuracy, final ASR and accuracy: forwards at 512), neuron selection
  (forwards), trigger generation (fwd+bwd-to-input at 64), each re-training step (train at
  ``B``, or ``2B`` for the ``poison_share`` of batches that carry stamped copies) and each
  epoch's / outer iteration's evaluations; TrojanNN*'s trigger steps are fwd+bwd-to-input at
  the non-target rows of a batch. The epochs and outer iterations are those the result
  records (TrojanNN* stops at its efficacy goal: that is its result, not a speed-up).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.floors import Phase, sync
from eviltwins.data import DatasetSpec, load_all
from eviltwins.models import feature_tap

TARGET = 0
METHODS = ("nc", "nc-serial", "abs", "strip", "strip-original", "trojannn", "imc")
LABELS = {
    "nc": "NeuralCleanse",
    "nc-serial": "NeuralCleanse (serial)",
    "abs": "ABS",
    "strip": "STRIP (paper)",
    "strip-original": "STRIP (original)",
    "trojannn": "TrojanNN",
    "imc": "TrojanNN*",
}
DETECTORS = ("nc", "nc-serial", "abs", "strip", "strip-original")
STRIP_CLEAN = {False: 1000, True: 50}


@dataclass
class Context:
    """What a row works on: the model (BadNet for detectors, clean for attacks), the dataset,
    the BadNet trigger (for STRIP), the device and whether budgets are ``--quick``."""

    model: nn.Module
    spec: DatasetSpec
    trigger: Any
    device: torch.device
    quick: bool

    @property
    def test_labels(self) -> Tensor:
        return labels_of(self.spec.test)


def labels_of(ds: Any) -> Tensor:
    """The labels of a dataset, without converting its images when it holds them as tensors."""
    labels = getattr(ds, "labels", None)
    return labels if isinstance(labels, Tensor) else load_all(ds)[1]


def build(method: str, quick: bool) -> Any:
    """The estimator of ``method`` at its default parameters (or ``--quick``'s budgets)."""
    from eviltwins.attacks import IMC, TrojanNN
    from eviltwins.detectors import ABS, STRIP, NeuralCleanse

    if method in ("nc", "nc-serial"):
        if quick:
            return NeuralCleanse(steps=5, n_inputs=32, batch_size=8, quiet=True)
        return NeuralCleanse(quiet=True)
    if method == "abs":
        if quick:
            return ABS(steps=5, seeds_per_class=1, top_k=3, n_eval=50, quiet=True)
        return ABS(quiet=True)
    if method in ("strip", "strip-original"):
        return STRIP(variant="original" if method == "strip-original" else "imc")
    if method == "trojannn":
        quick_kw = dict(epochs=1, max_steps=5, trigger_steps=3)
        return TrojanNN(quiet=True, **(quick_kw if quick else {}))
    if method == "imc":
        quick_kw = dict(
            outer_iters=1, retrain_steps=5, trigger_steps=3, init_trigger_steps=3, monitor_size=100
        )
        return IMC(quiet=True, **(quick_kw if quick else {}))
    raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")


def run(method: str, est: Any, ctx: Context) -> tuple[Any, float]:
    """Run ``est`` as the row times it (the detector's inspect / filter fit+score, the attack's
    fit); returns the result and the wall time (s), the device synchronised."""
    from eviltwins.detectors import evaluate_filter

    sync(ctx.device)
    start = time.perf_counter()
    if method == "nc-serial":
        from benchmarks.detector_speed import nc_one_label_at_a_time

        kw = {k: getattr(est, k) for k in ("preset", "steps", "n_inputs", "epochs", "quiet")}
        result: Any = nc_one_label_at_a_time(ctx.model, ctx.spec, **kw)
    elif method in ("nc", "abs"):
        result = est.inspect(ctx.model, ctx.spec)
    elif method.startswith("strip"):
        result = evaluate_filter(
            est, ctx.model, ctx.spec, ctx.trigger, TARGET, n_clean=STRIP_CLEAN[ctx.quick]
        )
    else:
        result = est.fit(ctx.model, ctx.spec)
    sync(ctx.device)
    return result, time.perf_counter() - start


def _nc_batch(est: Any, ctx: Context) -> int:
    from eviltwins.detectors.neural_cleanse import PRESETS

    n_inputs = est.n_inputs or PRESETS[est.preset]["n_inputs"]
    return max(1, min(est.batch_size, n_inputs, len(ctx.spec.test)))


def _abs_phases(est: Any, ctx: Context, result: Any) -> list[Phase]:
    k = ctx.spec.num_classes
    y = ctx.test_labels
    n_s = sum(min(est.seeds_per_class, int((y == c).sum())) for c in range(k))
    layer = est.layer_of(ctx.model)
    x1 = load_all(ctx.spec.test, limit=1)[0].to(ctx.device)
    with torch.no_grad(), feature_tap(ctx.model, layer) as tap:
        ctx.model(x1)
    n_ch, n_lv = tap["out"].shape[1], len(est.levels)
    per = max(1, 4096 // (n_lv * n_s))
    stim_total = n_ch * n_lv * n_s
    stim_batch = min(stim_total, per * n_lv * n_s)
    n_cand = est.top_k if result is None else len(result.details["candidates"])
    n_eval = min(est.n_eval, len(y) - n_s)
    eval_batch = max(1, round(n_eval * (1 - 1 / k)))
    return [
        Phase("seed forward", "fwd", n_s, 1),
        Phase("stimulation", "fwd", stim_batch, stim_total / stim_batch),
        Phase("reverse engineering", "bwd_input", max(1, n_cand * n_s), est.steps if n_cand else 0),
        Phase("REASR", "fwd", eval_batch, n_cand),
    ]


def _strip_phases(est: Any, ctx: Context) -> list[Phase]:
    from eviltwins.detectors.evaluation import split_filter_data
    from eviltwins.detectors.strip import VARIANTS

    y = ctx.test_labels
    _, evaluated, _ = split_filter_data(ctx.spec, STRIP_CLEAN[ctx.quick])  # as evaluate_filter
    n_clean = len(evaluated)
    n_stamped = int((y[evaluated] != TARGET).sum())

    n = est.n_overlays or VARIANTS[est.variant]["n_overlays"]
    batch = max(1, 2048 // n) * n
    overlays = (2 * n_clean + n_stamped) * n
    return [
        Phase("overlay forwards", "fwd", batch, overlays / batch),
        Phase("predictions", "fwd", 512, (n_clean + n_stamped) / 512),
    ]


def _attack_phases(method: str, est: Any, ctx: Context, result: Any) -> list[Phase]:
    spec = ctx.spec
    n_test, n_train = len(spec.test), len(spec.train)
    y_test = ctx.test_labels
    n_nt = int((y_test != TARGET).sum())
    nt_share = float((labels_of(spec.train) != TARGET).float().mean())
    b, share = est.batch_size, est.poison_share
    n_batches = -(-n_train // b)
    gen_steps = est.trigger_steps if method == "trojannn" else est.init_trigger_steps
    phases = [
        Phase("benign + final evaluation", "fwd", 512, (2 * n_test + n_nt) / 512),
        Phase("neuron response", "fwd", min(16, n_train), 2),
        Phase("neuron selection", "fwd", min(1024, n_train), 1),
        Phase("trigger generation", "bwd_input", min(64, n_train), gen_steps),
        Phase("trigger activations", "fwd", min(64, n_train), 2),
    ]
    if method == "trojannn":
        steps = est.epochs * n_batches
        if est.max_steps is not None:
            steps = min(steps, est.max_steps)
        epochs = -(-steps // n_batches) if result is None else len(result.history)
        per_epoch = (n_test + n_nt) / 512
        return phases + [
            Phase("re-training", "train", b, steps * (1 - share)),
            Phase("re-training (stamped copies)", "train", 2 * b, steps * share),
            Phase("epoch evaluation", "fwd", 512, epochs * per_epoch),
        ]
    per_iter = est.retrain_steps or n_batches
    if result is None:
        iters = est.outer_iters
        steps = iters * per_iter
        if est.max_steps is not None:
            steps = min(steps, est.max_steps)
    else:
        iters, steps = len(result.history), result.extra["retrain_steps_total"]
    mon = min(est.monitor_size, n_train)
    return phases + [
        Phase("monitor (benign)", "fwd", 512, mon / 512),
        Phase(
            "trigger steps",
            "bwd_input",
            max(1, round(b * nt_share)),
            iters * (per_iter if est.trigger_steps is None else est.trigger_steps),
        ),
        Phase("re-training", "train", b, steps * (1 - share)),
        Phase("re-training (stamped copies)", "train", 2 * b, steps * share),
        Phase("monitor", "fwd", 512, iters * mon * (1 + nt_share) / 512),
    ]


def phases(method: str, est: Any, ctx: Context, result: Any = None) -> list[Phase]:
    """The passes of ``method``'s eager floor (see the module docstring); ``result``: after the
    run, for the counts the method decides (ABS candidates, attack epochs / iterations)."""
    n_labels = ctx.spec.num_classes
    if method == "nc":
        batch = n_labels * _nc_batch(est, ctx)
        return [Phase("reverse engineering", "bwd_input", batch, est.budget_steps())]
    if method == "nc-serial":
        count = n_labels * est.budget_steps()
        return [Phase("reverse engineering", "bwd_input", _nc_batch(est, ctx), count)]
    if method == "abs":
        return _abs_phases(est, ctx, result)
    if method.startswith("strip"):
        return _strip_phases(est, ctx)
    return _attack_phases(method, est, ctx, result)


def verdict(method: str, result: Any) -> tuple[str, bool | None, dict[str, Any]]:
    """The row's verdict line, whether it is the expected one (detectors: label 0 flagged;
    None where nothing is expected) and the figures behind it."""
    if method == "nc-serial":
        from eviltwins.metrics import anomaly_index

        flagged, norms = result
        idx = [float(a) for a in anomaly_index(norms)]
        details = {"flagged": flagged, "l1": [float(n) for n in norms], "anomaly": idx}
        return _flag_line(flagged, "index", idx[TARGET]), TARGET in flagged, details
    if method in ("nc", "abs"):
        key = "index" if method == "nc" else "REASR"
        score = result.anomaly[TARGET]
        details = {"flagged": result.flagged, "anomaly": result.anomaly}
        if method == "nc":
            details.update(steps=result.details.get("steps"))
        else:
            details.update(candidates=result.details.get("candidates"))
        return _flag_line(result.flagged, key, score), TARGET in result.flagged, details
    if method.startswith("strip"):
        m = result.to_dict()["metrics"]
        f1, auc = m.get("f1"), m.get("auc")
        return f"F1 {_fmt(f1)}, AUC {_fmt(auc)}", None, {"metrics": m}
    m = result.metrics
    line = (
        f"ASR {m['asr']:.3f}, efficacy {m['efficacy']:.3f}, acc drop {100 * m['acc_drop']:.2f} pt"
    )
    details = {"metrics": m, "history_len": len(result.history)}
    if "retrain_steps_total" in result.extra:
        details["retrain_steps_total"] = result.extra["retrain_steps_total"]
    return line, None, details


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _flag_line(flagged: list[int], key: str, target_score: float) -> str:
    if flagged == [TARGET]:
        return f"label {TARGET} ({key} {target_score:.2f})"
    what = "none" if not flagged else ", ".join(str(k) for k in flagged)
    return f"flagged {what}; label {TARGET} {key} {target_score:.2f}"
