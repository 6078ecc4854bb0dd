"""The report's table: a cell flattened to one CSV row, the CSV, and the aggregation the figures,
claims and summary use (mean ± std over seeds, series, TrojanNN*/baseline pairs).

TrojanNN* is paired with its baseline by name: an ``imc`` cell with ``init: X`` is compared with
the ``X`` cell of the same dataset, model, size, transparency and seed.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eviltwins.detectors.reports import is_tested
from eviltwins.report.cells import CellLike, Shown

Row = dict[str, Any]

ATTACK_COLUMNS = ("asr", "efficacy", "clean_acc", "benign_acc", "acc_drop", "mask_l1")
FILTER_COLUMNS = ("f1", "precision", "recall", "frr", "far", "auc")
# an input filter's summary columns unless its report_metric names its own
FILTER_SUMMARY = (
    ("f1", "{label} F1"),
    ("f1_all_stamped", "{label} F1, all stamped"),
    ("n_triggered", "{label} triggered inputs"),
)


# --- rows ------------------------------------------------------------------------------------
def flatten(cell: CellLike) -> Row:
    """One CSV row of a finished cell."""
    cfg = cell.cell
    params = cfg.params or {}
    row: Row = {
        "key": cell.key,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "attack": cfg.label or cfg.attack,
        "attack_name": cfg.attack,
        "init": params.get("init", "trojannn") if cfg.attack == "imc" else "",
        "size": cfg.size,
        "transparency": cfg.transparency,
        "seed": cfg.seed,
        "target": cell.target,
        "seconds": cell.seconds,
    }
    metrics = (cell.attack.metrics if cell.attack is not None else None) or {}
    for k in ATTACK_COLUMNS:
        row[k] = metrics.get(k)
    for label, d in (cell.detectors or {}).items():
        if d.skipped is not None:
            continue
        details = d.details or {}
        if d.kind == "filter":
            for k in FILTER_COLUMNS:
                row[f"{label}.{k}"] = (d.metrics or {}).get(k)
            # set sizes of the protocol used, and the all-stamped variant beside it
            row[f"{label}.n_clean"] = d.n_clean
            row[f"{label}.n_triggered"] = d.n_triggered
            all_stamped = d.all_stamped or {}
            row[f"{label}.f1_all_stamped"] = (all_stamped.get("metrics") or {}).get("f1")
            row[f"{label}.n_all_stamped"] = all_stamped.get("n_triggered")
        else:
            no_candidate = bool(details.get("no_candidate"))
            row[f"{label}.max_anomaly"] = None if no_candidate else d.max_anomaly
            # blank when the target was untested (ABS: no candidate for it), also in results
            # written before untested targets were left out
            tested = not no_candidate and is_tested(details, cell.target)
            row[f"{label}.target_anomaly"] = d.target_anomaly if tested else None
            row[f"{label}.target_flagged"] = d.target_flagged
            row[f"{label}.flagged"] = " ".join(str(i) for i in d.flagged or [])
            if "no_candidate" in details:
                row[f"{label}.no_candidate"] = no_candidate
            if details.get("steps"):
                row[f"{label}.steps_per_label"] = float(np.mean(details["steps"]))
        row[f"{label}.seconds"] = d.seconds if d.seconds is not None else details.get("seconds")
        row[f"{label}.peak_mb"] = getattr(d, "peak_mb", None)
    return row


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """All rows as CSV (the union of their columns, in first-seen order), written atomically."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    os.replace(tmp, path)


# --- aggregation -------------------------------------------------------------------------------
def num(v: Any) -> float:
    """``v`` as a float; NaN where it is none (missing, text, too large)."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return f


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation of the non-NaN values (NaN, NaN when there are none)."""
    a = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    with np.errstate(invalid="ignore"):  # an infinite value (an anomaly index can be) has no std
        return float(a.mean()), float(a.std()) if a.size > 1 else 0.0


def series(
    rows: Sequence[Row], x: str, y: str, group: Callable[[Row], str]
) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """group -> (xs, mean ys, std ys) averaged over seeds."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        xv, yv = num(r.get(x)), num(r.get(y))
        if math.isnan(xv) or math.isnan(yv):
            continue
        acc[group(r)][xv].append(yv)
    out = {}
    for g, pts in acc.items():
        xs = sorted(pts)
        ms = [mean_std(pts[v]) for v in xs]
        out[g] = (xs, [m for m, _ in ms], [s for _, s in ms])
    return out


def panels(rows: Sequence[Row], key: str) -> list[Any]:
    """The sorted distinct values of ``key`` (a grid axis) among the rows."""
    return sorted({r[key] for r in rows if r.get(key) is not None})


def datasets(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """The sorted (dataset, model) pairs of the rows."""
    return sorted({(r["dataset"], r["model"]) for r in rows})


def attacked(rows: Sequence[Row]) -> list[Row]:
    """The rows of backdoored models (every attack but ``none``)."""
    return [r for r in rows if r["attack_name"] != "none"]


def pairs(rows: Sequence[Row]) -> list[tuple[Row, Row]]:
    """(baseline, starred) row pairs: an imc cell and the cell of its ``init`` attack at the
    same dataset, model, size, transparency and seed."""
    index: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        index[
            (r["attack_name"], r["dataset"], r["model"], r["size"], r["transparency"], r["seed"])
        ].append(r)
    out = []
    for r in rows:
        if r["attack_name"] != "imc":
            continue
        for b in index.get(
            (r["init"], r["dataset"], r["model"], r["size"], r["transparency"], r["seed"]), []
        ):
            out.append((b, r))
    return out


def summary_table(rows: Sequence[Row], shown: Sequence[Shown]) -> tuple[list[str], list[list[str]]]:
    """The report's results table: one line per (dataset, model, attack, size, transparency)
    with the mean ± std over seeds of the attack's numbers and each shown detector's columns
    (its flagged labels as text, one entry per seed)."""
    cols = [
        ("asr", "ASR"),
        ("efficacy", "efficacy"),
        ("clean_acc", "clean acc"),
        ("acc_drop", "acc drop"),
    ]
    for s in shown:
        for key, head in s.metric.columns or (FILTER_SUMMARY if s.is_filter else ()):
            cols.append((s.column(key), head.format(label=s.label)))
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["attack"], r["size"], r["transparency"])].append(r)
    head = ["dataset", "model", "attack", "size", "transparency", "seeds"] + [c[1] for c in cols]
    body = []
    for (ds, m, a, s, t), rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        line = [
            ds,
            m,
            a,
            "" if s is None else f"{s:g}",
            "" if t is None else f"{t:g}",
            str(len(rs)),
        ]
        for col, _ in cols:
            if col.endswith(".flagged"):  # text: the flagged labels of each seed
                line.append("; ".join(str(r.get(col) or "none") for r in rs))
                continue
            mean, std = mean_std([num(r.get(col)) for r in rs])
            line.append(
                "" if math.isnan(mean) else f"{mean:.3f}" + (f" ± {std:.3f}" if std else "")
            )
        body.append(line)
    return head, body
