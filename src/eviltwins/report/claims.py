"""The paper's claims (Pang et al., CCS 2020, Section 5), each
with a stable ``id``, evaluated on a sweep's rows over its seeds: the measured value beside the
paper's and whether the claim holds here.

A claim is a statement over seeds (each seed gives one paired difference). Each claim reads one
number per seed: a paired difference (a TrojanNN* cell minus its baseline's at the same dataset,
model, size, transparency and seed, :func:`~eviltwins.report.table.pairs`; or the reverse where
"lower" is the claim) averaged over the settings the claim covers within that seed, or a
per-seed trend. It reports the mean over seeds with a 95% t interval
(:mod:`eviltwins.report.seeds`) and holds only when the interval lies on the claimed side of
zero (of -0.02 for "TrojanNN* >= TrojanNN": seed noise of a tie). The paper's figures (an index
gap over 2, an F1 gap over 0.3, ASR gains of 0.36-0.39) stay in the ``paper`` column beside the
measured mean; the ensemble's "slightly (< 0.2)" is checked on the mean. With fewer than 3 seeds
a claim is not measured ("needs >= 3 seeds"), never holding.

A claim that TrojanNN* evades a detector is declared by the detector class
(``evasion_claim``: the row column it compares); each registered detector's is checked, and how an evasion is judged follows the detector's family: an input filter is
evaded where its measure is lower against TrojanNN* (and the baseline was caught), a model
inspector only where its verdict on the TrojanNN* model is clean (no label flagged) as well. A
target a model inspector did not test (ABS without a candidate neuron: a blank measure) is left
out, not counted as 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eviltwins.detectors import DETECTORS
from eviltwins.report.cells import family
from eviltwins.report.seeds import MIN_SEEDS, SeedInterval, per_seed, seed_interval
from eviltwins.report.table import Row, attacked, num, pairs
from eviltwins.results import Result, internal

CAUGHT_F1 = 0.5  # an input filter "catches" an attack at this F1 (for the evasion claims)
ASR_TOLERANCE = 0.02  # "TrojanNN* >= TrojanNN" allows this much seed noise
WEAK_BASELINE = 0.7  # a setting is "hard" when the baseline's mean ASR is below this
ACC_DROP = 0.015  # "keeps clean accuracy": a drop of at most 1.5 points
ENSEMBLE_GAIN = 0.2  # "slightly": the ensemble's F1 gain over STRIP stays under this


@dataclass(frozen=True)
class Claim(Result):
    """One of the paper's claims with the measured value and the verdict; ``id`` names the
    claim stably (its sentence may be reworded); ``interval`` is ``[mean, low, high]`` over
    ``seeds`` seeds (95% t interval) and ``needs`` says why a claim is not measured."""

    claim: str
    paper: str
    measured: str
    holds: bool | None  # None: the sweep does not measure it
    id: str = internal(default="")
    interval: list[float | None] | None = None
    seeds: int = 0
    needs: str = ""

    @property
    def verdict(self) -> str:
        if self.holds is None and self.needs:
            return f"not measured: {self.needs}"
        return {True: "holds", False: "does not hold", None: "not measured"}[self.holds]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "verdict": self.verdict}


@dataclass(frozen=True)
class DetectorClaim:
    """A paper's claim about a detector: ``detector`` (registry name) and the row ``metric``
    compared between each baseline and its TrojanNN* twin."""

    id: str
    detector: str
    metric: str
    text: str
    paper: str


def evasion_claims() -> list[DetectorClaim]:
    """The evasion claim each registered detector declares (``evasion_claim``): model
    inspectors first, then input filters, each by registry name."""
    out = []
    for name in DETECTORS.names():
        claim = getattr(DETECTORS.get(name), "evasion_claim", None)
        if claim is not None:
            out.append(DetectorClaim(claim.id, name, claim.metric, claim.text, claim.paper))
    return sorted(out, key=lambda c: family(c.detector) == "filter")


# ABS's target REASR vs trigger size: it falls for TrojanNN* only (Appendix C)
SIZE_CLAIM = DetectorClaim(
    "abs-falls-with-size",
    "abs",
    "target_anomaly",
    "ABS's target REASR falls with trigger size against TrojanNN* only",
    "falls for TrojanNN* only (App. C)",
)
# the ensemble claim: (ensemble, the filter it improves on), compared on this metric
ENSEMBLE_CLAIM = ("ensemble", "strip", "f1")


def claim_by_id(claims: Sequence[Claim], claim_id: str) -> Claim:
    """The claim with ``claim_id`` (KeyError naming the ids there are)."""
    for c in claims:
        if c.id == claim_id:
            return c
    raise KeyError(f"no claim {claim_id!r}; there are {', '.join(c.id for c in claims)}")


def _over_seeds(
    text: str, paper: str, claim_id: str, iv: SeedInterval, holds: bool | None, measured: str
) -> Claim:
    """A claim read from ``iv``: ``holds`` only with enough seeds, else why not."""
    needs = "" if iv.enough else f"needs >= {MIN_SEEDS} seeds (has {iv.n})"
    verdict = holds if iv.enough else None
    return Claim(text, paper, measured, verdict, claim_id, iv.as_list(), iv.n, needs)


def _interval(items: Iterable[tuple[Hashable, float]]) -> SeedInterval:
    """The interval over seeds of (seed, value) items, averaged within each seed."""
    return seed_interval(per_seed(items))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pair_label(ps: Sequence[tuple[Row, Row]]) -> str:
    return ", ".join(sorted({f"{s['attack']} vs {b['attack']}" for b, s in ps}))


def _setting(r: Row) -> tuple[Any, ...]:
    return (r["dataset"], r["model"], r["size"], r["transparency"])


def _at(key: tuple[Any, ...]) -> str:
    ds, _, size, tr = key
    return f"size {num(size):g}, transparency {num(tr):g}, {ds}"


def _efficacy_note(rows: Iterable[Row]) -> str:
    eff = [num(r.get("efficacy")) for r in rows]
    eff = [e for e in eff if not math.isnan(e)]
    return f"; TrojanNN* efficacy {min(eff):.3f}-{max(eff):.3f}" if eff else ""


def _asr_claims(ps: Sequence[tuple[Row, Row]]) -> list[Claim]:
    """TrojanNN* >= its baseline in ASR (the interval above -0.02, and no setting's mean over
    seeds below it: "at every setting"), its gain where the baseline is weak (settings whose
    baseline mean ASR is under 0.7; the interval above 0) and its clean accuracy (the interval
    of the mean drop under 1.5 points)."""
    head, head_paper = (
        "TrojanNN* >= TrojanNN in ASR at every size and transparency",
        ("at every setting (Figs. 12-13)"),
    )
    weak = f"where the baseline is weak (ASR < {WEAK_BASELINE}), TrojanNN* gains ASR"
    weak_paper = "+0.36 to +0.39 (CIFAR10 0.3/0.2, GTSRB 0.4/0.7)"
    acc = f"TrojanNN* keeps clean accuracy (drop <= {100 * ACC_DROP:g} points)"
    acc_paper = "negligible accuracy impact"
    deltas = [(b, num(s["asr"]) - num(b["asr"])) for b, s in ps]
    deltas = [(b, d) for b, d in deltas if math.isfinite(d)]
    if not deltas:
        none = "the sweep has no imc / baseline pairs"
        return [
            Claim(head, head_paper, none, None, "imc-asr-ge-trojannn"),
            Claim(weak, weak_paper, none, None, "imc-gain-where-weak"),
            Claim(acc, acc_paper, none, None, "imc-keeps-clean-acc"),
        ]
    by_setting: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    baseline: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for b, d in deltas:
        by_setting[_setting(b)].append(d)
        baseline[_setting(b)].append(num(b["asr"]))
    means = {k: float(np.mean(v)) for k, v in by_setting.items()}
    worst = min(means, key=means.__getitem__)
    iv = _interval((b["seed"], d) for b, d in deltas)
    measured = (
        f"{_pair_label(ps)}: mean ASR gain {iv.text()}, each seed over its "
        f"{_count(len(means), 'paired setting')}; worst setting {means[worst]:+.3f} ({_at(worst)})"
    )
    holds = iv.above(-ASR_TOLERANCE) and means[worst] >= -ASR_TOLERANCE
    out = [_over_seeds(head, head_paper, "imc-asr-ge-trojannn", iv, holds, measured)]

    hard = {k for k, v in baseline.items() if np.mean(v) < WEAK_BASELINE}
    if hard:
        iv = _interval((b["seed"], d) for b, d in deltas if _setting(b) in hard)
        best = max(hard, key=means.__getitem__)
        measured = (
            f"mean ASR gain {iv.text()}, each seed over its {_count(len(hard), 'hard setting')}; "
            f"largest {means[best]:+.3f} ({_at(best)})"
        )
        out.append(_over_seeds(weak, weak_paper, "imc-gain-where-weak", iv, iv.above(0), measured))
    else:
        measured = "no setting of this sweep has a weak baseline"
        out.append(Claim(weak, weak_paper, measured, None, "imc-gain-where-weak"))

    starred = {s["key"]: s for _, s in ps}.values()
    drops = [(s["seed"], num(s["acc_drop"])) for s in starred]
    iv = _interval(drops)
    finite = [d for _, d in drops if math.isfinite(d)]
    measured = (
        f"mean drop in points {iv.text(lambda v: f'{100 * v:.2f}')}, each seed over its cells; "
        + (f"largest single cell {100 * max(finite):.2f} points" if finite else "no drop recorded")
    )
    out.append(_over_seeds(acc, acc_paper, "imc-keeps-clean-acc", iv, iv.below(ACC_DROP), measured))
    return out


def _both(ps: Sequence[tuple[Row, Row]], col: str) -> list[tuple[Row, Row, float, float]]:
    """The pairs where both cells have a finite ``col``, with the two values."""
    vals = [(b, s, num(b.get(col)), num(s.get(col))) for b, s in ps]
    return [v for v in vals if math.isfinite(v[2]) and math.isfinite(v[3])]


def _lower(spec: DetectorClaim, col: str, ps: Sequence[tuple[Row, Row]]) -> Claim:
    """An input filter's measure (STRIP's F1) is lower against the starred attack."""
    vals = _both(ps, col)
    if not vals:
        return Claim(spec.text, spec.paper, "not in this sweep", None, spec.id)
    iv = _interval((b["seed"], x - y) for b, _, x, y in vals)
    mb, ms = np.mean([v[2] for v in vals]), np.mean([v[3] for v in vals])
    caught = sum(x >= CAUGHT_F1 for *_, x, _ in vals)
    measured = (
        f"gap (baseline minus TrojanNN*) {iv.text()}; mean {mb:.3f} vs {ms:.3f} over "
        f"{_count(len(vals), 'pair')}; baseline caught (F1 >= {CAUGHT_F1}) in {caught}/{len(vals)}"
        + _efficacy_note(s for _, s, *_ in vals)
    )
    # nothing to evade where nothing is caught
    return _over_seeds(
        spec.text, spec.paper, spec.id, iv, iv.above(0) if caught else None, measured
    )


def _untested(ps: Sequence[tuple[Row, Row]], label: str, col: str) -> str:
    """``; N cells with the target untested left out`` (a blank measure where the detector
    ran: ABS found no candidate neuron for the target)."""
    rows = {r["key"]: r for p in ps for r in p}.values()
    n = sum(f"{label}.flagged" in r and math.isnan(num(r.get(col))) for r in rows)
    return f"; {n} cell(s) with the target untested left out" if n else ""


def _evaded(spec: DetectorClaim, label: str | None, ps: Sequence[tuple[Row, Row]]) -> Claim:
    """A model inspector is evaded only where its verdict on the starred model is clean
    (no label flagged), not merely where the target's measure is lower; both are shown."""
    col, flagged = f"{label}.{spec.metric}", f"{label}.flagged"
    vals = _both(ps, col)
    if not vals:
        return Claim(spec.text, spec.paper, "not in this sweep", None, spec.id)
    iv = _interval((b["seed"], x - y) for b, _, x, y in vals)
    mb, ms = np.mean([v[2] for v in vals]), np.mean([v[3] for v in vals])
    n_clean = sum(not s.get(flagged) for _, s, *_ in vals)
    alarms = sorted({str(s.get(flagged)) for _, s, *_ in vals if s.get(flagged)})
    caught = sum(bool(b.get(f"{label}.target_flagged")) for b, *_ in vals)
    measured = (
        f"target gap (baseline minus TrojanNN*) {iv.text()}; mean {mb:.3f} vs {ms:.3f} over "
        f"{_count(len(vals), 'pair')}; baseline target flagged in {caught}/{len(vals)}; TrojanNN* "
        f"verdict clean (no label flagged) in {n_clean}/{len(vals)}"
        + (f" (labels flagged: {'; '.join(alarms)})" if alarms else "")
        + _untested(ps, str(label), col)
        + _efficacy_note(s for _, s, *_ in vals)
    )
    # an evasion needs a detection to evade: no verdict where no baseline is flagged
    holds = (iv.above(0) and n_clean == len(vals)) if caught else None
    return _over_seeds(spec.text, spec.paper, spec.id, iv, holds, measured)


def _slope(points: Mapping[float, float]) -> float:
    """The least-squares slope of ``points`` (x -> y)."""
    x, y = np.array(list(points)), np.array(list(points.values()))
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def _falls_with_size(
    spec: DetectorClaim, label: str | None, ps: Sequence[tuple[Row, Row]]
) -> Claim:
    """The target's measure falls with trigger size against the starred attack only: per
    (dataset, model, transparency, seed), the least-squares slope of the measure over the
    sizes where it was measured, TrojanNN*'s minus its baseline's (both below zero)."""
    col = f"{label}.{spec.metric}"
    groups: dict[tuple[Any, ...], tuple[dict[float, float], dict[float, float]]] = {}
    for b, s in ps:
        key = (b["dataset"], b["model"], b["transparency"], b["seed"], b["attack"], s["attack"])
        lines = groups.setdefault(key, ({}, {}))
        for line, r in zip(lines, (b, s), strict=True):
            if math.isfinite(num(r.get(col))):
                line[num(r["size"])] = num(r.get(col))
    slopes = [
        (key[3], _slope(bl), _slope(sl))
        for key, (bl, sl) in groups.items()
        if len(bl) >= 2 and len(sl) >= 2
    ]
    if not slopes:
        return Claim(spec.text, spec.paper, "not in this sweep (two sizes needed)", None, spec.id)
    iv = _interval((seed, s - b) for seed, b, s in slopes)
    star = _interval((seed, s) for seed, _, s in slopes)
    measured = (
        f"slope of the target measure per unit size, TrojanNN* minus baseline {iv.text()}; "
        f"TrojanNN* alone {star.text()}" + _untested(ps, str(label), col)
    )
    return _over_seeds(spec.text, spec.paper, spec.id, iv, iv.below(0) and star.below(0), measured)


def _ensemble_claim(rows: Sequence[Row], det: Mapping[str, str]) -> Claim:
    """The NC+STRIP ensemble beats plain STRIP slightly (paper Fig. 15)."""
    text = f"the NC+STRIP ensemble beats plain STRIP slightly (0 < F1 gain < {ENSEMBLE_GAIN})"
    paper = f"slightly better, < {ENSEMBLE_GAIN} F1 (Fig. 15)"
    ens, base, metric = ENSEMBLE_CLAIM
    e_lab, s_lab = det.get(ens), det.get(base)
    both = [
        (r["seed"], num(r.get(f"{e_lab}.{metric}")) - num(r.get(f"{s_lab}.{metric}")))
        for r in rows
        if s_lab and e_lab
    ]
    both = [(seed, d) for seed, d in both if math.isfinite(d)]
    if not both:
        return Claim(text, paper, "not in this sweep", None, "ensemble-beats-strip")
    iv = _interval(both)
    measured = f"mean F1 gain {iv.text()}, each seed over its cells ({len(both)} in all)"
    holds = iv.above(0) and iv.mean < ENSEMBLE_GAIN
    return _over_seeds(text, paper, "ensemble-beats-strip", iv, holds, measured)


def _trend(rows: Sequence[Row], var: str) -> list[tuple[Any, float]]:
    """(seed, Spearman correlation of efficacy with ``var``) within each group where the
    other grid variables are fixed."""
    from scipy.stats import spearmanr

    other = "transparency" if var == "size" else "size"
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["attack"], r[other], r["seed"])].append(
            (num(r[var]), num(r["efficacy"]))
        )
    rhos = []
    for key, pts in groups.items():
        xs, ys = zip(*pts, strict=True) if pts else ((), ())
        if len(set(xs)) < 2 or len(set(ys)) < 2:
            continue
        rhos.append((key[-1], float(spearmanr(xs, ys).statistic)))
    return rhos


def _trend_claims(rows: Sequence[Row]) -> list[Claim]:
    out = []
    for var, text, claim_id in (
        ("size", "efficacy rises with trigger size", "efficacy-rises-with-size"),
        (
            "transparency",
            "efficacy falls with transparency (rises with opacity)",
            "efficacy-falls-with-transparency",
        ),
    ):
        rhos = _trend(attacked(rows), var)
        if not rhos:
            out.append(Claim(text, "steeply (Fig. 10)", f"the sweep has one {var}", None, claim_id))
            continue
        iv = _interval(rhos)
        holds = iv.below(0) if var == "transparency" else iv.above(0)
        measured = f"mean Spearman rho of efficacy vs {var} {iv.text(lambda v: f'{v:+.2f}')}"
        out.append(_over_seeds(text, "steeply (Fig. 10)", claim_id, iv, holds, measured))
    return out


def claims(rows: Sequence[Row], det: Mapping[str, str]) -> list[Claim]:
    """The paper's claims evaluated over the seeds of the sweep's rows (see the module
    docstring); ``det`` maps a detector's registry name to its label in the sweep (the prefix
    of its row columns)."""
    ps = [(b, s) for b, s in pairs(rows) if b.get("asr") is not None and s.get("asr") is not None]
    out = _asr_claims(ps)
    for spec in evasion_claims():
        label = det.get(spec.detector)
        if family(spec.detector) == "filter":
            out.append(_lower(spec, f"{label}.{spec.metric}", ps))
        else:
            out.append(_evaded(spec, label, ps))
    out.append(_falls_with_size(SIZE_CLAIM, det.get(SIZE_CLAIM.detector), ps))
    out.append(_ensemble_claim(rows, det))
    return out + _trend_claims(rows)
