"""TABOR, SCALE-UP and Blended on real MNIST (small CNN), and TrojanNN* against TABOR and
SCALE-UP (``--evade tabor`` / ``--evade scale-up``).

Phases (``--phases``, default all):

- ``detect``: TABOR (``inspect``) and SCALE-UP (authors' input-filter protocol on a seeded random
  1,000 + 1,000 held-out test images) on a BadNet model (opaque white square of size 0.15,
  target 0, 1 epoch) and on its clean twin (SCALE-UP there: every stamped input, as for the
  other filters on a clean model).
- ``blended``: Blended (full-image seeded noise pattern, transparency 0.8, 10% poisoning,
  ``--blended-epochs`` epochs): ASR and efficacy; STRIP (paper variant) and SCALE-UP on it.
- ``evade``: TrojanNN and TrojanNN* at the same re-training budget (``--budget`` steps,
  TrojanNN* in rounds of ``--chunk``), TrojanNN* with ``evade: [tabor]`` (mode opacity,
  trigger step 20 Adam steps at lr 0.01, which keeps a small mask) and with ``evade:
  [scale-up]`` (mode fixed): the detector's figure on each model, with efficacy.

``--detectors`` limits the run to TABOR or SCALE-UP, ``--weight`` sets the evasion term's
weight (default: the term's own), ``--dataset fashion-mnist`` runs the same on Fashion-MNIST.
One JSON line per measurement is printed and appended to ``--out``.
Run: ``EVILTWINS_DATA=... python benchmarks/peers_mnist.py [--phases detect blended evade]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from attack_comparison import clean_model  # benchmarks/ is on sys.path when run as a script

import eviltwins as et
from eviltwins.attacks import ATTACKS
from eviltwins.detectors import DETECTORS, evaluate_filter


def inspect(name: str, model: Any, spec: Any, target: int) -> dict[str, Any]:
    t = time.perf_counter()
    rep = DETECTORS.create(name, quiet=True).inspect(model, spec)
    return {
        "target_index": rep.anomaly_of(target),
        "max_other": max((a for i, a in enumerate(rep.anomaly) if i != target), default=None),
        "flagged": rep.flagged,
        "seconds": round(time.perf_counter() - t, 1),
    }


def filter_figures(name: str, model: Any, spec: Any, trigger: Any, target: int, n: int) -> dict:
    t = time.perf_counter()
    rep = evaluate_filter(DETECTORS.create(name), model, spec, trigger, target, n)
    stamped = rep.all_stamped or {}
    return {
        **{k: rep.metrics.get(k) for k in ("f1", "auc", "precision", "recall", "fpr")},
        "all_stamped_f1": (stamped.get("metrics") or {}).get("f1"),
        "all_stamped_auc": (stamped.get("metrics") or {}).get("auc"),
        "n_clean": rep.n_clean,
        "n_triggered": rep.n_triggered,
        "seconds": round(time.perf_counter() - t, 1),
    }


def attack_row(name: str, res: Any) -> dict[str, Any]:
    m = res.metrics
    return {"model": name, **{k: m.get(k) for k in ("asr", "efficacy", "acc_drop", "mask_l1")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--phases", nargs="+", default=["detect", "blended", "evade"])
    ap.add_argument(
        "--detectors", nargs="+", default=["tabor", "scale-up"], help="which of the two to run"
    )
    ap.add_argument(
        "--weight", type=float, default=None, help="evasion weight (default: the term's)"
    )
    ap.add_argument("--budget", type=int, default=469, help="re-training steps of both attacks")
    ap.add_argument("--chunk", type=int, default=50, help="TrojanNN* re-training steps per round")
    ap.add_argument("--size", type=float, default=0.15, help="TrojanNN / TrojanNN* trigger size")
    ap.add_argument("--blended-epochs", type=int, default=2)
    ap.add_argument("--n-clean", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=Path("runs/compare"))
    ap.add_argument("--out", type=Path, default=Path("runs/compare/peers.jsonl"))
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    spec = et.load_dataset(args.dataset)
    clean = clean_model(args.dataset, args.work, 2, 0)
    n = args.n_clean

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if "detect" in args.phases:
        bad = ATTACKS.create("badnet", size=0.15, epochs=1, quiet=True).fit(clean, spec)
        for name, model in (("badnet", bad.model), ("clean", clean)):
            row = {"phase": "detect", **(attack_row(name, bad) if name == "badnet" else {})}
            row["model"] = name
            if "tabor" in args.detectors:
                row["tabor"] = inspect("tabor", model, spec, 0)
            if "scale-up" in args.detectors:
                row["scale-up"] = filter_figures("scale-up", model, spec, bad.trigger, 0, n)
            emit(row)

    if "blended" in args.phases:
        res = ATTACKS.create(
            "blended", transparency=0.8, epochs=args.blended_epochs, quiet=True
        ).fit(clean, spec)
        row = {"phase": "blended", **attack_row("blended", res)}
        for det in ("strip", "scale-up"):
            row[det] = filter_figures(det, res.model, spec, res.trigger, 0, n)
        emit(row)

    if "evade" in args.phases:
        common = {"size": args.size, "transparency": 0.0, "seed": 0, "quiet": True}
        base = ATTACKS.create("trojannn", epochs=1000, max_steps=args.budget, **common)
        base = base.fit(clean, spec)
        stars = {
            "tabor": {"mode": "opacity", "trigger_steps": 20, "trigger_lr": 0.01},
            "scale-up": {"mode": "fixed"},
        }
        rows = {"TrojanNN": attack_row("TrojanNN", base)}
        models = {"TrojanNN": base}
        stars = {k: v for k, v in stars.items() if k in args.detectors}
        for det, extra in stars.items():
            star = ATTACKS.create(
                "imc",
                evade={det: args.weight},
                outer_iters=-(-args.budget // args.chunk),
                retrain_steps=args.chunk,
                max_steps=args.budget,
                early_stop=False,
                **extra,
                **common,
            ).fit(clean, spec)
            rows[f"TrojanNN* evade {det}"] = attack_row(f"TrojanNN* evade {det}", star)
            models[f"TrojanNN* evade {det}"] = star
        for label, res in models.items():
            row = {"phase": "evade", **rows[label]}
            if label != "TrojanNN* evade scale-up" and "tabor" in args.detectors:
                row["tabor"] = inspect("tabor", res.model, spec, res.target)
            if label != "TrojanNN* evade tabor" and "scale-up" in args.detectors:
                row["scale-up"] = filter_figures(
                    "scale-up", res.model, spec, res.trigger, res.target, n
                )
            emit(row)


if __name__ == "__main__":
    main()
