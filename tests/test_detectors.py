"""Detectors on planted backdoors: each flags the BadNet digits model and passes the clean one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eviltwins.cli import main
from eviltwins.data import load_all
from eviltwins.detectors import ABS, STRIP, NCStripEnsemble, NeuralCleanse
from eviltwins.errors import NotFittedError
from eviltwins.metrics import roc_auc
from eviltwins.triggers import Trigger

# 200 of the imc preset's 500 steps per label: the verdicts below hold at 200 already, and the
# full budget (cycling the 360 test images) is asserted in test_detector_fidelity.
NC_STEPS = 200


@pytest.fixture(scope="module")
def nc_badnet(digits_badnet, digits_spec):
    return NeuralCleanse(steps=NC_STEPS, quiet=True).inspect(digits_badnet.model, digits_spec)


def test_neural_cleanse_flags_badnet_not_clean(digits_clean, nc_badnet, digits_spec):
    res, _ = digits_clean
    bad = nc_badnet
    clean = NeuralCleanse(steps=NC_STEPS, quiet=True).inspect(res.model, digits_spec)
    assert bad.flagged == [0] and bad.anomaly[0] > 2
    assert clean.flagged == [] and clean.max_anomaly <= 2
    assert bad.scores[0] == min(bad.scores)
    assert bad.masks.shape == (10, 1, 32, 32)
    # the steps each label ran are reported; early stop may end a label sooner
    assert bad.details["budget_steps"] == NC_STEPS and len(bad.details["steps"]) == 10
    assert all(0 < s <= NC_STEPS for s in bad.details["steps"])


def test_batched_equals_per_label_problem(digits_badnet, digits_spec):
    """A label optimised alone follows the same algorithm: its norm stays the smallest."""
    one = NeuralCleanse(labels=[0, 3, 5], label_chunk=1, steps=150, quiet=True).inspect(
        digits_badnet.model, digits_spec
    )
    assert one.details["labels"] == [0, 3, 5]
    assert one.scores[0] < min(one.scores[1:]) / 2


def _split(digits_spec, trigger, target=0):
    x, y = load_all(digits_spec.test)
    fit_x, ev_x, ev_y = x[:180], x[180:], y[180:]
    return fit_x, ev_x, trigger.stamp(ev_x[ev_y != target])


def test_strip_original_f1_and_auc_from_scores(digits_badnet, digits_spec):
    fit_x, clean, trig = _split(digits_spec, digits_badnet.trigger)
    strip = STRIP(variant="original").fit(digits_badnet.model, fit_x)
    rep = strip.evaluate(clean, trig)
    assert rep.metrics["f1"] >= 0.9 and rep.metrics["auc"] >= 0.95
    sc, st = strip.score(clean), strip.score(trig)
    truth = np.r_[np.zeros(len(sc)), np.ones(len(st))].astype(bool)
    auc = roc_auc(torch.cat([sc, st]).numpy(), truth)
    assert auc == pytest.approx(rep.metrics["auc"], abs=0.03)  # fresh overlay draws
    assert strip.detect(trig).float().mean() > 0.9


def test_strip_imc_variant_and_not_fitted(digits_badnet, digits_spec):
    fit_x, clean, trig = _split(digits_spec, digits_badnet.trigger)
    with pytest.raises(NotFittedError):
        STRIP().score(clean)
    s = STRIP().fit(digits_badnet.model, fit_x)
    # "positive threshold 0.05" = 5% FPR on the held-out clean inputs (not 0.05 nats)
    assert s.threshold_mode_ == "quantile" and s.get_params()["variant"] == "imc"
    assert s.threshold_ == -s.entropy_threshold_ and s.entropy_threshold_ > 0.05
    rep = s.evaluate(clean, trig)
    assert 0 <= rep.metrics["f1"] <= 1 and rep.n_triggered == len(trig)


def test_ensemble_separates_triggered_inputs(digits_badnet, digits_spec, nc_badnet):
    fit_x, clean, trig = _split(digits_spec, digits_badnet.trigger)
    rep_nc = nc_badnet
    s = rep_nc.suspect
    ens = NCStripEnsemble().fit(
        digits_badnet.model, fit_x, trigger=Trigger(rep_nc.masks[s], rep_nc.patterns[s])
    )
    rep = ens.evaluate(clean, trig)
    # The trigger NeuralCleanse recovers is the end point of a chaotic optimisation and moves
    # with the CPU kernel and thread count (AUC 0.966-0.970 and F1 0.83-0.85 under the default
    # and AVX-512 kernels, AUC 0.956 and F1 0.74 under AVX2 with two threads): the separation
    # (AUC) is what the method guarantees; F1 at the 5% quantile threshold follows it loosely.
    assert rep.metrics["auc"] >= 0.9 and rep.metrics["f1"] >= 0.7


def test_abs_reasr(digits_clean, digits_badnet, digits_spec):
    res, _ = digits_clean
    bad = ABS(quiet=True).inspect(digits_badnet.model, digits_spec)
    clean = ABS(quiet=True).inspect(res.model, digits_spec)
    assert bad.scores[0] >= 0.8 and 0 in bad.flagged
    assert clean.max_anomaly < 0.8 and clean.flagged == []


def test_detect_cli(digits_badnet, digits_spec, tmp_path, capsys):
    from eviltwins.io import ModelCard

    card = ModelCard(
        "cnn", digits_spec.shape, 10, digits_spec.mean, digits_spec.std, dataset="digits"
    )
    digits_badnet.save(tmp_path / "bad", card)
    code = main(
        [
            "detect",
            "strip",
            "--model",
            str(tmp_path / "bad"),
            "--variant",
            "original",
            "--n-clean",
            "180",
            "--json",
            "--out",
            str(tmp_path / "rep"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    d = json.loads(captured.out)
    assert d["detector"] == "strip" and d["metrics"]["f1"] >= 0.9
    assert (tmp_path / "rep" / "report.json").is_file()
    code = main(
        [
            "detect",
            "neural-cleanse",
            "--model",
            str(tmp_path / "bad"),
            "--steps",
            "150",
            "--json",
            "--out",
            str(tmp_path / "nc"),
            "-q",
        ]
    )
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["flagged"] == [0]
    assert (tmp_path / "nc" / "reversed.png").is_file()
