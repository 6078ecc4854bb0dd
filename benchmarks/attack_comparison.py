"""TrojanNN vs TrojanNN* (IMC over TrojanNN) under the same re-training budget.

For each dataset and (size, transparency) setting, both attacks start from the same clean small
CNN and get the same number of re-training steps (``--budget``, default one epoch); TrojanNN*
alternates ``--trigger-steps`` Adam steps on the trigger with ``--chunk`` re-training steps.
Prints a Markdown table (ASR, clean-accuracy drop, seconds) and writes JSON rows to ``--out``.

Run: ``python benchmarks/attack_comparison.py --datasets mnist fashion-mnist
--settings 0.1:0.7 0.2:0.7 0.3:0.7 --budget 469`` (EVILTWINS_DATA must hold MNIST/FashionMNIST).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import eviltwins as et
from eviltwins.attacks import IMC, TrojanNN


def clean_model(dataset: str, work: Path, epochs: int, seed: int):
    path = work / f"{dataset}_clean_s{seed}"
    if not (path / "model.json").is_file():
        et.train(dataset, "cnn", epochs=epochs, seed=seed, out=path, quiet=True)
    return et.load_model(path)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["0.1:0.7", "0.2:0.7", "0.3:0.7"],
        help="size:transparency pairs",
    )
    ap.add_argument(
        "--budget",
        type=int,
        nargs="+",
        default=[469],
        help="re-training steps for both (several: a budget sweep)",
    )
    ap.add_argument("--chunk", type=int, default=50, help="TrojanNN* re-training steps per round")
    ap.add_argument(
        "--trigger-steps", type=int, default=None, help="default: the round's re-training steps"
    )
    ap.add_argument("--trigger-lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean-epochs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/compare"))
    ap.add_argument("--out", type=Path, default=Path("runs/compare/results.jsonl"))
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(
        "| dataset | size | transparency | budget (steps) | TrojanNN ASR | TrojanNN* ASR | "
        "delta | acc drop (TrojanNN / TrojanNN*) | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for ds in args.datasets:
        spec = et.load_dataset(ds)
        model = clean_model(ds, args.work, args.clean_epochs, args.seed)
        for setting, budget in [(s, b) for s in args.settings for b in args.budget]:
            size, transparency = (float(v) for v in setting.split(":"))
            t = time.perf_counter()
            base = TrojanNN(
                size=size,
                transparency=transparency,
                epochs=10**6,
                max_steps=budget,
                seed=args.seed,
                quiet=True,
            ).fit(model, spec)
            t_base = time.perf_counter() - t
            t = time.perf_counter()
            star = IMC(
                size=size,
                transparency=transparency,
                retrain_steps=args.chunk,
                outer_iters=-(-budget // args.chunk),
                max_steps=budget,
                trigger_steps=args.trigger_steps,
                trigger_lr=args.trigger_lr,
                early_stop=False,
                seed=args.seed,
                quiet=True,
            ).fit(model, spec)
            t_star = time.perf_counter() - t
            row = {
                "dataset": ds,
                "size": size,
                "transparency": transparency,
                "budget": budget,
                "trojannn": base.metrics,
                "imc": star.metrics,
                "imc_steps": star.extra["retrain_steps_total"],
                "imc_history": star.history,
                "trojannn_history": base.history,
                "seconds": [round(t_base, 1), round(t_star, 1)],
            }
            rows.append(row)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            a, b = base.metrics, star.metrics
            print(
                f"| {ds} | {size} | {transparency} | {budget} | {a['asr']:.3f} | "
                f"{b['asr']:.3f} | {b['asr'] - a['asr']:+.3f} | {100 * a['acc_drop']:.2f} / "
                f"{100 * b['acc_drop']:.2f} | {t_base:.0f} / {t_star:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
