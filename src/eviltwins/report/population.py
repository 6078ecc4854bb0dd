"""The scanner over a sweep's models: how well each model inspector tells the backdoored models
(every attacked cell) from the clean ones (the sweep's ``none`` cells), as the field measures
scanners on populations of models (:func:`~eviltwins.metrics.rank_scores`).

An inspector's per-model statistic is its largest anomaly over the labels (NeuralCleanse's
largest index, ABS's largest REASR; an ABS run with no candidate neuron scores 0: nothing
tested, nothing found). Each attack is ranked against all the clean models, and all attacks
together; beside the ranking figures, the inspector's own verdict (a label flagged) as the share
of backdoored and of clean models it flags, and the share of backdoored models whose flagged
labels include the true target.
"""

from __future__ import annotations

from collections.abc import Sequence

from eviltwins.metrics import rank_scores
from eviltwins.report.cells import Shown
from eviltwins.report.table import Row, attacked, num

POPULATION_HEAD = [
    "inspector",
    "attack",
    "backdoored / clean models",
    "AUC",
    "FPR at 95% TPR",
    "TPR at 5% FPR",
    "flags backdoored",
    "flags clean",
    "target among flagged",
]


def _score(row: Row, label: str) -> float:
    if row.get(f"{label}.no_candidate"):
        return 0.0
    return num(row.get(f"{label}.max_anomaly"))


def _flags(row: Row, label: str) -> list[str]:
    return str(row.get(f"{label}.flagged") or "").split()


def _share(hits: Sequence[bool]) -> str:
    return f"{sum(hits) / len(hits):.2f}" if hits else ""


def population_table(rows: Sequence[Row], shown: Sequence[Shown]) -> list[list[str]]:
    """One row per model inspector and attack (then ``all attacks``), under
    :data:`POPULATION_HEAD`; empty without clean models or backdoored ones."""
    clean = [r for r in rows if r["attack_name"] == "none"]
    bad = attacked(rows)
    if not clean or not bad:
        return []
    out = []
    for s in (s for s in shown if not s.is_filter):
        groups = {
            a: [r for r in bad if r["attack"] == a] for a in dict.fromkeys(r["attack"] for r in bad)
        }
        if len(groups) > 1:
            groups["all attacks"] = bad
        for attack, group in groups.items():
            models = [r for r in group + clean if _score(r, s.label) == _score(r, s.label)]
            if not models:
                continue
            y = [r["attack_name"] != "none" for r in models]
            fig = rank_scores([_score(r, s.label) for r in models], y)
            back = [r for r in models if r["attack_name"] != "none"]
            neat = [r for r in models if r["attack_name"] == "none"]
            out.append(
                [
                    s.metric.name or s.label,
                    attack,
                    f"{len(back)} / {len(neat)}",
                    f"{fig['auc']:.3f}",
                    f"{fig['fpr_at_tpr']:.2f}",
                    f"{fig['tpr_at_fpr']:.2f}",
                    _share([bool(_flags(r, s.label)) for r in back]),
                    _share([bool(_flags(r, s.label)) for r in neat]),
                    _share([str(r["target"]) in _flags(r, s.label) for r in back]),
                ]
            )
    return out
