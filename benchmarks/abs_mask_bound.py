"""ABS's mask bound for one input size, chosen on a calibration part of a population.

ABS bounds the reversed trigger's mask to ``mask_bound`` x H x W pixels (0.06 in the authors'
CIFAR-10 setting). This benchmark re-scans the saved models of a population sweep (run with
``save_models: true``) with ABS at several bounds, on the calibration seeds only (default 0, 1
and 2: the other seeds are the models the bound is then evaluated on, never looked at here),
and reports each bound's ROC AUC of ABS's largest REASR (clean ``none`` models against the
backdoored ones). Each model's statistics are appended to ``--out`` (JSON lines) as they are
measured, so a stopped run resumes where it left off.

Run: ``python -m benchmarks.abs_mask_bound RUN_DIR --data-root DATA [--bounds 0.03 0.06 0.12]
[--seeds 0 1 2] [--datasets mnist]`` (a bound the sweep's own ABS ran with is read from its
cells, not measured again).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from eviltwins.detectors import DETECTORS
from eviltwins.detectors.calibration import model_statistic
from eviltwins.errors import EviltwinsError
from eviltwins.experiments import load_cells
from eviltwins.io import model_from_bytes
from eviltwins.metrics import rank_scores
from eviltwins.training import get_dataset


def measure(
    run: Path,
    bounds: list[float],
    seeds: set[int],
    datasets: set[str] | None,
    data_root: str,
    out: Path,
) -> dict:
    """Scan every saved model of ``run`` whose seed is in ``seeds`` with ABS at each of
    ``bounds`` (skipping what ``out`` already holds); returns the AUC per bound."""
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            done[(rec["key"], rec["mask_bound"])] = rec
    cells = [
        c
        for c in load_cells(run)
        if c.ok and c.cell.seed in seeds and (not datasets or c.cell.dataset in datasets)
    ]
    for cell in cells:  # the sweep's own ABS runs count for their bound
        for entry in cell.cell.detectors:
            rec = (cell.detectors or {}).get(entry.label or entry.name)
            if entry.name == "abs" and rec is not None and rec.details.get("params"):
                bound = rec.details["params"]["mask_bound"]
                done.setdefault((cell.key, bound), _record(cell, bound, rec, rec.seconds or 0))
    for cell in cells:
        blob = run / "cells" / cell.key / "model.safetensors"
        if not blob.exists():
            raise SystemExit(f"abs_mask_bound: {blob} is missing; run the sweep with save_models")
        todo = [b for b in bounds if (cell.key, b) not in done]
        if not todo:
            continue
        model, _ = model_from_bytes(blob.read_bytes(), torch.device("cpu"))
        clean = cell.cell.extra["clean"]
        spec = get_dataset(
            cell.cell.dataset,
            data_root,
            False,
            clean["train_limit"],
            clean["test_limit"],
            cell.cell.seed,
        )
        for bound in todo:
            start = time.perf_counter()
            rep = DETECTORS.create("abs", mask_bound=bound, quiet=True).inspect(model, spec)
            rec = _record(cell, bound, rep, time.perf_counter() - start)
            done[(cell.key, bound)] = rec
            with out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    return summarize(done.values(), bounds)


def _record(cell: object, bound: float, rep: object, seconds: float) -> dict:
    return {
        "key": cell.key,  # type: ignore[attr-defined]
        "mask_bound": bound,
        "backdoored": cell.cell.attack != "none",  # type: ignore[attr-defined]
        "attack": cell.cell.label,  # type: ignore[attr-defined]
        "statistic": model_statistic(rep),
        "target": cell.target,  # type: ignore[attr-defined]
        "flagged": [int(f) for f in rep.flagged],  # type: ignore[attr-defined]
        "seconds": round(seconds, 1),
    }


def summarize(records: object, bounds: list[float]) -> dict:
    """Each bound's AUC, FPR at 95% TPR and the share of clean models its verdict flags."""
    recs = list(records)  # type: ignore[call-overload]
    table = {}
    for b in bounds:
        mine = [r for r in recs if r["mask_bound"] == b]
        if not mine:
            continue
        ranked = rank_scores([r["statistic"] for r in mine], [r["backdoored"] for r in mine])
        clean = [r for r in mine if not r["backdoored"]]
        table[b] = {
            "models": len(mine),
            "auc": round(ranked["auc"], 3),
            "fpr_at_95_tpr": round(ranked["fpr_at_tpr"], 3),
            "flags_clean": round(sum(bool(r["flagged"]) for r in clean) / max(1, len(clean)), 3),
            "seconds_per_model": round(sum(r["seconds"] for r in mine) / len(mine), 1),
        }
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="population sweep folder (save_models: true)")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--bounds", type=float, nargs="+", default=[0.03, 0.06, 0.12])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=None, help="only these datasets' models")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines [RUN/abs_mask_bound.jsonl]")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.run / "cells").is_dir():
        print(f"abs_mask_bound: {args.run} is not a sweep folder", file=sys.stderr)
        return 2
    out = args.out or args.run / "abs_mask_bound.jsonl"
    try:
        table = measure(
            args.run, args.bounds, set(args.seeds), set(args.datasets or ()), args.data_root, out
        )
    except EviltwinsError as err:
        print(f"abs_mask_bound: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"seeds": args.seeds, "by_bound": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
