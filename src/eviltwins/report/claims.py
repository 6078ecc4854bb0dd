"""The paper's claims (ALGORITHMS.md, "Claims a faithful implementation should show"), each
with a stable ``id``, evaluated on a sweep's rows: the measured value beside the paper's and
whether the claim holds here (None: the sweep does not measure it).

A claim about a detector declares the detector it is about (its registry name) and the row
column it compares; how an evasion is judged follows the detector's family: an input filter is
evaded where its measure is lower against TrojanNN* (and the baseline was caught), a model
inspector only where its verdict on the TrojanNN* model is clean (no label flagged).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eviltwins.report.cells import is_filter
from eviltwins.report.table import Row, attacked, num, pairs
from eviltwins.results import Result, internal

CAUGHT_F1 = 0.5  # an input filter "catches" an attack at this F1 (for the evasion claims)
ASR_TOLERANCE = 0.02  # "TrojanNN* >= TrojanNN" allows this much seed noise per pair
WEAK_BASELINE = 0.7  # a setting is "hard" when the baseline's ASR is below this


@dataclass(frozen=True)
class Claim(Result):
    """One of the paper's claims with the measured value and the verdict; ``id`` names the
    claim stably (its sentence may be reworded)."""

    claim: str
    paper: str
    measured: str
    holds: bool | None  # None: the sweep does not measure it
    id: str = internal(default="")

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not measured"}[self.holds]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "verdict": self.verdict}


@dataclass(frozen=True)
class DetectorClaim:
    """The paper's claim that TrojanNN* evades a detector: ``detector`` (registry name) and the
    row ``metric`` compared between each baseline and its TrojanNN* twin."""

    id: str
    detector: str
    metric: str
    text: str
    paper: str


EVASION_CLAIMS = (
    DetectorClaim(
        "nc-evaded",
        "neural-cleanse",
        "target_anomaly",
        "NeuralCleanse is evaded by TrojanNN* (lower target index, no label flagged)",
        "index gap > 2 (Fig. 14)",
    ),
    DetectorClaim(
        "strip-f1-lower",
        "strip",
        "f1",
        "STRIP's F1 is lower against TrojanNN* than TrojanNN",
        "much lower (Fig. 14)",
    ),
    DetectorClaim(
        "abs-evaded",
        "abs",
        "target_anomaly",
        "ABS is evaded by TrojanNN* (lower target REASR, no label flagged)",
        "lower (App. C)",
    ),
)
# the ensemble claim: (ensemble, the filter it improves on), compared on this metric
ENSEMBLE_CLAIM = ("ensemble", "strip", "f1")


def claim_by_id(claims: Sequence[Claim], claim_id: str) -> Claim:
    """The claim with ``claim_id`` (KeyError naming the ids there are)."""
    for c in claims:
        if c.id == claim_id:
            return c
    raise KeyError(f"no claim {claim_id!r}; there are {', '.join(c.id for c in claims)}")


def _pair_label(ps: Sequence[tuple[Row, Row]]) -> str:
    return ", ".join(sorted({f"{s['attack']} vs {b['attack']}" for b, s in ps}))


def _efficacy_note(rows: Sequence[Row]) -> str:
    eff = [num(r.get("efficacy")) for r in rows]
    eff = [e for e in eff if not math.isnan(e)]
    return f"; TrojanNN* efficacy {min(eff):.3f}-{max(eff):.3f}" if eff else ""


def _asr_claims(ps: Sequence[tuple[Row, Row]]) -> list[Claim]:
    """TrojanNN* >= its baseline in ASR, its gain where the baseline is weak, its accuracy."""
    head = "TrojanNN* >= TrojanNN in ASR at every size and transparency"
    deltas = [num(s["asr"]) - num(b["asr"]) for b, s in ps]
    if not deltas:
        paper = "at every setting (Figs. 12-13)"
        return [
            Claim(head, paper, "the sweep has no imc / baseline pairs", None, "imc-asr-ge-trojannn")
        ]
    worst = min(range(len(ps)), key=lambda i: deltas[i])
    b, s = ps[worst]
    out = [
        Claim(
            head,
            "at every setting (Figs. 12-13)",
            f"{_pair_label(ps)}: {sum(d >= -ASR_TOLERANCE for d in deltas)}/{len(deltas)} "
            f"pairs within {ASR_TOLERANCE} or better; mean delta {np.mean(deltas):+.3f}; "
            f"worst {deltas[worst]:+.3f} (size {b['size']:g}, transparency "
            f"{b['transparency']:g}, {b['dataset']})",
            all(d >= -ASR_TOLERANCE for d in deltas),
            "imc-asr-ge-trojannn",
        )
    ]
    weak = f"where the baseline is weak (ASR < {WEAK_BASELINE}), TrojanNN* gains >= 0.2 ASR"
    weak_paper = "+0.36 to +0.39 (CIFAR10 0.3/0.2, GTSRB 0.4/0.7)"
    hard = [(d, b) for d, (b, _) in zip(deltas, ps, strict=True) if num(b["asr"]) < WEAK_BASELINE]
    if hard:
        d, b = max(hard, key=lambda t: t[0])
        measured = (
            f"largest gain {d:+.3f} at size {b['size']:g}, transparency "
            f"{b['transparency']:g} ({b['dataset']}); {len(hard)} hard pair(s)"
        )
        out.append(Claim(weak, weak_paper, measured, d >= 0.2, "imc-gain-where-weak"))
    else:
        measured = "no setting of this sweep has a weak baseline"
        out.append(Claim(weak, weak_paper, measured, None, "imc-gain-where-weak"))
    drops = [num(s["acc_drop"]) for _, s in ps]
    out.append(
        Claim(
            "TrojanNN* keeps clean accuracy (drop <= 1.5 points)",
            "negligible accuracy impact",
            f"largest drop {100 * max(drops):.2f} points over {len(drops)} cells",
            max(drops) <= 0.015,
            "imc-keeps-clean-acc",
        )
    )
    return out


def _lower(spec: DetectorClaim, col: str, ps: Sequence[tuple[Row, Row]]) -> Claim:
    """An input filter's measure (STRIP's F1) is lower against the starred attack."""
    vals = [(num(b.get(col)), num(s.get(col)), s) for b, s in ps]
    vals = [(x, y, s) for x, y, s in vals if not (math.isnan(x) or math.isnan(y))]
    if not vals:
        return Claim(spec.text, spec.paper, "not in this sweep", None, spec.id)
    mb, ms = np.mean([x for x, _, _ in vals]), np.mean([y for _, y, _ in vals])
    caught = sum(x >= CAUGHT_F1 for x, _, _ in vals)
    return Claim(
        spec.text,
        spec.paper,
        f"mean {mb:.3f} (baseline) vs {ms:.3f} (TrojanNN*) over {len(vals)} pairs; "
        f"baseline caught (F1 >= {CAUGHT_F1}) in {caught}/{len(vals)}"
        + _efficacy_note([s for _, _, s in vals]),
        bool(ms < mb) if caught else None,  # nothing to evade where nothing is caught
        spec.id,
    )


def _evaded(spec: DetectorClaim, label: str | None, ps: Sequence[tuple[Row, Row]]) -> Claim:
    """A model inspector is evaded only where its verdict on the starred model is clean
    (no label flagged), not merely where the target's measure is lower; both are shown."""
    col, flagged = f"{label}.{spec.metric}", f"{label}.flagged"
    vals = [(num(b.get(col)), num(s.get(col)), b, s) for b, s in ps]
    vals = [v for v in vals if not (math.isnan(v[0]) or math.isnan(v[1]))]
    if not vals:
        return Claim(spec.text, spec.paper, "not in this sweep", None, spec.id)
    mb, ms = np.mean([v[0] for v in vals]), np.mean([v[1] for v in vals])
    n_clean = sum(not s.get(flagged) for *_, s in vals)
    alarms = sorted({str(s.get(flagged)) for *_, s in vals if s.get(flagged)})
    caught = sum(bool(b.get(f"{label}.target_flagged")) for _, _, b, _ in vals)
    return Claim(
        spec.text,
        spec.paper,
        f"target measure mean {mb:.3f} (baseline) vs {ms:.3f} (TrojanNN*) over "
        f"{len(vals)} pairs; baseline target flagged in {caught}/{len(vals)}; "
        f"TrojanNN* verdict clean (no label flagged) in {n_clean}/{len(vals)}"
        + (f" (labels flagged: {'; '.join(alarms)})" if alarms else "")
        + _efficacy_note([s for *_, s in vals]),
        # an evasion needs a detection to evade: no verdict where no baseline is flagged
        bool(ms < mb and n_clean == len(vals)) if caught else None,
        spec.id,
    )


def _ensemble_claim(rows: Sequence[Row], det: Mapping[str, str]) -> Claim:
    """The NC+STRIP ensemble beats plain STRIP slightly (paper Fig. 15)."""
    text = "the NC+STRIP ensemble beats plain STRIP slightly (0 < F1 gain < 0.2)"
    paper = "slightly better, < 0.2 F1 (Fig. 15)"
    ens, base, metric = ENSEMBLE_CLAIM
    e_lab, s_lab = det.get(ens), det.get(base)
    both = [
        (num(r.get(f"{s_lab}.{metric}")), num(r.get(f"{e_lab}.{metric}")))
        for r in rows
        if s_lab and e_lab
    ]
    both = [(a, b) for a, b in both if not (math.isnan(a) or math.isnan(b))]
    if not both:
        return Claim(text, paper, "not in this sweep", None, "ensemble-beats-strip")
    gain = float(np.mean([b - a for a, b in both]))
    measured = f"mean F1 gain {gain:+.3f} over {len(both)} cells"
    return Claim(text, paper, measured, 0 < gain < 0.2, "ensemble-beats-strip")


def _trend(rows: Sequence[Row], var: str) -> float | None:
    """Mean Spearman correlation of efficacy with ``var`` within each group where the other
    grid variables are fixed."""
    from scipy.stats import spearmanr

    other = "transparency" if var == "size" else "size"
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["attack"], r[other], r["seed"])].append(
            (num(r[var]), num(r["efficacy"]))
        )
    rhos = []
    for pts in groups.values():
        xs, ys = zip(*pts, strict=True) if pts else ((), ())
        if len(set(xs)) < 2 or len(set(ys)) < 2:
            continue
        rhos.append(float(spearmanr(xs, ys).statistic))
    return float(np.mean(rhos)) if rhos else None


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
        rho = _trend(attacked(rows), var)
        sign = -1 if var == "transparency" else 1
        if rho is None:
            out.append(Claim(text, "steeply (Fig. 10)", f"the sweep has one {var}", None, claim_id))
        else:
            measured = f"mean Spearman rho of efficacy vs {var}: {rho:+.2f}"
            out.append(Claim(text, "steeply (Fig. 10)", measured, sign * rho > 0, claim_id))
    return out


def claims(rows: Sequence[Row], det: Mapping[str, str]) -> list[Claim]:
    """The paper's claims evaluated on the sweep's rows; ``det`` maps a detector's registry
    name to its label in the sweep (the prefix of its row columns)."""
    ps = [(b, s) for b, s in pairs(rows) if b.get("asr") is not None and s.get("asr") is not None]
    out = _asr_claims(ps)
    for spec in EVASION_CLAIMS:
        label = det.get(spec.detector)
        if is_filter(spec.detector):
            out.append(_lower(spec, f"{label}.{spec.metric}", ps))
        else:
            out.append(_evaded(spec, label, ps))
    out.append(_ensemble_claim(rows, det))
    return out + _trend_claims(rows)
