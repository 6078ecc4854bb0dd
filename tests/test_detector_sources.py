"""Detectors as their sources define them, round 2 (issue 24): seeded random calibration and
evaluation sets on class-sorted splits, ABS's layer-wide stimulation levels and summed re-mask
loss, ABS's untested labels down to the report table, the ensemble calibrated by STRIP's rule,
and NeuralCleanse's cost schedule check by check as Wang et al.'s ``visualizer.py``."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from eviltwins.data import DatasetSpec, TensorImageDataset
from eviltwins.detectors import ABS, STRIP, InspectionReport, NCStripEnsemble, evaluate_filter
from eviltwins.detectors import abs as abs_mod
from eviltwins.detectors.abs_remask import LOGIT_WEIGHT, MASK_EPS, mask_weight
from eviltwins.detectors.abs_reverse import remask_step
from eviltwins.detectors.base import quantile_threshold
from eviltwins.detectors.evaluation import non_target_examples, split_filter_data
from eviltwins.detectors.nc_schedule import COST_DOWN, COST_UP, CostState, next_cost
from eviltwins.errors import ParamError
from eviltwins.experiments.store import CELL_SCHEMA, CellResult
from eviltwins.report.cells import Shown
from eviltwins.report.table import flatten, summary_table
from eviltwins.triggers import Trigger

N_CLASSES = 10


def _sorted_spec(per_class: int = 30) -> DatasetSpec:
    """A 1x4x4 dataset whose test split is stored sorted by class (as image folders and GTSRB
    are); pixel (0, 0) encodes the label (label / 10), the rest is noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N_CLASSES).repeat_interleave(per_class)
    x = torch.rand(len(y), 1, 4, 4, generator=g)
    x[:, 0, 0, 0] = y.float() / N_CLASSES
    ds = TensorImageDataset(x, y)
    classes = tuple(str(i) for i in range(N_CLASSES))
    return DatasetSpec("sorted", (1, 4, 4), classes, (0.0,), (1.0,), ds, ds)


def _labels_of(x: torch.Tensor) -> set[int]:
    return set((x[:, 0, 0, 0] * N_CLASSES).round().long().tolist())


class Linear4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class SpySTRIP(STRIP):
    """STRIP that records its calibration images and the images it scores."""

    def _fit(self, model, clean, *, data=None):
        self.fitted_on_ = clean.clone()
        self.scored_ = []
        return super()._fit(model, clean, data=data)

    def score(self, x):
        self.scored_.append(x.clone())
        return super().score(x)


# --- seeded random subsets (defect 1) --------------------------------------------------------
def test_strip_calibration_and_evaluation_cover_every_class_of_a_sorted_split():
    spec = _sorted_spec()
    det = SpySTRIP(n_overlays=2)
    trig = Trigger(torch.zeros(1, 4, 4), torch.ones(1, 4, 4))
    evaluate_filter(det, Linear4(), spec, trig, 0, n_clean=100)
    assert len(det.fitted_on_) == 100 and len(det.scored_[0]) == 100
    # the first 100 images of the split are classes 0-3 only, the next 100 classes 3-6
    assert _labels_of(det.fitted_on_) == set(range(N_CLASSES))
    assert _labels_of(det.scored_[0]) == set(range(N_CLASSES))


def test_split_filter_data_is_seeded_and_disjoint():
    spec = _sorted_spec()
    fit_i, ev_i, nc_i = split_filter_data(spec, 100, seed=3)
    again = split_filter_data(spec, 100, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((fit_i, ev_i, nc_i), again, strict=True))
    assert not torch.equal(fit_i, split_filter_data(spec, 100, seed=4)[0])
    assert not set(ev_i.tolist()) & set(nc_i.tolist())
    assert set(fit_i.tolist()) <= set(nc_i.tolist())
    assert len(ev_i) + len(nc_i) == len(spec.test)


def test_examples_are_non_target_images_of_several_classes_of_a_sorted_split():
    spec = _sorted_spec(per_class=600)  # the first 600 images (> the old 512 limit) are class 0
    x = non_target_examples(spec, 0, 8, seed=0)
    assert len(x) == 8 and 0 not in _labels_of(x)
    assert len(_labels_of(x)) >= 3  # a random draw, not the first non-target class
    assert torch.equal(x, non_target_examples(spec, 0, 8, seed=0))


# --- ABS step 1: the layer's maximum (defect 2a) ---------------------------------------------
class TwoChannels(nn.Module):
    """Feature layer = the first two pixels (channel 1 nearly silent), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Linear(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x.flatten(1)[:, :2]))


def test_abs_stimulates_every_channel_at_multiples_of_the_layers_maximum(monkeypatch):
    xs = torch.zeros(4, 1, 2, 2)
    xs[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 0.5, 0.0])  # channel 0: layer max 2
    xs[:, 0, 0, 1] = 0.01  # channel 1 nearly silent (its own max 0.01)
    seen = []
    real = abs_mod.stimulated

    def spy(model, layer, xs_, chans, vals, n_lv, expand, base=None):
        seen.append((chans.clone(), vals.clone(), n_lv))
        return real(model, layer, xs_, chans, vals, n_lv, expand, base)

    monkeypatch.setattr(abs_mod, "stimulated", spy)
    levels = (0.0, 1.0, 2.0, 4.0, 8.0)
    ABS(layer="feat", levels=levels, quiet=True).candidates(
        TwoChannels(), "feat", xs, torch.tensor([0, 1, 2, 3]), 4
    )
    want = torch.tensor(levels) * 2.0
    checked = 0
    for chans, vals, n_lv in seen:
        for c, v in zip(chans.tolist(), vals.view(-1, n_lv), strict=True):
            assert torch.allclose(v, want), (c, v)  # not 0.01 x levels for channel 1
            checked += c == 1
    assert checked >= 1


# --- ABS step 3: the summed re-mask loss (defect 2b) -----------------------------------------
def _remask(det, model, xs, w_m, w_p, chans, labels, late):
    """Step 3's loss of every candidate on ``xs``, as ``det`` runs it."""
    bound = det.mask_bound * xs.shape[-2] * xs.shape[-1]
    params = (w_m, w_p, torch.arange(len(chans)))
    return remask_step(model, "feat", xs, params, (chans, labels, bound, det.mask_size), late)


def test_abs_reverse_loss_is_summed_with_small_weight_within_the_bound():
    torch.manual_seed(0)
    model = TwoChannels().eval()
    xs = torch.rand(3, 1, 4, 4)
    det = ABS(layer="feat", mask_bound=0.25, steps=10, quiet=True)  # bound = 4 px of 16
    chans, labels = torch.tensor([0, 1]), torch.tensor([3, 1])
    # candidate 0's mask: L1 0.29 (within the bound), 4.4 (above it), 11.7 (above 1.2x it)
    for level, w_expected in ((-2.0, 0.01), (-0.485, 500.0), (0.5, 1000.0)):
        w_m = torch.full((2, 1, 4, 4), level)
        w_m[1] = -3.0  # candidate 1: a tiny mask, always within the bound
        w_p = torch.zeros(2, 1, 4, 4)
        w_m.requires_grad_(True)
        w_p.requires_grad_(True)
        got = _remask(det, model, xs, w_m, w_p, chans, labels, late=False)
        m = (torch.tanh(w_m.detach()) + 1) / 2
        p = (torch.tanh(w_p.detach()) + 1) / 2
        want = 0.0
        for k in range(2):
            stamped = xs * (1 - m[k]) + p[k] * m[k]
            feats = stamped.flatten(1)[:, :2]  # (3 images, 2 channels)
            own = feats[:, chans[k]].sum()
            others = feats.sum() - own
            l1 = float(m[k].sum())
            w = 0.01 if l1 <= 4 else (500.0 if l1 <= 4.8 else 1000.0)
            if k == 0:
                assert w == w_expected, l1
            want += float(-own + 1e-4 * others) + w * l1
        assert float(got) == pytest.approx(want, rel=1e-5)
    # the second half subtracts the label's logit summed over the seed images (weight 1e2)
    late = _remask(det, model, xs, w_m, w_p, chans, labels, late=True)
    with torch.no_grad():
        logit = sum(model(xs * (1 - m[k]) + p[k] * m[k])[:, labels[k]].sum() for k in range(2))
    assert float(late) == pytest.approx(want - LOGIT_WEIGHT * float(logit), rel=1e-5)


def test_mask_weight_steps_and_count_mode():
    size = torch.tensor([0.0, 4.0, 4.1, 4.8, 4.9])
    assert mask_weight(size, 4.0).tolist() == pytest.approx([0.01, 0.01, 500.0, 500.0, 1000.0])
    det = ABS(layer="feat", mask_bound=4.5 / 16, mask_size="count", quiet=True)
    model, xs = TwoChannels().eval(), torch.rand(2, 1, 4, 4)
    # 5 pixels set just above MASK_EPS: L1 0.06 (within 4.5) but 5 > 4.5 pixels: weight 500
    m = torch.zeros(1, 1, 4, 4)
    m.view(-1)[:5] = MASK_EPS * 1.2
    w_m = torch.atanh(m * 2 - 1).clamp(-20, 20).requires_grad_(True)
    w_p = torch.zeros(1, 1, 4, 4, requires_grad=True)
    args = (model, xs, w_m, w_p, torch.tensor([0]), torch.tensor([1]))
    by_count = float(_remask(det, *args, late=False))
    by_l1 = float(_remask(det.set_params(mask_size="l1"), *args, late=False))
    l1 = float(((torch.tanh(w_m.detach()) + 1) / 2).sum())
    assert by_count - by_l1 == pytest.approx((500.0 - 0.01) * l1, rel=1e-4)


# --- ABS untested labels and the figure's metric (defects 2c, 2d) ------------------------------
def _abs_report(tested: list[int], reasr: float) -> InspectionReport:
    scores = [0.0] * N_CLASSES
    for lab in tested:
        scores[lab] = reasr
    flagged = [lab for lab in tested if reasr >= 0.8]
    return InspectionReport(
        "abs",
        scores,
        scores,
        flagged,
        0.8,
        details={"tested_labels": tested, "no_candidate": not tested},
        labels=list(range(N_CLASSES)),
    )


def _cell(target_anomaly: float | None, tested: list[int], max_anomaly: float) -> CellResult:
    d: dict = {
        "kind": "inspection",
        "max_anomaly": max_anomaly,
        "target_flagged": False,
        "flagged": [],
        "details": {"tested_labels": tested, "no_candidate": not tested},
    }
    if target_anomaly is not None:
        d["target_anomaly"] = target_anomaly
    data = {
        "schema": CELL_SCHEMA,
        "status": "ok",
        "cell": {
            "dataset": "digits",
            "model": "cnn",
            "attack": "badnet",
            "size": 0.1,
            "transparency": 0.0,
            "seed": 0,
            "detectors": [{"name": "abs"}],
        },
        "target": 0,
        "attack": {"metrics": {"asr": 1.0}},
        "detectors": {"abs": d},
    }
    return CellResult.from_dict(data).with_key("k")


def test_an_untested_abs_target_is_blank_not_zero_down_to_the_table():
    rep = _abs_report([3], 0.95)
    assert rep.anomaly_of(0) is None  # no candidate for the target: untested, not 0.0
    assert rep.anomaly_of(3) == pytest.approx(0.95)
    assert _abs_report([0, 3], 0.0).anomaly_of(0) == 0.0  # a tested label keeps its REASR
    # a result stored before the fix holds 0.0 for the untested target: blank in the row too
    row = flatten(_cell(0.0, [3], 0.95))
    assert row["abs.target_anomaly"] is None and row["abs.max_anomaly"] == pytest.approx(0.95)
    tested = flatten(_cell(0.4, [0, 3], 0.95))
    assert tested["abs.target_anomaly"] == pytest.approx(0.4)
    shown = [Shown("abs", "abs", ABS.report_metric, False)]
    head, body = summary_table([row, tested], shown)
    col = head.index("ABS REASR, target (blank: untested)")
    assert body[0][col] == "0.400"  # the mean over the one tested seed only
    assert head.index("ABS REASR, max (blank: no candidate)") > col


def test_abs_figure_plots_the_targets_reasr():
    assert ABS.report_metric.key == "target_anomaly" and "abs" in ABS.report_metric.figures


# --- the ensemble's threshold rule (defect 3) ------------------------------------------------
def test_ensemble_is_calibrated_by_strips_paper_rule():
    g = torch.Generator().manual_seed(5)
    pool = torch.rand(40, 1, 4, 4, generator=g)
    trig = Trigger(torch.full((1, 4, 4), 0.5), torch.ones(1, 4, 4))
    model = Linear4()
    ens = NCStripEnsemble(n_overlays=4).fit(model, pool, trigger=trig)
    dev = ens.calibration_deviation_
    assert ens.threshold == "quantile" and len(dev) == len(pool)
    # STRIP's paper variant: the empirical 5% quantile of held-out clean scores
    assert ens.deviation_threshold_ == quantile_threshold(dev, 0.05)
    assert ens.deviation_threshold_ == float(dev.sort().values[int(0.05 * len(dev))])
    assert ens.threshold_ == -ens.deviation_threshold_
    strip = STRIP(n_overlays=4).fit(model, pool)
    h = strip.calibration_entropy_
    assert strip.entropy_threshold_ == quantile_threshold(h, 0.05)
    normal = NCStripEnsemble(n_overlays=4, threshold="normal").fit(model, pool, trigger=trig)
    assert normal.deviation_threshold_ != ens.deviation_threshold_  # still an explicit option


def test_ensemble_passes_its_nc_steps_to_the_neural_cleanse_it_composes():
    assert NCStripEnsemble().inspector().steps is None  # NeuralCleanse's preset
    inspector = NCStripEnsemble(nc_steps=7, seed=3).inspector()
    assert (inspector.steps, inspector.seed) == (7, 3)
    with pytest.raises(ParamError, match="nc_steps"):
        NCStripEnsemble(nc_steps=0).fit(Linear4(), torch.rand(8, 1, 4, 4), data=None)


# --- NeuralCleanse's cost schedule (defect 4) ------------------------------------------------
def _reference(oks: list[bool], init_cost: float, patience: int) -> list[float]:
    """Wang et al.'s ``visualizer.py`` schedule for one label, one check per entry of ``oks``,
    written out as plain Python: the cost after each check."""
    cost, set_cnt, up, down = 0.0, 0, 0, 0
    out = []
    for ok in oks:
        if cost == 0 and ok:
            set_cnt += 1
            if set_cnt >= patience:
                cost, up, down = init_cost, 0, 0
        else:
            set_cnt = 0
        up, down = (up + 1, 0) if ok else (0, down + 1)
        if up >= patience:
            up, cost = 0, cost * COST_UP
        elif down >= patience:
            down, cost = 0, cost / COST_DOWN
        out.append(cost)
    return out


def _run(oks: list[list[bool]], init_cost: float, patience: int) -> list[list[float]]:
    state = CostState.start(len(oks[0]))
    out = []
    for row in oks:
        state = next_cost(state, torch.tensor(row), init_cost, patience)
        out.append(state.cost.tolist())
    return out


def test_first_raise_comes_patience_minus_one_checks_after_the_cost_is_set():
    costs = [c[0] for c in _run([[True]] * 12, 1e-3, 5)]
    assert costs[:4] == [0.0] * 4
    assert costs[4:8] == pytest.approx([1e-3] * 4)  # set at check 5 (which counts as one up)
    assert costs[8] == pytest.approx(1e-3 * COST_UP)  # raised at check 9, not 10
    assert costs[8:12] == pytest.approx([1e-3 * COST_UP] * 4)


@pytest.mark.parametrize("patience", [1, 2, 5])
def test_cost_schedule_matches_the_original_check_by_check(patience):
    rng = random.Random(patience)
    n_labels, n_checks = 6, 80
    # runs of success and failure, as an optimisation shows them
    oks = [
        [rng.random() < (0.8 if (t // 7 + k) % 3 else 0.2) for k in range(n_labels)]
        for t in range(n_checks)
    ]
    got = _run(oks, 1e-3, patience)
    for k in range(n_labels):
        want = _reference([row[k] for row in oks], 1e-3, patience)
        assert [row[k] for row in got] == pytest.approx(want, rel=1e-5), k
