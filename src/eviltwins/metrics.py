"""Metrics (the pure core; one home for each).

Attack side (Pang et al., CCS 2020, Section 5.1): attack success rate over non-target inputs, attack
efficacy (mean target probability on those stamped inputs: Fig. 10's "misclassification
confidence"), clean accuracy and its drop, mask L1. Detector side: the MAD anomaly index of
NeuralCleanse, and F1 / precision / recall / FRR / FAR and ROC AUC, where AUC always comes from
continuous scores. Scanner side (:func:`population_scores`): a scanner's p(trojan) over a
population of models, scored as the TrojAI rounds and the Trojan Detection Challenge score it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from eviltwins.batches import iter_batches
from eviltwins.errors import DataError
from eviltwins.utils import device_of, eval_mode, nonfinite_outputs_message


class Stamper(Protocol):
    """What the attack metrics need of a trigger (:class:`eviltwins.triggers.Trigger` is one):
    a copy on a device, and stamping a batch of images."""

    def to(self, device: torch.device) -> Stamper: ...

    def stamp(self, x: Tensor) -> Tensor: ...


@torch.no_grad()
def attack_metrics(
    model: nn.Module, dataset: Dataset, trigger: Stamper, target: int, batch_size: int = 512
) -> dict[str, float]:
    """ASR and efficacy of ``trigger`` on ``dataset``, over inputs whose true label != target.

    Returns ``asr`` (fraction classified as ``target`` after stamping), ``efficacy`` (mean
    softmax probability of ``target`` on the same stamped inputs) and ``n_attack`` (how many).
    Non-finite outputs raise :class:`~eviltwins.errors.DataError` instead of counting a NaN
    row's argmax (class 0) as a hit.
    """
    device = device_of(model)
    trig = trigger.to(device)
    hits, prob, n = 0, 0.0, 0
    bad = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for x, y in iter_batches(dataset, batch_size, device=device):
            keep = y != target
            if not keep.any():
                continue
            logits = model(trig.stamp(x[keep])).float()
            bad += (~torch.isfinite(logits)).any(1).sum()
            p = torch.softmax(logits, dim=1)
            hits += int((p.argmax(1) == target).sum())
            prob += float(p[:, target].sum())
            n += int(keep.sum())
    if int(bad):
        raise DataError(nonfinite_outputs_message(f"{int(bad)} of {n} stamped"))
    if n == 0:
        return {"asr": float("nan"), "efficacy": float("nan"), "n_attack": 0.0}
    return {"asr": hits / n, "efficacy": prob / n, "n_attack": float(n)}


def attack_success_rate(model: nn.Module, dataset: Dataset, trigger: Stamper, target: int) -> float:
    """Fraction of non-target test inputs that the stamped trigger sends to ``target``."""
    return attack_metrics(model, dataset, trigger, target)["asr"]


def mask_l1(mask: Tensor) -> float:
    """||m||_1 (fidelity)."""
    return float(mask.detach().abs().sum())


def anomaly_index(norms: Sequence[float] | Tensor | np.ndarray) -> np.ndarray:
    """NeuralCleanse's MAD outlier index per label (Wang et al., S&P 2019, Section IV-C).

    M = median(norms); MAD = 1.4826 * median(|norms - M|); index_y = (M - norm_y) / MAD for
    labels below the median, 0 for the others (only abnormally *small* triggers count).
    """
    a = np.asarray(norms, dtype=np.float64)
    med = float(np.median(a))
    mad = 1.4826 * float(np.median(np.abs(a - med)))
    idx = (med - a) / mad if mad > 0 else np.where(a < med, np.inf, 0.0)
    return np.where(a < med, idx, 0.0)


def roc_auc(
    scores: Sequence[float] | Tensor | np.ndarray, is_positive: Sequence[bool] | Tensor | np.ndarray
) -> float:
    """ROC AUC from continuous scores (higher = more suspicious), the Mann-Whitney U
    statistic over positives vs negatives; ties count one half."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(is_positive, dtype=bool)
    pos, neg = s[t], s[~t]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from scipy.stats import rankdata  # here, not at import: scipy.stats costs ~60 MB

    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def detection_metrics(
    decisions: Sequence[bool] | Tensor | np.ndarray,
    is_positive: Sequence[bool] | Tensor | np.ndarray,
    scores: Sequence[float] | Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """F1, precision, recall, FRR (clean inputs flagged), FAR (triggered inputs passed) from
    0/1 decisions, and ROC AUC from continuous ``scores`` when given."""
    d = np.asarray(decisions, dtype=bool)
    t = np.asarray(is_positive, dtype=bool)
    tp = int((d & t).sum())
    fp = int((d & ~t).sum())
    fn = int((~d & t).sum())
    tn = int((~d & ~t).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "frr": fp / (fp + tn) if fp + tn else math.nan,
        "far": fn / (fn + tp) if fn + tp else math.nan,
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "tn": float(tn),
    }
    if scores is not None:
        out["auc"] = roc_auc(scores, t)
    return out


#: TrojAI's clipping of p(trojan) before the cross-entropy (its ``binary_cross_entropy``,
#: epsilon 1e-12): a confident wrong answer costs -ln(1e-12) = 27.6 nats, not infinity.
CE_EPSILON = 1e-12


def roc_curve(
    scores: Sequence[float] | Tensor | np.ndarray, is_trojaned: Sequence[bool] | Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve (FPR, TPR) of per-model ``scores``: every distinct score as a threshold
    (flags scores >= it), from one above all (nothing flagged) down to the lowest (all)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(is_trojaned, dtype=bool).reshape(-1)
    thresholds = np.append(np.inf, np.unique(s)[::-1])
    flagged = s[None, :] >= thresholds[:, None]  # (thresholds, models)
    return (flagged & ~y).sum(1) / max(1, int((~y).sum())), (flagged & y).sum(1) / max(
        1, int(y.sum())
    )


def rank_scores(
    scores: Sequence[float] | Tensor | np.ndarray,
    is_trojaned: Sequence[bool] | Tensor | np.ndarray,
    tpr_at: float = 0.95,
    fpr_at: float = 0.05,
) -> dict[str, float]:
    """How well any per-model ``scores`` (higher = more suspicious: a probability, an anomaly
    index, a REASR) rank trojaned models above clean ones:

    - ``auc``: ROC AUC (:func:`roc_auc`; ties count one half);
    - ``fpr_at_tpr``: the smallest share of clean models flagged by a threshold that flags at
      least ``tpr_at`` (0.95) of the trojaned ones (the Trojan Detection Challenge's FPR at 95%
      TPR); ``tpr_at_fpr``: the largest share of trojaned models flagged by a threshold that
      flags at most ``fpr_at`` (0.05) of the clean ones. A threshold flags scores >= it; every
      distinct score is tried, and one above all (nothing flagged);
    - ``n_trojaned``, ``n_clean``.

    The rates are NaN when one kind of model is missing; a score that is not finite is
    refused with a :class:`~eviltwins.errors.DataError`."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(is_trojaned, dtype=bool).reshape(-1)
    if len(s) != len(y):
        raise DataError(f"{len(s)} scores for {len(y)} models")
    if not np.all(np.isfinite(s)):
        raise DataError("every model needs a finite score")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out = {
        "auc": roc_auc(s, y),
        "fpr_at_tpr": math.nan,
        "tpr_at_fpr": math.nan,
        "n_trojaned": float(n_pos),
        "n_clean": float(n_neg),
    }
    if n_pos and n_neg:
        fpr, tpr = roc_curve(s, y)
        out["fpr_at_tpr"] = float(fpr[tpr >= tpr_at].min())
        out["tpr_at_fpr"] = float(tpr[fpr <= fpr_at].max())
    return out


def population_scores(
    p_trojan: Sequence[float] | Tensor | np.ndarray,
    is_trojaned: Sequence[bool] | Tensor | np.ndarray,
    tpr_at: float = 0.95,
    fpr_at: float = 0.05,
) -> dict[str, float]:
    """A scanner's probabilities ``p_trojan`` (one per model, in [0, 1]) against the truth
    ``is_trojaned``, as the field scores scanners on populations of models: the ranking
    figures of :func:`rank_scores` (``auc``, ``fpr_at_tpr``, ``tpr_at_fpr``, counts) and

    - ``cross_entropy``: mean -[y ln p + (1 - y) ln(1 - p)] with p clipped to
      [``CE_EPSILON``, 1 - ``CE_EPSILON``] (the TrojAI rounds' metric; their target 0.3465 is
      ln(2) / 2: half the cross-entropy of answering 0.5 for every model);
    - ``brier``: mean (p - y)^2.

    A probability outside [0, 1] or not finite is refused with a
    :class:`~eviltwins.errors.DataError`."""
    p = np.asarray(p_trojan, dtype=np.float64).reshape(-1)
    y = np.asarray(is_trojaned, dtype=bool).reshape(-1)
    out = rank_scores(p, y, tpr_at, fpr_at)
    if np.any((p < 0) | (p > 1)):
        raise DataError("p(trojan) must be in [0, 1] for every model")
    q = np.clip(p, CE_EPSILON, 1 - CE_EPSILON)
    ce = -(y * np.log(q) + (~y) * np.log1p(-q))
    out["cross_entropy"] = float(ce.mean()) if len(p) else math.nan
    out["brier"] = float(((p - y) ** 2).mean()) if len(p) else math.nan
    return out


def prediction_entropy(logits: Tensor, base: float = math.e) -> Tensor:
    """Shannon entropy of softmax(logits) per row, in nats (``base=e``) or bits (``base=2``);
    differentiable (IMC's STRIP evasion maximises it; STRIP thresholds it)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    return h / math.log(base) if base != math.e else h
