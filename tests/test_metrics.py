"""Metrics against references: sklearn for AUC/F1, plain numpy for the MAD rule, and a
hand-checked toy model for ASR (computed over non-target inputs only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from torch import nn

from eviltwins.data import TensorImageDataset
from eviltwins.errors import DataError
from eviltwins.metrics import anomaly_index, attack_metrics, detection_metrics, roc_auc
from eviltwins.triggers import Trigger


class CornerModel(nn.Module):
    """Predicts class 0 when the bottom-right pixel is bright, else the image's 'true' class
    encoded in the top-left pixel (value * 10)."""

    def forward(self, x):
        n = len(x)
        cls = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 9)
        logits = torch.full((n, 10), -10.0)
        logits[torch.arange(n), cls] = 10.0
        bright = x[:, 0, -1, -1] > 0.5
        logits[bright] = -10.0
        logits[bright, 0] = 10.0
        return logits


def test_asr_counts_only_non_target_inputs():
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    x = torch.zeros(6, 1, 5, 5)
    x[:, 0, 0, 0] = labels.float() / 10
    ds = TensorImageDataset(x, labels)
    m = attack_metrics(CornerModel(), ds, Trigger.square((1, 5, 5), 0.2), target=0)
    assert m["n_attack"] == 4 and m["asr"] == 1.0
    assert m["efficacy"] == pytest.approx(1.0, abs=1e-6)
    dim = Trigger.square((1, 5, 5), 0.2, transparency=0.6)  # 0.4 < 0.5: no trigger effect
    m = attack_metrics(CornerModel(), ds, dim, target=0)
    assert m["asr"] == 0.0 and m["n_attack"] == 4


def test_anomaly_index_matches_numpy_mad():
    norms = np.array([50.0, 48, 52, 47, 55, 51, 10, 49, 53, 50])
    idx = anomaly_index(norms)
    med = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - med))
    assert idx[6] == pytest.approx((med - 10) / mad)
    assert idx[6] > 2 and (np.delete(idx, 6) <= 2).all()
    assert (idx[norms >= med] == 0).all()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 1e3), min_size=3, max_size=20), st.floats(0.01, 100))
def test_anomaly_index_is_scale_invariant(norms, scale):
    a = anomaly_index(norms)
    b = anomaly_index(np.asarray(norms) * scale)
    finite = np.isfinite(a)
    assert np.allclose(a[finite], b[finite], rtol=1e-6, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-100, 100).map(lambda v: round(v, 3)), min_size=4, max_size=60),
    st.integers(0, 2**31),
)
def test_auc_matches_sklearn_and_is_rank_based(scores, seed):
    s = np.asarray(scores)
    rng = np.random.default_rng(seed)
    t = rng.random(len(s)) < 0.5
    if t.all() or not t.any():
        t[0], t[-1] = True, False
    assert roc_auc(s, t) == pytest.approx(roc_auc_score(t, s))
    assert roc_auc(np.exp(s / 50), t) == pytest.approx(roc_auc(s, t))  # monotone map
    assert roc_auc(-s, t) == pytest.approx(1 - roc_auc(s, t))


def test_detection_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    t = rng.random(200) < 0.4
    d = np.where(rng.random(200) < 0.8, t, ~t)
    m = detection_metrics(d, t, scores=d.astype(float) + rng.random(200) * 0.1)
    assert m["f1"] == pytest.approx(f1_score(t, d))
    assert m["precision"] == pytest.approx(precision_score(t, d))
    assert m["recall"] == pytest.approx(recall_score(t, d))
    assert m["frr"] == pytest.approx((d & ~t).sum() / (~t).sum())
    assert m["far"] == pytest.approx((~d & t).sum() / t.sum())
    assert 0.5 < m["auc"] <= 1.0


# --- a scanner over a population of models (TrojAI / Trojan Detection Challenge metrics) ---
def test_population_scores_by_hand():
    from eviltwins.metrics import population_scores

    s = population_scores([0.9, 0.8, 0.3, 0.2], [True, False, True, False])
    assert s["auc"] == pytest.approx(0.75)  # 3 of the 4 (trojaned, clean) pairs in order
    ce = -(math.log(0.9) + math.log(0.2) + math.log(0.3) + math.log(0.8)) / 4
    assert s["cross_entropy"] == pytest.approx(ce)
    assert s["brier"] == pytest.approx((0.01 + 0.64 + 0.49 + 0.04) / 4)
    assert s["fpr_at_tpr"] == 0.5  # flagging both trojaned models (p >= 0.3) flags 0.8 too
    assert s["tpr_at_fpr"] == 0.5  # flagging no clean model (p > 0.8) finds one of two
    assert (s["n_trojaned"], s["n_clean"]) == (2, 2)


def test_population_scores_agree_with_scikit_learn():
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve

    from eviltwins.metrics import population_scores

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    p = np.clip(0.5 + 0.3 * (y - 0.5) + 0.2 * rng.standard_normal(200), 0.01, 0.99).round(2)
    s = population_scores(p, y)
    assert s["auc"] == pytest.approx(roc_auc_score(y, p))
    assert s["cross_entropy"] == pytest.approx(log_loss(y, p))
    assert s["brier"] == pytest.approx(brier_score_loss(y, p))
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    assert s["fpr_at_tpr"] == pytest.approx(fpr[tpr >= 0.95].min())
    assert s["tpr_at_fpr"] == pytest.approx(tpr[fpr <= 0.05].max())


def test_population_cross_entropy_is_clipped_and_bad_probabilities_refused():
    from eviltwins.metrics import population_scores

    half = population_scores([0.5] * 4, [True, False, True, False])
    assert half["cross_entropy"] == pytest.approx(math.log(2))  # TrojAI's target is half of it
    assert half["auc"] == 0.5 and half["fpr_at_tpr"] == 1.0 and half["tpr_at_fpr"] == 0.0
    wrong = population_scores([0.0, 1.0], [True, False])  # confidently wrong on both
    assert wrong["cross_entropy"] == pytest.approx(-math.log(1e-12))
    one_kind = population_scores([0.7, 0.9], [True, True])
    assert math.isnan(one_kind["auc"]) and math.isnan(one_kind["fpr_at_tpr"])
    for bad in ([1.2, 0.1], [math.nan, 0.1], [0.5]):
        with pytest.raises(DataError):
            population_scores(bad, [True, False])
