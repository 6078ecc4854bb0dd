"""How good is the scan on a population of models: p(trojan) validated on models it was not
fitted on.

Reads a finished population sweep (clean ``none`` cells and backdoored twins, every model
scanned by the inspectors of ``--detectors``: sweep labels), fits the calibrated p(trojan)
(:func:`eviltwins.detectors.calibration.fit_calibration`: logistic on each inspector's largest
anomaly) on one part of the models and scores the other part with it:

- ``seeds``: fitted on the models of ``--fit-seeds`` (default 0, 1, 2), scored on the others;
- ``architecture``: for each architecture, fitted on the other architectures' models and
  scored on its own (an architecture not in the fitting set).

Per split, and per attack family of the held-out models (each family's backdoored models with
all the held-out clean ones; also the backdoors that took, ASR >= 0.5, all families together): AUROC, TrojAI cross-entropy, Brier, FPR at 95% TPR, TPR at 5%
FPR, the share of models the p(trojan) >= 0.5 rule flags, and the share of backdoored models
whose target an inspector flagged. Prints Markdown tables and writes ``--out`` (JSON).

Run: ``python -m benchmarks.population_scan RUN_DIR [--detectors NeuralCleanse ABS]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from eviltwins.detectors.calibration import fit_calibration, model_statistic
from eviltwins.errors import EviltwinsError
from eviltwins.experiments import load_cells
from eviltwins.metrics import population_scores, rank_scores
from eviltwins.report.population import TOOK_ASR

TOOK = f"backdoors that took (ASR >= {TOOK_ASR:g})"


def models(run: Path, labels: list[str]) -> list[dict[str, Any]]:
    """One record per finished cell: truth, family, architecture, seed, statistics, flags."""
    out = []
    for c in load_cells(run):
        if not c.ok:
            continue
        dets = c.detectors or {}
        names = {e.label or e.name: e.name for e in c.cell.detectors}
        stats = {names[lab]: model_statistic(dets[lab]) for lab in labels if lab in dets}
        if len(stats) < len(labels) or any(v != v for v in stats.values()):
            continue
        flagged = {str(f) for lab in labels for f in (dets[lab].flagged or [])}
        out.append(
            {
                "key": c.key,
                "backdoored": c.cell.attack != "none",
                "family": c.cell.label or c.cell.attack,
                "arch": c.cell.model,
                "dataset": c.cell.dataset,
                "seed": c.cell.seed,
                "asr": (c.attack.metrics or {}).get("asr") if c.attack else None,
                "stats": stats,
                "target_flagged": str(c.target) in flagged,
                "params": {names[lab]: dets[lab].details.get("params", {}) for lab in labels},
            }
        )
    return out


def scored(fit: list[dict], held: list[dict], shape: list[int]) -> dict:
    """Fit on ``fit``, score ``held``: metrics overall and per attack family."""
    names = list(fit[0]["stats"])
    cal = fit_calibration(
        [m["stats"] for m in fit], [m["backdoored"] for m in fit], names, shape, fit[0]["params"]
    )
    p = np.array([cal.p_trojan(m["stats"]) for m in held])
    y = np.array([m["backdoored"] for m in held])
    rows = {}
    families = sorted({m["family"] for m in held if m["backdoored"]})
    took = np.array([m["asr"] is not None and m["asr"] >= TOOK_ASR for m in held])
    for fam in ["all attacks", TOOK, *families]:
        mine = np.array([fam in (m["family"], "all attacks") for m in held])
        keep = ~y | (took if fam == TOOK else mine)
        fig = population_scores(p[keep], y[keep])
        rank = rank_scores(p[keep], y[keep])
        back = [m for m, k in zip(held, keep, strict=True) if k and m["backdoored"]]
        rows[fam] = {
            "backdoored / clean": f"{int(y[keep].sum())} / {int((~y[keep]).sum())}",
            "auc": round(rank["auc"], 3),
            "cross_entropy": round(fig["cross_entropy"], 3),
            "brier": round(fig["brier"], 3),
            "fpr_at_95_tpr": round(rank["fpr_at_tpr"], 2),
            "tpr_at_5_fpr": round(rank["tpr_at_fpr"], 2),
            "flags_backdoored": round(float(np.mean(p[keep][y[keep]] >= 0.5)), 2),
            "flags_clean": round(float(np.mean(p[keep][~y[keep]] >= 0.5)), 2),
            "target_found": round(float(np.mean([m["target_flagged"] for m in back])), 2),
        }
    return {"fitted_on": len(fit), "scored": len(held), "coef": cal.coef, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--detectors", nargs="+", default=["NeuralCleanse", "ABS"])
    ap.add_argument("--fit-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--input-shape", type=int, nargs=3, default=[1, 28, 28])
    ap.add_argument("--out", type=Path, default=None, help="JSON [RUN/population_scan.json]")
    args = ap.parse_args()
    if not (args.run / "cells").is_dir():
        print(f"population_scan: {args.run} is not a sweep folder", file=sys.stderr)
        return 2
    try:
        pop = models(args.run, args.detectors)
        fit = [m for m in pop if m["seed"] in args.fit_seeds]
        held = [m for m in pop if m["seed"] not in args.fit_seeds]
        result = {"seeds": scored(fit, held, args.input_shape)}
        for arch in sorted({m["arch"] for m in pop}):
            others = [m for m in pop if m["arch"] != arch]
            mine = [m for m in pop if m["arch"] == arch]
            result[f"architecture {arch}"] = scored(others, mine, args.input_shape)
    except EviltwinsError as err:
        print(f"population_scan: {err}", file=sys.stderr)
        return 2
    for split, res in result.items():
        print(f"\n{split}: fitted on {res['fitted_on']} models, scored {res['scored']}")
        head = list(next(iter(res["rows"].values())))
        print("| attack | " + " | ".join(head) + " |\n|" + "---|" * (len(head) + 1))
        for fam, row in res["rows"].items():
            print(f"| {fam} | " + " | ".join(str(v) for v in row.values()) + " |")
    (args.out or args.run / "population_scan.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
