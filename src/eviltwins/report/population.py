"""The scanner over a sweep's models: how well each model inspector tells the backdoored models
(every attacked cell) from the clean ones (the sweep's ``none`` cells), as the field measures
scanners on populations of models: the TrojAI rounds score one p(trojan) per model by
cross-entropy and ROC-AUC, the Trojan Detection Challenge by AUROC and FPR at 95% TPR
(:func:`~eviltwins.metrics.rank_scores`, :func:`~eviltwins.metrics.population_scores`).

An inspector's per-model statistic is its largest anomaly over the labels
(:func:`~eviltwins.detectors.calibration.largest_anomaly`: NeuralCleanse's largest index, ABS's
largest REASR, 0 when ABS found no candidate). Each attack is ranked against all the clean
models, then all attacks together:

- AUC, FPR at 95% TPR and TPR at 5% FPR of the statistic itself;
- cross-entropy and Brier score of p(trojan), a logistic model of the statistic fitted out of
  fold on the whole population (:func:`~eviltwins.detectors.calibration.out_of_fold_p`: no
  model is scored by a fit that saw it);
- the inspector's own verdict (a label flagged) as the share of backdoored and of clean models
  it flags, and the share of backdoored models whose flagged labels include the true target;
- the scan's seconds and peak memory per model (mean and largest over the models).

The combined rows ("p(trojan)") fit one logistic model on the first entry of each inspector
together: a model is flagged when its out-of-fold p(trojan) >= 0.5. Backdoors that did not take
(ASR below :data:`TOOK_ASR`) stay in the population and are counted in their own column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eviltwins.detectors.calibration import largest_anomaly, out_of_fold_p
from eviltwins.metrics import population_scores, rank_scores
from eviltwins.report.table import Row, attacked, num

#: A backdoor "took" when its ASR reaches this; the ones below are kept and counted.
TOOK_ASR = 0.5
COMBINED = "p(trojan)"
POPULATION_HEAD = [
    "inspector",
    "attack",
    "backdoored / clean models",
    f"ASR below {TOOK_ASR:g}",
    "AUC",
    "cross-entropy",
    "Brier",
    "FPR at 95% TPR",
    "TPR at 5% FPR",
    "flags backdoored",
    "flags clean",
    "target among flagged",
    "seconds per model",
    "peak MiB",
]


def model_score(row: Row, label: str) -> float:
    """The inspector ``label``'s statistic for the model of ``row`` (NaN: not measured)."""
    top = num(row.get(f"{label}.max_anomaly"))
    return largest_anomaly(None if top != top else top, bool(row.get(f"{label}.no_candidate")))


def inspector_labels(rows: Sequence[Row]) -> list[str]:
    """The sweep labels of the model inspectors in ``rows`` (those with a largest anomaly), in
    first-seen order."""
    out: list[str] = []
    for r in rows:
        out += [k[: -len(".max_anomaly")] for k in r if k.endswith(".max_anomaly")]
    return list(dict.fromkeys(out))


def _flags(row: Row, labels: Sequence[str]) -> set[str]:
    return {f for lab in labels for f in str(row.get(f"{lab}.flagged") or "").split()}


def _share(hits: Sequence[bool]) -> str:
    return f"{sum(hits) / len(hits):.2f}" if hits else ""


def _fmt(v: float, digits: int) -> str:
    return "" if v != v else f"{v:.{digits}f}"


def population_table(
    rows: Sequence[Row], inspectors: Sequence[str], combined: Sequence[str] = (), seed: int = 0
) -> list[list[str]]:
    """One row per model inspector (its sweep label, in ``inspectors``) and attack (then ``all
    attacks``), then the same for p(trojan) fitted on the ``combined`` labels together (none
    when fewer than two), under :data:`POPULATION_HEAD`; empty without clean models or
    backdoored ones. ``seed`` seeds the out-of-fold split."""
    clean = [r for r in rows if r["attack_name"] == "none"]
    if not clean or not attacked(rows):
        return []
    groups = [[lab] for lab in inspectors]
    if len(combined) >= 2:
        groups.append(list(combined))
    out = []
    for labels in groups:
        models = [
            r for r in rows if all(model_score(r, lab) == model_score(r, lab) for lab in labels)
        ]
        y = np.array([r["attack_name"] != "none" for r in models])
        if y.all() or not y.any():
            continue
        x = np.array([[model_score(r, lab) for lab in labels] for r in models])
        p = out_of_fold_p(x, y, seed=seed) if min(y.sum(), (~y).sum()) >= 2 else None
        name = labels[0] if len(labels) == 1 else f"{COMBINED}: {' + '.join(labels)}"
        out += _rows(name, labels, models, x, y, p)
    return out


def _rows(
    name: str,
    labels: Sequence[str],
    models: Sequence[Row],
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray | None,
) -> list[list[str]]:
    bad = [r for r in models if r["attack_name"] != "none"]
    kinds = {a: [r["attack"] == a for r in models] for a in dict.fromkeys(r["attack"] for r in bad)}
    if len(kinds) > 1:
        kinds["all attacks"] = [True] * len(models)
    out = []
    for attack, mine in kinds.items():
        keep = np.array(mine) | ~y  # the attack's models and every clean one
        score = p[keep] if p is not None and len(labels) > 1 else x[keep, 0]
        ranked = rank_scores(score, y[keep])
        fit = population_scores(p[keep], y[keep]) if p is not None else {}
        group = [r for r, k in zip(models, keep, strict=True) if k]
        back = [r for r in group if r["attack_name"] != "none"]
        neat = [r for r in group if r["attack_name"] == "none"]
        if len(labels) > 1 and p is not None:
            flagged = {id(r): bool(v >= 0.5) for r, v in zip(group, p[keep], strict=True)}
        else:
            flagged = {id(r): bool(_flags(r, labels)) for r in group}
        secs = [sum(num(r.get(f"{lab}.seconds")) for lab in labels) for r in group]
        peaks = [num(r.get(f"{lab}.peak_mb")) for r in group for lab in labels]
        peaks = [v for v in peaks if v == v]
        out.append(
            [
                name,
                attack,
                f"{len(back)} / {len(neat)}",
                str(sum(num(r.get("asr")) < TOOK_ASR for r in back)),
                f"{ranked['auc']:.3f}",
                _fmt(fit.get("cross_entropy", float("nan")), 3),
                _fmt(fit.get("brier", float("nan")), 3),
                f"{ranked['fpr_at_tpr']:.2f}",
                f"{ranked['tpr_at_fpr']:.2f}",
                _share([flagged[id(r)] for r in back]),
                _share([flagged[id(r)] for r in neat]),
                _share([str(r["target"]) in _flags(r, labels) for r in back]),
                _fmt(float(np.nanmean(secs)) if secs else float("nan"), 1),
                _fmt(max(peaks) if peaks else float("nan"), 0),
            ]
        )
    return out
