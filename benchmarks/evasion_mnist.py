"""The paper's evasion claims on real data (Pang et al., Section 5.3.2, Fig. 14): TrojanNN vs
TrojanNN* with ``evade=neural-cleanse,strip`` at the same re-training budget, then
NeuralCleanse (``imc`` preset) and STRIP (paper variant, threshold at 5% FPR on held-out clean
inputs; and the original variant) on both poisoned models and on the clean model.

For each ``size:transparency`` setting it prints one Markdown row per model: ASR, efficacy,
clean-accuracy drop, mask L1, NeuralCleanse's index of the target and the labels it flags,
and STRIP's F1 / AUC under the authors' protocol (triggered = stamped inputs that reach the
target) with the all-stamped F1 beside it. JSON rows go to ``--out``.

Run: ``EVILTWINS_DATA=... python benchmarks/evasion_mnist.py --dataset mnist --settings 0.1:0.0``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from attack_comparison import clean_model  # benchmarks/ is on sys.path when run as a script

import eviltwins as et
from eviltwins.attacks import IMC, TrojanNN
from eviltwins.detectors import STRIP, NeuralCleanse, evaluate_filter


def detect(model, spec, trigger, target: int, n_clean: int) -> dict:
    t = time.perf_counter()
    nc = NeuralCleanse(quiet=True).inspect(model, spec)
    row = {
        "nc_target_index": float(nc.anomaly[target]),
        "nc_max_index": nc.max_anomaly,
        "nc_flagged": nc.flagged,
        "nc_seconds": round(time.perf_counter() - t, 1),
    }
    if trigger is None:
        return row
    for variant in ("imc", "original"):
        rep = evaluate_filter(STRIP(variant=variant), model, spec, trigger, target, n_clean)
        d = rep.to_dict()
        row[f"strip_{variant}"] = {
            "f1": d["metrics"]["f1"],
            "auc": d["metrics"]["auc"],
            "n_clean": d["n_clean"],
            "n_triggered": d["n_triggered"],
            "all_stamped_f1": (d.get("all_stamped") or {}).get("metrics", {}).get("f1"),
        }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--settings", nargs="+", default=["0.1:0.0"], help="size:transparency")
    ap.add_argument("--budget", type=int, default=469, help="re-training steps for both")
    ap.add_argument("--chunk", type=int, default=50, help="TrojanNN* re-training steps per round")
    ap.add_argument(
        "--trigger-steps", type=int, default=None, help="default: the round's re-training steps"
    )
    ap.add_argument("--trigger-lr", type=float, default=0.1)
    ap.add_argument("--mode", default="opacity", choices=["opacity", "size"])
    ap.add_argument("--evade", default="neural-cleanse,strip")
    ap.add_argument("--n-clean", type=int, default=1000)
    ap.add_argument("--clean-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/compare"))
    ap.add_argument("--out", type=Path, default=Path("runs/compare/evasion.jsonl"))
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    spec = et.load_dataset(args.dataset)
    clean = clean_model(args.dataset, args.work, args.clean_epochs, args.seed)
    rows = [{"model": "clean", **detect(clean, spec, None, 0, args.n_clean)}]
    for setting in args.settings:
        size, transparency = (float(v) for v in setting.split(":"))
        common = dict(size=size, transparency=transparency, seed=args.seed, quiet=True)
        base = TrojanNN(epochs=1000, max_steps=args.budget, **common).fit(clean, spec)
        star = IMC(
            mode=args.mode,
            evade=tuple(args.evade.split(",")),
            outer_iters=-(-args.budget // args.chunk),
            retrain_steps=args.chunk,
            max_steps=args.budget,
            trigger_steps=args.trigger_steps,
            trigger_lr=args.trigger_lr,
            early_stop=False,
            **common,
        ).fit(clean, spec)
        for name, res in (("TrojanNN", base), ("TrojanNN*", star)):
            m = res.metrics
            row = {
                "model": name,
                "dataset": args.dataset,
                "size": size,
                "transparency": transparency,
                "budget": args.budget,
                **{k: m[k] for k in ("asr", "efficacy", "acc_drop", "mask_l1")},
                "attack_seconds": res.seconds,
                **detect(res.model, spec, res.trigger, res.target, args.n_clean),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(
        "| model | size/transp. | ASR | efficacy | acc drop (pt) | mask L1 | NC index (target) | "
        "NC flags | STRIP F1 (paper, 5% FPR) | AUC | all-stamped F1 | STRIP F1 (original) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, o = r.get("strip_imc", {}), r.get("strip_original", {})

        def f(v, p=3):
            return "" if v is None else f"{v:.{p}f}"

        print(
            f"| {r['model']} | {r.get('size', '')}/{r.get('transparency', '')} | "
            f"{f(r.get('asr'))} | {f(r.get('efficacy'))} | "
            f"{f(100 * r['acc_drop'], 2) if 'acc_drop' in r else ''} | {f(r.get('mask_l1'), 1)} | "
            f"{r['nc_target_index']:.2f} | {r['nc_flagged'] or 'none'} | {f(s.get('f1'))} | "
            f"{f(s.get('auc'))} | {f(s.get('all_stamped_f1'))} | {f(o.get('f1'))} |"
        )


if __name__ == "__main__":
    main()
