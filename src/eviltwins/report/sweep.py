"""The sweep report: a CSV of every cell, the paper's figures, and the claims table.

``write_report(run_dir)`` reads ``run_dir/cells/*.json`` (written by
:func:`eviltwins.experiments.run_sweep`) and writes into ``run_dir/report/``:

- ``cells.csv``: one row per cell (attack metrics, and per detector its verdict numbers);
- the figures the grid supports, laid out like the paper's: ``fig10_efficacy.png`` (efficacy
  heat map over size x transparency), ``fig11_triggers.png`` (stamped samples per attack and
  size), ``fig12_asr_vs_size.png`` (one panel per transparency), ``fig13_asr_vs_transparency.png``
  (one panel per size), ``fig14_detectors_vs_size.png`` (NeuralCleanse anomaly index of the
  target label and STRIP F1), ``fig15_strip_vs_ensemble.png``, ``abs_reasr_vs_size.png``;
- ``report.md`` and ``report.html``: each of the paper's claims (ALGORITHMS.md, last section)
  next to the measured value and whether it holds here, the figures, and a per-cell table.

A cell file that cannot be used (cut short, not JSON, the wrong shape) is left out and named:
in :attr:`Report.unreadable`, the summary and ``report.md``; the sweep recomputes it.

TrojanNN* is paired with its baseline by name: an ``imc`` cell with ``init: X`` is compared with
the ``X`` cell of the same dataset, model, size, transparency and seed.
"""

from __future__ import annotations

import csv
import html
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eviltwins.errors import DataError  # noqa: E402
from eviltwins.io import read_json, write_json  # noqa: E402

REPORT_SCHEMA = "eviltwins.report/1"
ATTACK_COLUMNS = ("asr", "efficacy", "clean_acc", "benign_acc", "acc_drop", "mask_l1")
FILTER_COLUMNS = ("f1", "precision", "recall", "frr", "far", "auc")
NC_THRESHOLD = 2.0
ABS_THRESHOLD = 0.8
CAUGHT_F1 = 0.5  # an input filter "catches" an attack at this F1 (for the evasion claims)
ASR_TOLERANCE = 0.02  # "TrojanNN* >= TrojanNN" allows this much seed noise per pair
WEAK_BASELINE = 0.7  # a setting is "hard" when the baseline's ASR is below this


@dataclass
class Claim:
    """One of the paper's claims with the measured value and the verdict."""

    claim: str
    paper: str
    measured: str
    holds: bool | None  # None: the sweep does not measure it

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not measured"}[self.holds]

    def to_dict(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "paper": self.paper,
            "measured": self.measured,
            "holds": self.holds,
            "verdict": self.verdict,
        }


@dataclass
class Report:
    """What :func:`write_report` wrote: paths, rows, claims."""

    out: Path
    rows: list[dict[str, Any]]
    claims: list[Claim]
    figures: list[Path] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # "cells/<name>" -> why

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "out": str(self.out),
            "cells": len(self.rows),
            "failed": len(self.failed),
            "unreadable": self.unreadable,
            "claims": [c.to_dict() for c in self.claims],
            "figures": [str(p) for p in self.figures],
        }

    def summary(self) -> str:
        lines = [
            f"report {self.out}: {len(self.rows)} cells ({len(self.failed)} failed), "
            f"{len(self.figures)} figures, report.md / report.html"
        ]
        if self.unreadable:
            lines.append(f"  {unreadable_line(self.unreadable)}")
        for c in self.claims:
            if c.holds is not None:
                lines.append(f"  [{c.verdict}] {c.claim}: {c.measured}")
        return "\n".join(lines)

    def unreadable_lines(self) -> list[str]:
        """One warning line per unusable cell file (at most 10, then a count)."""
        items = list(self.unreadable.items())
        out = [
            " ".join(
                f"cell file {name} unreadable ({why}); re-run the sweep to recompute it".split()
            )
            for name, why in items[:10]
        ]
        if len(items) > 10:
            out.append(f"... and {len(items) - 10} more unreadable cell files")
        return out


def unreadable_line(unreadable: dict[str, str]) -> str:
    """``N cell file(s) unreadable: cells/x.json (why), ...; re-run the sweep ...``."""
    n = len(unreadable)
    shown = ", ".join(f"{k} ({v})" for k, v in list(unreadable.items())[:3])
    more = f", and {n - 3} more" if n > 3 else ""
    noun = "file" if n == 1 else "files"
    it = "it" if n == 1 else "them"
    line = f"{n} cell {noun} unreadable: {shown}{more}; re-run the sweep to recompute {it}"
    return " ".join(line.split())


# --- rows ------------------------------------------------------------------------------------
def flatten(cell: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a finished cell."""
    cfg = cell["cell"]
    params = cfg.get("params", {})
    row: dict[str, Any] = {
        "key": cell["key"],
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "attack": cfg.get("label") or cfg["attack"],
        "attack_name": cfg["attack"],
        "init": params.get("init", "trojannn") if cfg["attack"] == "imc" else "",
        "size": cfg.get("size"),
        "transparency": cfg.get("transparency"),
        "seed": cfg["seed"],
        "target": cell.get("target"),
        "seconds": cell.get("seconds"),
    }
    metrics = cell.get("attack", {}).get("metrics", {})
    for k in ATTACK_COLUMNS:
        row[k] = metrics.get(k)
    for label, d in cell.get("detectors", {}).items():
        if "skipped" in d:
            continue
        if d.get("kind") == "filter":
            for k in FILTER_COLUMNS:
                row[f"{label}.{k}"] = d["metrics"].get(k)
            # set sizes of the protocol used, and the all-stamped variant beside it
            row[f"{label}.n_clean"] = d.get("n_clean")
            row[f"{label}.n_triggered"] = d.get("n_triggered")
            all_stamped = d.get("all_stamped") or {}
            row[f"{label}.f1_all_stamped"] = (all_stamped.get("metrics") or {}).get("f1")
            row[f"{label}.n_all_stamped"] = all_stamped.get("n_triggered")
        else:
            details = d.get("details", {})
            no_candidate = bool(details.get("no_candidate"))
            row[f"{label}.max_anomaly"] = None if no_candidate else d.get("max_anomaly")
            row[f"{label}.target_anomaly"] = None if no_candidate else d.get("target_anomaly")
            row[f"{label}.target_flagged"] = d.get("target_flagged")
            row[f"{label}.flagged"] = " ".join(str(i) for i in d.get("flagged", []))
            if "no_candidate" in details:
                row[f"{label}.no_candidate"] = no_candidate
            if details.get("steps"):
                row[f"{label}.steps_per_label"] = float(np.mean(details["steps"]))
        row[f"{label}.seconds"] = d.get("seconds", d.get("details", {}).get("seconds"))
    return row


def detector_labels(cells: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Detector name -> the label of its first entry in the sweep (for figures and claims)."""
    out: dict[str, str] = {}
    for c in cells:
        for d in c["cell"].get("detectors", []):
            out.setdefault(d["name"], d.get("label") or d["name"])
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_csv(r.get(k)) for k in cols})
    os.replace(tmp, path)


def _fmt_csv(v: Any) -> Any:
    return "" if v is None else v


# --- aggregation -------------------------------------------------------------------------------
def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return f


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    with np.errstate(invalid="ignore"):  # an infinite value (an anomaly index can be) has no std
        return float(a.mean()), float(a.std()) if a.size > 1 else 0.0


def _series(
    rows: Sequence[dict[str, Any]], x: str, y: str, group: Callable[[dict], str]
) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """group -> (xs, mean ys, std ys) averaged over seeds."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        xv, yv = _num(r.get(x)), _num(r.get(y))
        if math.isnan(xv) or math.isnan(yv):
            continue
        acc[group(r)][xv].append(yv)
    out = {}
    for g, pts in acc.items():
        xs = sorted(pts)
        ms = [_mean_std(pts[v]) for v in xs]
        out[g] = (xs, [m for m, _ in ms], [s for _, s in ms])
    return out


def _panels(rows: Sequence[dict[str, Any]], key: str) -> list[Any]:
    return sorted({r[key] for r in rows if r.get(key) is not None})


def _datasets(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted({(r["dataset"], r["model"]) for r in rows})


def _attacked(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["attack_name"] != "none"]


# --- figures -----------------------------------------------------------------------------------
def _style(label: str) -> dict[str, Any]:
    star = label.endswith("*")
    return {"marker": "o" if star else "s", "linestyle": "-" if star else "--"}


def _line_figure(
    rows: Sequence[dict[str, Any]],
    path: Path,
    *,
    x: str,
    panel_key: str,
    metrics: Sequence[tuple[str, str, float | None]],
    title: str,
    group: Callable[[dict], str] = lambda r: r["attack"],
    ylim: tuple[float, float] | None = None,
    clean_rows: Sequence[dict[str, Any]] = (),
) -> Path | None:
    """Rows: (dataset, model) x metric; columns: values of ``panel_key``; a line per group.
    ``metrics`` are (column, axis label, threshold line or None)."""
    blocks = _datasets(rows)
    panels = _panels(rows, panel_key) if panel_key else [None]
    if not blocks or not any(_num(r.get(m)) == _num(r.get(m)) for r in rows for m, _, _ in metrics):
        return None
    nr, nc = len(blocks) * len(metrics), len(panels)
    fig, axes = plt.subplots(nr, nc, figsize=(3.6 * nc, 2.9 * nr), squeeze=False)
    for bi, (ds, model) in enumerate(blocks):
        for mi, (col, ylabel, thr) in enumerate(metrics):
            for pi, pv in enumerate(panels):
                ax = axes[bi * len(metrics) + mi, pi]
                sel = [
                    r
                    for r in rows
                    if r["dataset"] == ds
                    and r["model"] == model
                    and (panel_key is None or r.get(panel_key) == pv)
                ]
                ticks: set[float] = set()
                for g, (xs, ms, ss) in sorted(_series(sel, x, col, group).items()):
                    ax.errorbar(xs, ms, yerr=ss, label=g, capsize=2, **_style(g))
                    ticks.update(xs)
                if 0 < len(ticks) <= 10:
                    ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
                for cr in clean_rows:
                    if cr["dataset"] == ds and cr["model"] == model:
                        v = _num(cr.get(col))
                        if not math.isnan(v):
                            ax.axhline(v, color="grey", linestyle=":", label="clean model")
                            break
                if thr is not None:
                    ax.axhline(thr, color="red", linewidth=0.8, linestyle="-.", label="threshold")
                if ylim:
                    ax.set_ylim(*ylim)
                ax.set_xlabel(x)
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
                head = f"{ds} / {model}"
                if panel_key:
                    head += f", {panel_key} {pv:g}"
                ax.set_title(head, fontsize=9)
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig10_efficacy(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Efficacy over size x transparency, one heat map per (dataset, attack) (paper Fig. 10)."""
    rows = _attacked(rows)
    sizes, trs = _panels(rows, "size"), _panels(rows, "transparency")
    if len(sizes) < 2 or len(trs) < 2:
        return None
    blocks = [(b, a) for b in _datasets(rows) for a in sorted({r["attack"] for r in rows})]
    nc = min(4, len(blocks))
    nr = -(-len(blocks) // nc)
    fig, axes = plt.subplots(nr, nc, figsize=(3.8 * nc, 3.2 * nr), squeeze=False)
    for ax in axes.flat[len(blocks) :]:
        ax.axis("off")
    for ax, ((ds, model), atk) in zip(axes.flat, blocks, strict=False):
        grid = np.full((len(trs), len(sizes)), np.nan)
        for i, tr in enumerate(trs):
            for j, s in enumerate(sizes):
                vals = [
                    _num(r["efficacy"])
                    for r in rows
                    if (r["dataset"], r["model"], r["attack"]) == (ds, model, atk)
                    and r["size"] == s
                    and r["transparency"] == tr
                ]
                grid[i, j] = _mean_std(vals)[0]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for i in range(len(trs)):
            for j in range(len(sizes)):
                if not math.isnan(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black",
                    )
        ax.set_xticks(range(len(sizes)), [f"{s:g}" for s in sizes])
        ax.set_yticks(range(len(trs)), [f"{t:g}" for t in trs])
        ax.set_xlabel("trigger size")
        ax.set_ylabel("transparency")
        ax.set_title(f"{atk} on {ds}/{model}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Attack efficacy over trigger size and transparency (Fig. 10)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig11_triggers(
    rows: Sequence[dict[str, Any]], run_dir: Path, path: Path, classes: dict[str, Sequence[str]]
) -> Path | None:
    """Stamped samples: one row per (dataset, attack, transparency), one column per size, each
    titled with the cell's ASR and the poisoned model's prediction (paper Fig. 11)."""
    from safetensors.torch import load_file

    from eviltwins.report.figures import _show

    rows = [r for r in _attacked(rows) if r["seed"] == min(x["seed"] for x in rows)]
    sizes = _panels(rows, "size")
    lines = sorted({(r["dataset"], r["model"], r["attack"], r["transparency"]) for r in rows})
    if not lines or not sizes:
        return None
    fig, axes = plt.subplots(
        len(lines), len(sizes), figsize=(1.9 * len(sizes) + 1.2, 2.0 * len(lines)), squeeze=False
    )
    for i, (ds, model, atk, tr) in enumerate(lines):
        for j, s in enumerate(sizes):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            match = [
                r
                for r in rows
                if (r["dataset"], r["model"], r["attack"], r["transparency"], r["size"])
                == (ds, model, atk, tr, s)
            ]
            f = run_dir / "cells" / match[0]["key"] / "examples.safetensors" if match else None
            try:  # a missing or damaged examples file leaves the panel empty
                ex = load_file(str(f)) if f is not None and f.is_file() else None
                if ex is not None:
                    _show(ax, ex["stamped"][0])
                    pred = int(ex["pred"][0])
            except Exception:
                ex = None
            if ex is None:
                ax.axis("off")
                continue
            names = classes.get(ds) or ()
            shown = names[pred] if pred < len(names) else str(pred)
            ax.set_title(
                f"size {s:g}: ASR {_num(match[0]['asr']):.2f}\npred {shown}",
                fontsize=7,
                color="red" if pred == match[0]["target"] else "black",
            )
            if j == 0:
                ax.set_ylabel(f"{atk}\n{ds}, tr {tr:g}", fontsize=8)
    fig.suptitle("Stamped samples per attack and trigger size (Fig. 11)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- claims ------------------------------------------------------------------------------------
def pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(baseline, starred) row pairs: an imc cell and the cell of its ``init`` attack at the
    same dataset, model, size, transparency and seed."""
    index: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
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


def _pair_label(ps: Sequence[tuple[dict, dict]]) -> str:
    names = sorted({f"{s['attack']} vs {b['attack']}" for b, s in ps})
    return ", ".join(names)


def claims(rows: Sequence[dict[str, Any]], det: dict[str, str]) -> list[Claim]:
    """The paper's claims (ALGORITHMS.md, 'Claims a faithful implementation should show')
    evaluated on the sweep's cells."""
    ps = [(b, s) for b, s in pairs(rows) if b.get("asr") is not None and s.get("asr") is not None]
    out: list[Claim] = []
    deltas = [_num(s["asr"]) - _num(b["asr"]) for b, s in ps]
    if deltas:
        worst = min(range(len(ps)), key=lambda i: deltas[i])
        b, s = ps[worst]
        out.append(
            Claim(
                "TrojanNN* >= TrojanNN in ASR at every size and transparency",
                "at every setting (Figs. 12-13)",
                f"{_pair_label(ps)}: {sum(d >= -ASR_TOLERANCE for d in deltas)}/{len(deltas)} "
                f"pairs within {ASR_TOLERANCE} or better; mean delta {np.mean(deltas):+.3f}; "
                f"worst {deltas[worst]:+.3f} (size {b['size']:g}, transparency "
                f"{b['transparency']:g}, {b['dataset']})",
                all(d >= -ASR_TOLERANCE for d in deltas),
            )
        )
        hard = [
            (d, b) for d, (b, _) in zip(deltas, ps, strict=True) if _num(b["asr"]) < WEAK_BASELINE
        ]
        if hard:
            d, b = max(hard, key=lambda t: t[0])
            out.append(
                Claim(
                    f"where the baseline is weak (ASR < {WEAK_BASELINE}), TrojanNN* gains >= 0.2 ASR",
                    "+0.36 to +0.39 (CIFAR10 0.3/0.2, GTSRB 0.4/0.7)",
                    f"largest gain {d:+.3f} at size {b['size']:g}, transparency "
                    f"{b['transparency']:g} ({b['dataset']}); {len(hard)} hard pair(s)",
                    d >= 0.2,
                )
            )
        else:
            out.append(
                Claim(
                    f"where the baseline is weak (ASR < {WEAK_BASELINE}), TrojanNN* gains >= 0.2 ASR",
                    "+0.36 to +0.39 (CIFAR10 0.3/0.2, GTSRB 0.4/0.7)",
                    "no setting of this sweep has a weak baseline",
                    None,
                )
            )
        drops = [_num(s["acc_drop"]) for _, s in ps]
        out.append(
            Claim(
                "TrojanNN* keeps clean accuracy (drop <= 1.5 points)",
                "negligible accuracy impact",
                f"largest drop {100 * max(drops):.2f} points over {len(drops)} cells",
                max(drops) <= 0.015,
            )
        )
    else:
        out.append(
            Claim(
                "TrojanNN* >= TrojanNN in ASR at every size and transparency",
                "at every setting (Figs. 12-13)",
                "the sweep has no imc / baseline pairs",
                None,
            )
        )

    def efficacy_note(rows_: Sequence[dict[str, Any]]) -> str:
        eff = [_num(r.get("efficacy")) for r in rows_]
        eff = [e for e in eff if not math.isnan(e)]
        return f"; TrojanNN* efficacy {min(eff):.3f}-{max(eff):.3f}" if eff else ""

    def lower(metric: str, name: str, text: str, paper: str) -> None:
        """An input filter's measure (STRIP's F1) is lower against the starred attack."""
        label = det.get(name)
        col = f"{label}.{metric}"
        vals = [(_num(b.get(col)), _num(s.get(col)), s) for b, s in ps]
        vals = [(x, y, s) for x, y, s in vals if not (math.isnan(x) or math.isnan(y))]
        if not vals:
            out.append(Claim(text, paper, "not in this sweep", None))
            return
        mb, ms = np.mean([x for x, _, _ in vals]), np.mean([y for _, y, _ in vals])
        caught = sum(x >= CAUGHT_F1 for x, _, _ in vals)
        out.append(
            Claim(
                text,
                paper,
                f"mean {mb:.3f} (baseline) vs {ms:.3f} (TrojanNN*) over {len(vals)} pairs; "
                f"baseline caught (F1 >= {CAUGHT_F1}) in {caught}/{len(vals)}"
                + efficacy_note([s for _, _, s in vals]),
                bool(ms < mb) if caught else None,  # nothing to evade where nothing is caught
            )
        )

    def evaded(metric: str, name: str, text: str, paper: str) -> None:
        """A model inspector is evaded only where its verdict on the starred model is clean
        (no label flagged), not merely where the target's measure is lower; both are shown."""
        label = det.get(name)
        col, flagged = f"{label}.{metric}", f"{label}.flagged"
        vals = [(_num(b.get(col)), _num(s.get(col)), b, s) for b, s in ps]
        vals = [v for v in vals if not (math.isnan(v[0]) or math.isnan(v[1]))]
        if not vals:
            out.append(Claim(text, paper, "not in this sweep", None))
            return
        mb, ms = np.mean([v[0] for v in vals]), np.mean([v[1] for v in vals])
        n_clean = sum(not s.get(flagged) for *_, s in vals)
        alarms = sorted({str(s.get(flagged)) for *_, s in vals if s.get(flagged)})
        caught = sum(bool(b.get(f"{label}.target_flagged")) for _, _, b, _ in vals)
        out.append(
            Claim(
                text,
                paper,
                f"target measure mean {mb:.3f} (baseline) vs {ms:.3f} (TrojanNN*) over "
                f"{len(vals)} pairs; baseline target flagged in {caught}/{len(vals)}; "
                f"TrojanNN* verdict clean (no label flagged) in {n_clean}/{len(vals)}"
                + (f" (labels flagged: {'; '.join(alarms)})" if alarms else "")
                + efficacy_note([s for *_, s in vals]),
                # an evasion needs a detection to evade: no verdict where no baseline is flagged
                bool(ms < mb and n_clean == len(vals)) if caught else None,
            )
        )

    evaded(
        "target_anomaly",
        "neural-cleanse",
        "NeuralCleanse is evaded by TrojanNN* (lower target index, no label flagged)",
        "index gap > 2 (Fig. 14)",
    )
    lower(
        "f1", "strip", "STRIP's F1 is lower against TrojanNN* than TrojanNN", "much lower (Fig. 14)"
    )
    evaded(
        "target_anomaly",
        "abs",
        "ABS is evaded by TrojanNN* (lower target REASR, no label flagged)",
        "lower (App. C)",
    )

    s_lab, e_lab = det.get("strip"), det.get("ensemble")
    both = [
        (_num(r.get(f"{s_lab}.f1")), _num(r.get(f"{e_lab}.f1"))) for r in rows if s_lab and e_lab
    ]
    both = [(a, b) for a, b in both if not (math.isnan(a) or math.isnan(b))]
    if both:
        gain = float(np.mean([b - a for a, b in both]))
        out.append(
            Claim(
                "the NC+STRIP ensemble beats plain STRIP slightly (0 < F1 gain < 0.2)",
                "slightly better, < 0.2 F1 (Fig. 15)",
                f"mean F1 gain {gain:+.3f} over {len(both)} cells",
                0 < gain < 0.2,
            )
        )
    else:
        out.append(
            Claim(
                "the NC+STRIP ensemble beats plain STRIP slightly (0 < F1 gain < 0.2)",
                "slightly better, < 0.2 F1 (Fig. 15)",
                "not in this sweep",
                None,
            )
        )
    for var, text in (
        ("size", "efficacy rises with trigger size"),
        ("transparency", "efficacy falls with transparency (rises with opacity)"),
    ):
        rho = _trend(_attacked(rows), var)
        sign = -1 if var == "transparency" else 1
        if rho is None:
            out.append(Claim(text, "steeply (Fig. 10)", f"the sweep has one {var}", None))
        else:
            out.append(
                Claim(
                    text,
                    "steeply (Fig. 10)",
                    f"mean Spearman rho of efficacy vs {var}: {rho:+.2f}",
                    sign * rho > 0,
                )
            )
    return out


def _trend(rows: Sequence[dict[str, Any]], var: str) -> float | None:
    """Mean Spearman correlation of efficacy with ``var`` within each group where the other
    grid variables are fixed."""
    from scipy.stats import spearmanr

    other = "transparency" if var == "size" else "size"
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"], r["attack"], r[other], r["seed"])].append(
            (_num(r[var]), _num(r["efficacy"]))
        )
    rhos = []
    for pts in groups.values():
        xs, ys = zip(*pts, strict=True) if pts else ((), ())
        if len(set(xs)) < 2 or len(set(ys)) < 2:
            continue
        rhos.append(float(spearmanr(xs, ys).statistic))
    return float(np.mean(rhos)) if rhos else None


# --- the writer --------------------------------------------------------------------------------
def write_report(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Report:
    """Write the CSV, figures and Markdown/HTML report of a sweep folder; see module docstring."""
    from eviltwins.experiments.runner import scan_cells

    run_dir = Path(run_dir)
    cells, unreadable = scan_cells(run_dir)
    ok = [c for c in cells if c.get("status") == "ok"]
    failed = [c for c in cells if c.get("status") != "ok"]
    if not ok:
        bad = f", {len(unreadable)} unreadable" if unreadable else ""
        raise DataError(
            f"{run_dir} has no finished cells yet ({len(failed)} failed{bad}); run "
            "'eviltwins sweep' first"
        )
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = [flatten(c) for c in ok]
    write_csv(rows, out / "cells.csv")
    det = detector_labels(ok)
    wanted = _wanted_figures(run_dir)
    attacked = _attacked(rows)
    clean_rows = [r for r in rows if r["attack_name"] == "none"]
    figs: list[Path | None] = []

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("fig10"):
        figs.append(fig10_efficacy(rows, out / "fig10_efficacy.png"))
    if want("fig11"):
        figs.append(fig11_triggers(rows, run_dir, out / "fig11_triggers.png", _classes(run_dir)))
    if want("fig12") and len(_panels(attacked, "size")) > 1:
        figs.append(
            _line_figure(
                attacked,
                out / "fig12_asr_vs_size.png",
                x="size",
                panel_key="transparency",
                metrics=[("asr", "attack success rate", None)],
                title="ASR vs trigger size (Fig. 12)",
                ylim=(-0.02, 1.02),
            )
        )
    if want("fig13") and len(_panels(attacked, "transparency")) > 1:
        figs.append(
            _line_figure(
                attacked,
                out / "fig13_asr_vs_transparency.png",
                x="transparency",
                panel_key="size",
                metrics=[("asr", "attack success rate", None)],
                title="ASR vs trigger transparency (Fig. 13)",
                ylim=(-0.02, 1.02),
            )
        )
    det_metrics = []
    if "neural-cleanse" in det:
        det_metrics.append(
            (f"{det['neural-cleanse']}.target_anomaly", "NC anomaly index (target)", NC_THRESHOLD)
        )
    if "strip" in det:
        det_metrics.append((f"{det['strip']}.f1", "STRIP F1", None))
    if want("fig14") and det_metrics:
        figs.append(
            _line_figure(
                attacked,
                out / "fig14_detectors_vs_size.png",
                x="size",
                panel_key="transparency",
                metrics=det_metrics,
                title="Detectors vs trigger size (Fig. 14)",
                clean_rows=clean_rows,
            )
        )
    if want("fig15") and "strip" in det and "ensemble" in det:
        long = [
            {**r, "detector": name, "f1": r.get(f"{det[key]}.f1")}
            for r in attacked
            for key, name in (("strip", "STRIP"), ("ensemble", "ensemble"))
        ]
        figs.append(
            _line_figure(
                long,
                out / "fig15_strip_vs_ensemble.png",
                x="size",
                panel_key="transparency",
                metrics=[("f1", "F1 score", None)],
                title="STRIP vs the NC+STRIP ensemble (Fig. 15)",
                group=lambda r: f"{r['detector']} vs {r['attack']}",
                ylim=(-0.02, 1.02),
            )
        )
    if want("abs") and "abs" in det:
        figs.append(
            _line_figure(
                attacked,
                out / "abs_reasr_vs_size.png",
                x="size",
                panel_key="transparency",
                metrics=[(f"{det['abs']}.max_anomaly", "ABS REASR (max)", ABS_THRESHOLD)],
                title="ABS REASR vs trigger size (Appendix C)",
                clean_rows=clean_rows,
                ylim=(-0.02, 1.02),
            )
        )
    figures = [p for p in figs if p is not None]
    cl = claims(rows, det)
    rep = Report(out, rows, cl, figures, failed, unreadable)
    _write_documents(rep, run_dir, det)
    write_json(out / "report.json", rep.to_dict())
    return rep


def _sweep_json(run_dir: Path) -> dict[str, Any]:
    """The run's ``sweep.json`` (``{}`` when missing or unusable: the report does without)."""
    try:
        d = read_json(run_dir / "sweep.json", "sweep spec")
    except DataError:
        return {}
    return d if isinstance(d, dict) else {}


def _wanted_figures(run_dir: Path) -> set[str] | None:
    figs = _sweep_json(run_dir).get("figures")
    if not isinstance(figs, list):
        return None
    return {f for f in figs if isinstance(f, str)} or None


def _classes(run_dir: Path) -> dict[str, Sequence[str]]:
    out: dict[str, Sequence[str]] = {}
    for card in (run_dir / "clean").glob("*/model.json"):
        try:
            d = read_json(card, "model card")
        except DataError:
            continue
        if not isinstance(d, dict) or not isinstance(d.get("dataset"), str):
            continue
        classes = d.get("classes")
        if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
            out.setdefault(d["dataset"], classes)
    return out


def _summary_table(
    rows: Sequence[dict[str, Any]], det: dict[str, str]
) -> tuple[list[str], list[list[str]]]:
    cols = [
        ("asr", "ASR"),
        ("efficacy", "efficacy"),
        ("clean_acc", "clean acc"),
        ("acc_drop", "acc drop"),
    ]
    if "neural-cleanse" in det:
        cols.append((f"{det['neural-cleanse']}.target_anomaly", "NC index (target)"))
        cols.append((f"{det['neural-cleanse']}.flagged", "NC flagged labels"))
        cols.append((f"{det['neural-cleanse']}.steps_per_label", "NC steps per label"))
    if "abs" in det:
        cols.append((f"{det['abs']}.max_anomaly", "ABS REASR (blank: no candidate)"))
        cols.append((f"{det['abs']}.flagged", "ABS flagged labels"))
    for name in ("strip", "ensemble"):
        if name in det:
            cols.append((f"{det[name]}.f1", f"{det[name]} F1"))
            cols.append((f"{det[name]}.f1_all_stamped", f"{det[name]} F1, all stamped"))
            cols.append((f"{det[name]}.n_triggered", f"{det[name]} triggered inputs"))
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
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
            mean, std = _mean_std([_num(r.get(col)) for r in rs])
            line.append(
                "" if math.isnan(mean) else f"{mean:.3f}" + (f" ± {std:.3f}" if std else "")
            )
        body.append(line)
    return head, body


def _write_documents(rep: Report, run_dir: Path, det: dict[str, str]) -> None:
    spec = _sweep_json(run_dir)
    name = spec.get("name") if isinstance(spec.get("name"), str) else run_dir.name
    description = spec.get("description") if isinstance(spec.get("description"), str) else ""
    title = f"eviltwins report: {name}"
    claim_head = ["claim", "paper", "measured here", "verdict"]
    claim_rows = [[c.claim, c.paper, c.measured, c.verdict] for c in rep.claims]
    head, body = _summary_table(rep.rows, det)
    fail_rows = [[c["key"], c.get("error", "")] for c in rep.failed]

    bad_rows = [[k, v] for k, v in rep.unreadable.items()]
    n_bad = len(bad_rows)
    bad = f", {n_bad} cell file{'' if n_bad == 1 else 's'} unreadable" if n_bad else ""
    md = [f"# {title}", ""]
    if description:
        md += [description, ""]
    md += [
        f"{len(rep.rows)} finished cells, {len(rep.failed)} failed{bad}. All cells: `cells.csv`.",
        "",
        "## The paper's claims, measured",
        "",
        *_md_table(claim_head, claim_rows),
        "",
        "## Figures",
        "",
    ]
    for p in rep.figures:
        md += [f"![{p.stem}]({p.name})", ""]
    md += ["## Results (mean ± std over seeds)", "", *_md_table(head, body), ""]
    if fail_rows:
        md += ["## Failed cells", "", *_md_table(["cell", "error"], fail_rows), ""]
    if bad_rows:
        md += [
            "## Unreadable cell files",
            "",
            unreadable_line(rep.unreadable),
            "",
            *_md_table(["file", "problem"], bad_rows),
            "",
        ]
    (rep.out / "report.md").write_text("\n".join(md))

    def table(h: Sequence[str], b: Sequence[Sequence[str]]) -> str:
        th = "".join(f"<th>{html.escape(x)}</th>" for x in h)
        trs = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in b
        )
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 6px;font-size:13px}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(description)}</p>",
        f"<p>{len(rep.rows)} finished cells, {len(rep.failed)} failed{html.escape(bad)}. "
        "All cells: "
        "<a href='cells.csv'>cells.csv</a>.</p>",
        "<h2>The paper's claims, measured</h2>",
        table(claim_head, claim_rows),
        "<h2>Figures</h2>",
        *[f"<p><img src='{p.name}' alt='{p.stem}'></p>" for p in rep.figures],
        "<h2>Results (mean ± std over seeds)</h2>",
        table(head, body),
    ]
    if fail_rows:
        parts += ["<h2>Failed cells</h2>", table(["cell", "error"], fail_rows)]
    if bad_rows:
        parts += [
            "<h2>Unreadable cell files</h2>",
            f"<p>{html.escape(unreadable_line(rep.unreadable))}</p>",
            table(["file", "problem"], bad_rows),
        ]
    parts.append("</body></html>")
    (rep.out / "report.html").write_text("\n".join(parts))


def _md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|")

    return [
        "| " + " | ".join(esc(h) for h in head) + " |",
        "|" + "---|" * len(head),
        *["| " + " | ".join(esc(x) for x in r) + " |" for r in body],
    ]
