"""SCALE-UP (Guo et al., ICLR 2023): the input filter on the planted digits backdoor, its SPC
arithmetic on a hand-checkable model, its calibration, and IMC's evasion term against it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from eviltwins.data import load_all
from eviltwins.detectors import DETECTORS, ScaleUp, evaluate_filter
from eviltwins.detectors.base import quantile_threshold
from eviltwins.detectors.scale_up import (
    SCALES,
    scale_up_copies,
    scaled_predictions,
    spc,
)
from eviltwins.errors import NotFittedError, ParamError
from eviltwins.evasion import EVASIONS, ModelStep, StepOutputs


def test_scale_up_separates_badnet_stamped_inputs(digits_badnet, digits_spec):
    """The authors' protocol on the BadNet digits model: stamped inputs keep the target label
    under amplification more often than clean inputs keep theirs. Measured: AUC 0.68, 93% of
    the stamped inputs flagged vs 64% of the clean ones (digits are nearly binary strokes, so
    amplifying a clean digit mostly keeps its label: the gap is smaller than on natural
    images)."""
    bad = digits_badnet
    rep = evaluate_filter(ScaleUp(), bad.model, digits_spec, bad.trigger, bad.target, n_clean=180)
    m = rep.metrics
    assert rep.n_triggered > 100 and rep.n_clean > 100
    assert m["auc"] >= 0.6
    assert m["recall"] >= m["frr"] + 0.15  # flagged share: triggered vs clean
    assert rep.score_triggered_mean > rep.score_clean_mean + 0.15
    # the paper's fixed rule, recorded as used
    d = rep.details
    assert d["scales"] == [3.0, 5.0, 7.0, 9.0, 11.0] and d["threshold_rule"] == "fixed"
    assert d["threshold"] == rep.threshold == 0.5 and d["fpr"] is None
    assert d["score"] == "spc" and d["n_calibration"] == 180


def test_scale_up_does_not_flag_stamps_on_a_clean_model(digits_clean, digits_spec, digits_badnet):
    """Without a backdoor the stamp does not make an input keep its label (the paper's
    benign-model behaviour): stamped inputs are flagged no more than clean ones. Measured:
    all-stamped AUC 0.49, 69% of the stamped inputs flagged vs 73% of the clean ones."""
    res, _ = digits_clean
    trig = digits_badnet.trigger
    rep = evaluate_filter(ScaleUp(), res.model, digits_spec, trig, 0, n_clean=180)
    m = rep.all_stamped["metrics"]
    assert m["auc"] <= 0.6
    assert m["recall"] <= m["frr"] + 0.1


class MeanModel(nn.Module):
    """Label = the class whose centre (0, 0.5, 1) is nearest to the input's mean pixel:
    class 0 below 0.25, class 1 in [0.25, 0.75), class 2 above. Counts its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.tensor([0.0, 0.5, 1.0]), requires_grad=False)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return -(x.mean((1, 2, 3))[:, None] - self.centres).abs()


def _images() -> torch.Tensor:
    """Four 1x4x4 images whose SPC over N = (3, 5, 7, 9, 11) is worked out by hand."""
    a = torch.full((1, 4, 4), 0.04)  # mean .04 (0); x3 .12 (0), x5 .2 (0), x7.. .28+ (1)
    b = torch.full((1, 4, 4), 0.3)  # mean .3 (1); x3 .9 (2), x5.. 1 (2)
    c = torch.zeros(1, 4, 4)
    c[:, :2] = 1.0  # half 1, half 0: mean .5 (1); clipped copies keep .5 (1)
    d = torch.zeros(1, 4, 4)
    d[:, :2] = 0.12  # mean .06 (0); x3 .18 (0), x5 .3 (1), x7 .42, x9/x11 clipped to .5 (1)
    return torch.stack([a, b, c, d])


def test_spc_arithmetic_on_a_hand_checked_model():
    model = MeanModel()
    x = _images()
    preds = scaled_predictions(model, x, SCALES)
    assert model.calls == [4 * 6]  # inputs and all their amplified copies: one forward
    assert preds.tolist() == [
        [0, 0, 0, 1, 1, 1],
        [1, 2, 2, 2, 2, 2],
        [1, 1, 1, 1, 1, 1],  # without the clip: x3 -> mean 1.5 (2), SPC 0
        [0, 0, 1, 1, 1, 1],
    ]
    assert spc(preds).tolist() == [2 / 5, 0.0, 1.0, 1 / 5]
    det = ScaleUp().fit(model, x)
    assert det.score(x).tolist() == [0.4, 0.0, 1.0, 0.2]
    assert det.detect(x).tolist() == [False, False, True, False]  # SPC > T = 0.5
    # a smaller set: only the x3 copy of image 0 keeps class 0
    assert ScaleUp(scales=(3,)).fit(model, x).score(x).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_data_limited_normalisation_by_predicted_class():
    """standardize=True: (SPC - mu_c) / sigma_c over the calibration inputs labelled c
    (unbiased sigma); class 2 has no calibration input and takes the pooled statistics."""
    model, x = MeanModel(), _images()
    det = ScaleUp(standardize=True).fit(model, x)
    mu0, s0 = 0.3, math.sqrt(0.02)  # class 0: SPC .4 and .2
    mu1, s1 = 0.5, math.sqrt(0.5)  # class 1: SPC 0 and 1
    expect = [(0.4 - mu0) / s0, (0.0 - mu1) / s1, (1.0 - mu1) / s1, (0.2 - mu0) / s0]
    assert det.score(x).tolist() == pytest.approx(expect)
    pooled = torch.tensor([0.4, 0.0, 1.0, 0.2], dtype=torch.float64)
    bright = torch.full((1, 1, 4, 4), 0.9)  # class 2, every copy class 2: SPC 1
    z = (1.0 - pooled.mean()) / pooled.std()
    assert det.score(bright).tolist() == pytest.approx([float(z)])
    d = det.evaluate(x[:2], x[2:])
    assert d.details["score"] == "spc z-score in the predicted class"
    assert d.details["class_mean"] == pytest.approx([mu0, mu1])


def test_quantile_threshold_comes_from_the_fit_inputs_only(digits_badnet, digits_spec):
    model, trig = digits_badnet.model, digits_badnet.trigger
    x, y = load_all(digits_spec.test)
    fit_x, rest, rest_y = x[:100], x[100:], y[100:]
    det = ScaleUp(threshold="quantile").fit(model, fit_x)
    own = det.calibration_scores_
    assert torch.equal(own, det.score(fit_x))
    # mirrored STRIP rule: the 0.95 empirical quantile, at most 5% of fit scores above it
    assert det.threshold_ == -quantile_threshold(-own, 0.05)
    assert (own > det.threshold_).double().mean() <= 0.05
    assert (own >= det.threshold_).double().mean() > 0.05
    thr = det.threshold_
    first = det.evaluate(rest[:40], trig.stamp(rest[:40][rest_y[:40] != 0]))
    second = det.evaluate(rest[40:80], trig.stamp(rest[40:80]))
    assert first.threshold == second.threshold == det.threshold_ == thr
    assert first.details["threshold_rule"] == "quantile" and first.details["fpr"] == 0.05
    # another calibration set gives its own quantile; the fixed rule never moves
    other = ScaleUp(threshold="quantile", fpr=0.5).fit(model, rest[:100])
    assert other.threshold_ == -quantile_threshold(-other.calibration_scores_, 0.5)
    assert ScaleUp().fit(model, x[:10]).threshold_ == ScaleUp().fit(model, x[10:20]).threshold_
    assert ScaleUp().fit(model, x[:10]).threshold_ == 0.5


def test_registration_params_and_refusals():
    assert DETECTORS.get("scale-up") is ScaleUp and ScaleUp.name == "scale-up"
    assert ScaleUp.evasion_claim is None and ScaleUp.report_metric.key == "f1"
    with pytest.raises(NotFittedError):
        ScaleUp().score(_images())
    with pytest.raises(ParamError, match="'scales' parameter of ScaleUp"):
        ScaleUp(scales=(3, -1)).fit(MeanModel(), _images())
    with pytest.raises(ParamError, match="'scales' parameter of ScaleUp"):
        ScaleUp(scales=()).fit(MeanModel(), _images())


def test_evasion_term_amplifies_stamped_copies_only():
    term = EVASIONS.create("scale-up")
    assert term.name == "scale-up" and term.default_weight == 0.6 and term.doc
    assert term.trigger_loss is None and term.refresh is None and term.model_tap is None
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(7, 1, 8, 8, generator=g) * 0.3
    stamped = clean.clone()
    stamped[:, :, -2:, -2:] = 1.0
    rows = term.model_inputs(stamped, clean, None)
    assert rows.shape == stamped.shape
    n = torch.tensor([SCALES[i % len(SCALES)] for i in range(7)], dtype=torch.float32)
    assert torch.equal(rows, (stamped * n.view(-1, 1, 1, 1)).clamp(0, 1))
    # the rows come from the stamped copies alone: other clean rows give the same rows
    assert torch.equal(term.model_inputs(stamped, torch.rand(7, 1, 8, 8, generator=g)), rows)
    assert (rows[:, :, -2:, -2:] == 1).all()  # every row carries the trigger
    assert scale_up_copies(stamped[:0], clean[:0]) is None
    # through IMC's model step: rows follow [clean, stamped] in the batch
    step = ModelStep([(term, term.default_weight)])
    assert torch.equal(step.extend(clean, stamped), rows)


def test_evasion_loss_is_bounded_and_zero_without_rows():
    term = EVASIONS.create("scale-up")
    k = 10
    zero = term.model_loss(StepOutputs(torch.empty(0, k)), None)
    assert zero.item() == 0.0
    confident = torch.full((4, k), -1e4)
    confident[:, 0] = 1e4
    flat = torch.zeros(4, k, requires_grad=True)
    lo, hi = term.model_loss(StepOutputs(flat), None), term.model_loss(StepOutputs(confident), None)
    assert lo.item() == pytest.approx(-math.log(k)) and hi.item() == pytest.approx(0.0, abs=1e-6)
    huge = term.model_loss(StepOutputs(torch.randn(5, k) * 1e6), None)
    assert -math.log(k) <= huge.item() <= 0
    logits = torch.randn(5, k, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = term.model_loss(StepOutputs(logits * 3), None)
    assert -math.log(k) < loss.item() < 0
    loss.backward()  # it reaches the model through the rows' logits
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
