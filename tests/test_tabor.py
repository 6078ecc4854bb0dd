"""TABOR: flags the BadNet digits model and passes the clean one; its regularisers, its hook in
NeuralCleanse (all weights 0 = NeuralCleanse) and IMC's evasion term against it."""

from __future__ import annotations

import pytest
import torch

from eviltwins.attacks import IMC
from eviltwins.data import load_all
from eviltwins.detectors import DETECTORS, TABOR, NeuralCleanse
from eviltwins.detectors.tabor import WEIGHTS, smoothness, tabor_fidelity, tabor_terms
from eviltwins.errors import ParamError
from eviltwins.evasion import EVASIONS

# A short run that still flags the BadNet target on digits (index 10 on the target, at most 1
# on the clean model; seeds 1-3 give 2.4-4.4 and at most 1): the schedule checked every 5 steps
# (patience 2), so the cost is set and raised within the budget; about 5 s a run on 2 cores.
FAST = {"steps": 100, "n_inputs": 96, "batch_size": 16, "check_every": 5, "patience": 2}
# The smallest run for comparisons that need no verdict.
TINY = {"steps": 10, "n_inputs": 64, "labels": [0, 1, 2], "quiet": True}
OFF = dict.fromkeys(WEIGHTS, 0.0)


@pytest.fixture(scope="module")
def held_out(digits_spec):
    x, y = load_all(digits_spec.test)
    return x[:64], y[:64]


def test_tabor_flags_badnet_target_not_clean(digits_clean, digits_badnet, digits_spec):
    res, _ = digits_clean
    bad = TABOR(**FAST, quiet=True).inspect(digits_badnet.model, digits_spec)
    clean = TABOR(**FAST, quiet=True).inspect(res.model, digits_spec)
    assert bad.detector == clean.detector == "tabor"
    assert bad.flagged == [0] and bad.anomaly[0] > 2
    assert bad.scores[0] == min(bad.scores)
    assert clean.flagged == [] and clean.max_anomaly <= 2
    assert bad.details["regularisers"] == WEIGHTS
    assert bad.masks.shape == (10, 1, 32, 32)


def test_size_and_smoothness_terms_vanish_where_they_should(digits_clean, held_out):
    res, _ = digits_clean
    x, y = held_out
    h = w = 32
    zeros, ones = torch.zeros(1, 1, h, w), torch.ones(1, 1, h, w)
    pattern = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0))
    lab = torch.tensor([0])
    none = tabor_terms(res.model, x, y, zeros, pattern, lab)
    full = tabor_terms(res.model, x, y, ones, pattern, lab)
    # no mask: no mask size, no mask edges; the pattern outside it is the whole pattern
    assert none["large_mask"] == 0 and none["scattered_mask"] == 0
    assert none["large_pattern"] > 0 and none["scattered_pattern"] > 0
    # a full mask: nothing of the pattern lies outside it; a constant mask has no edges
    assert full["large_pattern"] == 0 and full["scattered_pattern"] == 0
    assert full["large_mask"] == 2 * h * w and full["scattered_mask"] == 0
    # the same 16 pixels as one square or scattered: same size, far less smooth
    square, scattered = torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w)
    square[..., 8:12, 8:12] = 1
    scattered[..., ::8, ::8] = 1
    assert square.sum() == scattered.sum() == 16
    assert smoothness(square) == 16 and smoothness(scattered) == 16 * 4 - 4 * 2
    checker = (torch.arange(h)[:, None] + torch.arange(w)[None]) % 2
    assert smoothness(checker[None, None].float()) == 2 * h * (w - 1)


def test_blocking_and_overlaying_terms(digits_clean, held_out):
    res, _ = digits_clean
    x, y = held_out
    h = w = 32
    centre, corner = torch.zeros(2, 1, h, w), torch.zeros(1, 1, h, w)
    centre[..., 6:26, 6:26] = 1  # covers the digit
    corner[..., :3, :3] = 1
    pattern = torch.zeros(2, 1, h, w)
    r3 = tabor_terms(res.model, x, y, torch.cat([centre[:1], corner]), pattern, y[:2], ["blocking"])
    # cutting the digit out loses its label; cutting a corner out keeps it
    assert r3["blocking"][0] > 1.0 and r3["blocking"][1] < 0.3
    # R4: the trigger alone (full mask, pattern = a clean digit) gives that digit's label
    ones = torch.ones(2, 1, h, w)
    own = tabor_terms(res.model, x, y, ones, x[:2], y[:2], ["overlaying"])["overlaying"]
    other = tabor_terms(res.model, x, y, ones, x[:2], (y[:2] + 1) % 10, ["overlaying"])
    assert (own < 0.3).all() and (other["overlaying"] > 2).all()
    assert set(r3) == {"blocking"}  # only the terms asked for


def test_zero_weights_are_neural_cleanse_and_the_hook_acts(digits_badnet, digits_spec):
    model = digits_badnet.model
    nc = NeuralCleanse(**TINY).inspect(model, digits_spec)
    off = TABOR(**OFF, **TINY).inspect(model, digits_spec)
    on = TABOR(**TINY).inspect(model, digits_spec)
    assert off.scores == nc.scores and torch.equal(off.masks, nc.masks)
    assert torch.equal(off.patterns, nc.patterns)
    assert not torch.equal(on.masks, nc.masks)  # the default regularisers change the run
    # R3 on: its forward of the blocked true-labelled images runs through the hook too
    blocking = TABOR(blocking=0.1, **TINY).inspect(model, digits_spec)
    assert not torch.equal(blocking.masks, on.masks)
    assert blocking.details["regularisers"]["blocking"] == 0.1
    assert off.details["regularisers"] == OFF and on.details["regularisers"] == WEIGHTS
    assert nc.detector == "neural-cleanse" and on.detector == off.detector == "tabor"
    assert NeuralCleanse()._extra_loss(model, *[None] * 5, False) == 0.0


def test_registered_with_bounded_weights(digits_clean, digits_spec):
    assert DETECTORS.get("tabor") is TABOR and TABOR.name == "tabor"
    assert TABOR.evasion_claim is None and TABOR.scan_measure == "index"
    assert (
        TABOR().weights()
        == WEIGHTS
        == {
            "large_mask": 1e-6,
            "large_pattern": 1e-5,
            "scattered_mask": 1e-7,
            "scattered_pattern": 1e-8,
            "blocking": 0.0,
            "overlaying": 1e-2,
        }
    )
    res, _ = digits_clean
    with pytest.raises(ParamError, match="'blocking' parameter of TABOR"):
        TABOR(blocking=-1.0).inspect(res.model, digits_spec)


def test_evasion_term_shrinks_with_the_mask():
    term = EVASIONS.create("tabor")
    assert term.name == "tabor" and term.default_weight == 1.0
    assert term.needs_learned_mask and term.trigger_loss is tabor_fidelity
    assert term.model_loss is None and term.doc
    mask = torch.zeros(1, 32, 32)
    mask[:, 24:30, 24:30] = 0.8
    n_px = 36
    full = term.trigger_loss(None, None, None, mask, n_px)
    fainter = term.trigger_loss(None, None, None, mask * 0.5, n_px)
    smaller = mask.clone()
    smaller[:, 24:27] = 0
    assert fainter < full and term.trigger_loss(None, None, None, smaller, n_px) < full
    assert term.trigger_loss(None, None, None, torch.zeros(1, 32, 32), n_px) == 0
    # ||m||_1 + ||m||_2^2 + 0.1 s(m), over the trigger's pixels
    expected = (36 * 0.8 + 36 * 0.64 + 0.1 * 24 * 0.64) / n_px
    assert full.item() == pytest.approx(expected)
    w = torch.full((1, 32, 32), 0.0, requires_grad=True)
    term.trigger_loss(None, None, None, torch.sigmoid(w), n_px).backward()
    assert (w.grad > 0).all()  # acts on the mask: lowering any opacity lowers the term
    with pytest.raises(ParamError, match="fixed mask"):
        IMC(evade=["tabor"], mode="fixed")._validate_params()
