"""Claims over seeds (issue 24): each claim reads one number per seed, reports the mean with a
95% t interval and holds only when the interval lies on the claimed side; fewer than 3 seeds is
"not measured", never "holds". The figures show the spread over seeds."""

from __future__ import annotations

import math

import pytest

from eviltwins.report import claim_by_id, claims
from eviltwins.report import figures as figs
from eviltwins.report.build import Report
from eviltwins.report.seeds import per_seed, seed_interval, t_quantile

DET = {"neural-cleanse": "nc", "strip": "strip", "abs": "ABS", "ensemble": "ens"}


def row(attack: str, size: float, seed: int, asr: float, **extra) -> dict:
    name = "imc" if attack.endswith("*") else "trojannn"
    return {
        "key": f"{attack}-{size}-{seed}",
        "dataset": "d",
        "model": "m",
        "attack": attack,
        "attack_name": name,
        "init": "trojannn" if name == "imc" else "",
        "size": size,
        "transparency": 0.7,
        "seed": seed,
        "asr": asr,
        "efficacy": asr,
        "acc_drop": 0.002,
        **extra,
    }


def grid(gains: dict[int, float], sizes=(0.1, 0.2), base=0.3, **cols) -> list[dict]:
    """TrojanNN at ``base`` ASR and TrojanNN* ``gains[seed]`` above it, at every size."""
    return [
        r
        for seed, gain in gains.items()
        for size in sizes
        for r in (row("TrojanNN", size, seed, base), row("TrojanNN*", size, seed, base + gain))
    ]


# --- the interval ------------------------------------------------------------------------------
def test_the_t_interval_of_a_known_small_example():
    """1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.3027, half width 4.3027 / sqrt(3) = 2.4841."""
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(30) == pytest.approx(2.042272, abs=1e-6)
    iv = seed_interval([1.0, 2.0, 3.0])
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert iv.high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert iv.above(-0.5) is True and iv.above(0) is False and iv.below(4.5) is True
    assert "95% CI -0.484 to +4.484, 3 seeds" in iv.text()


def test_an_interval_needs_three_seeds_and_leaves_out_non_finite_values():
    two = seed_interval([1.0, 1.1])
    assert two.n == 2 and not two.enough and two.above(0) is None and two.below(5) is None
    one = seed_interval([5.0, math.nan, math.inf])
    assert (one.mean, one.n) == (5.0, 1) and one.as_list() == [5.0, None, None]
    assert seed_interval([]).n == 0
    # settings averaged within each seed: the seeds are the replicates
    assert sorted(per_seed([(0, 1.0), (0, 3.0), (1, 5.0), (1, math.nan)])) == [2.0, 5.0]


# --- claims over seeds -------------------------------------------------------------------------
def test_a_clear_gain_on_three_seeds_holds_and_one_reversed_seed_breaks_it():
    rows = grid({0: 0.40, 1: 0.35, 2: 0.45})
    c = claim_by_id(claims(rows, DET), "imc-gain-where-weak")
    assert c.holds is True and c.seeds == 3 and c.verdict == "holds"
    assert c.interval[1] > 0 and "95% CI" in c.measured
    assert claim_by_id(claims(rows, DET), "imc-asr-ge-trojannn").holds is True
    reversed_one = grid({0: 0.40, 1: 0.35, 2: -0.30})
    c = claim_by_id(claims(reversed_one, DET), "imc-gain-where-weak")
    assert c.interval[0] > 0 and c.interval[1] < 0  # mean still up, interval across zero
    assert c.holds is False
    assert claim_by_id(claims(reversed_one, DET), "imc-asr-ge-trojannn").holds is False


@pytest.mark.parametrize("seeds", [1, 2])
def test_fewer_than_three_seeds_is_not_measured_never_holds(seeds):
    """Regression: one seed used to decide every claim (the demo's table said "holds")."""
    rows = grid({s: 0.4 for s in range(seeds)})
    for c in claims(rows, DET):
        assert c.holds is not True
    c = claim_by_id(claims(rows, DET), "imc-asr-ge-trojannn")
    assert c.holds is None and c.verdict == f"not measured: needs >= 3 seeds (has {seeds})"
    assert "+0.400" in c.measured  # the mean is still shown
    summary = Report(out=None, rows=rows, claims=claims(rows, DET)).summary()
    assert f"claims not measured: each needs >= 3 seeds (has {seeds})" in summary


def test_detector_claims_read_the_interval_of_their_paired_gap():
    def rows_with(star_f1: list[float]) -> list[dict]:
        out = []
        for seed, f1 in enumerate(star_f1):
            out += [
                row("TrojanNN", 0.2, seed, 0.9, **{"strip.f1": 0.9, "ens.f1": 0.95}),
                row("TrojanNN*", 0.2, seed, 0.9, **{"strip.f1": f1, "ens.f1": f1 + 0.1}),
            ]
        return out

    lower = claim_by_id(claims(rows_with([0.2, 0.3, 0.25]), DET), "strip-f1-lower")
    assert lower.holds is True and "gap (baseline minus TrojanNN*) +0.650" in lower.measured
    assert lower.paper.startswith("F1 gap > 0.3")  # the paper's figure stays beside it
    assert claim_by_id(claims(rows_with([0.2, 0.3, 0.95]), DET), "strip-f1-lower").holds is False
    ens = claim_by_id(claims(rows_with([0.2, 0.3, 0.25]), DET), "ensemble-beats-strip")
    assert ens.holds is True  # every cell gains 0.05-0.1: above 0, under 0.2


def test_abs_claims_read_the_target_reasr_and_leave_untested_targets_out():
    """The target's REASR falls with size against TrojanNN* only; an untested target (blank)
    is not a REASR of 0: counting it as 0 would make a flat line fall."""

    def abs_rows(star: list[float | None]) -> list[dict]:
        out = []
        for seed in range(3):
            for size, reasr in zip((0.1, 0.2, 0.3), star, strict=True):
                flag = {"ABS.flagged": "0", "ABS.target_flagged": True}
                out += [
                    row("TrojanNN", size, seed, 0.9, **{"ABS.target_anomaly": 0.95, **flag}),
                    row("TrojanNN*", size, seed, 0.9, **{"ABS.target_anomaly": reasr, "ABS.flagged": ""}),
                ]  # fmt: skip
        return out

    falls = claim_by_id(claims(abs_rows([0.9, 0.6, 0.3]), DET), "abs-falls-with-size")
    assert falls.holds is True and falls.interval[2] < 0
    flat = claim_by_id(claims(abs_rows([0.9, 0.9, None]), DET), "abs-falls-with-size")
    assert flat.holds is False and "untested left out" in flat.measured
    evaded = claim_by_id(claims(abs_rows([0.5, 0.5, None]), DET), "abs-evaded")
    assert evaded.holds is True and "over 6 pairs" in evaded.measured  # 9 pairs, 3 untested


# --- figures: the spread over seeds ------------------------------------------------------------
def test_line_figures_draw_the_spread_over_seeds_and_the_clean_mean(tmp_path, monkeypatch):
    drawn = {}

    def keep(fig, path, title, fontsize=11):
        drawn.update(fig=fig, title=title)
        return path

    monkeypatch.setattr(figs, "_save", keep)
    rows = grid({0: 0.3, 1: 0.4, 2: 0.5}, sizes=(0.1, 0.2, 0.3))
    clean = [{"dataset": "d", "model": "m", "seed": s, "asr": v} for s, v in enumerate((0.1, 0.2))]
    figs.line_figure(
        rows,
        tmp_path / "f.png",
        x="size",
        panel_key="transparency",
        metrics=[("asr", "ASR", None)],
        title="ASR",
        clean_rows=clean,
    )
    assert drawn["title"] == "ASR (mean ± std over 3 seeds)"
    (ax,) = drawn["fig"].axes
    assert len(ax.collections) >= 1  # the band of TrojanNN* (TrojanNN's is flat: no band)
    dotted = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert [ln.get_ydata()[0] for ln in dotted] == [pytest.approx(0.15)]  # mean, not seed 0
    assert figs.seed_note(rows[:2]) == ""


# --- claims read from sweep rows (moved beside the interval tests) --------------------------
def test_claims_follow_the_numbers():
    det = {"neural-cleanse": "nc", "strip": "strip"}
    good = [
        r
        for seed, noise in ((0, 0.0), (1, 0.01), (2, -0.01))
        for r in (
            row("TrojanNN", 0.1, seed, 0.3, **{"nc.target_anomaly": 4.0, "strip.f1": 0.9}),
            row("TrojanNN", 0.2, seed, 0.8, **{"nc.target_anomaly": 3.0, "strip.f1": 0.9}),
            row("TrojanNN*", 0.1, seed, 0.9 + noise, **{"nc.target_anomaly": 1.0, "strip.f1": 0.1}),
            row("TrojanNN*", 0.2, seed, 0.95 + noise, **{"nc.target_anomaly": 1.0, "strip.f1": 0.2}),
        )
    ]  # fmt: skip
    verdicts = {c.id: c.holds for c in claims(good, det)}
    assert verdicts["imc-asr-ge-trojannn"] is True
    assert verdicts["efficacy-rises-with-size"] is True
    assert all(v is not False for v in verdicts.values())
    bad = [dict(r, asr=1 - r["asr"]) if r["attack_name"] == "imc" else r for r in good]
    verdicts = {c.id: c.holds for c in claims(bad, det)}
    assert verdicts["imc-asr-ge-trojannn"] is False


def test_an_evasion_counts_only_when_the_verdict_is_clean():
    """Regression (issue 11): a lower target index is not an evasion while NeuralCleanse still
    flags other labels on the TrojanNN* model; the claim shows both, and efficacy beside."""
    det = {"neural-cleanse": "nc"}
    base = {"nc.target_anomaly": 3.0, "nc.target_flagged": True, "nc.flagged": "0"}
    rows = [
        r
        for seed in (0, 1, 2)
        for r in (
            row("TrojanNN", 0.2, seed, 0.4, **base),
            row("TrojanNN*", 0.2, seed, 0.8, **{"nc.target_anomaly": 0.1 * seed, "nc.flagged": "2 5 9"}),
        )
    ]  # fmt: skip
    c = claim_by_id(claims(rows, det), "nc-evaded")
    assert c.holds is False
    assert "clean (no label flagged) in 0/3" in c.measured and "2 5 9" in c.measured
    assert "efficacy" in c.measured
    for r in rows[1::2]:
        r["nc.flagged"] = ""
    assert claim_by_id(claims(rows, det), "nc-evaded").holds is True
