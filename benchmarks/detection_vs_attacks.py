"""NeuralCleanse and STRIP against TrojanNN vs TrojanNN* (with the matching evasion) at one
setting: the end-to-end figure of the detector issue (Pang et al., Fig. 14, small scale).

Run: ``python benchmarks/detection_vs_attacks.py --dataset fashion-mnist --size 0.2
--transparency 0.0 --budget 469`` (EVILTWINS_DATA must hold the dataset). Prints a Markdown
table: ASR, NeuralCleanse anomaly index of the target label, STRIP (original variant) F1/AUC.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import eviltwins as et
from eviltwins.attacks import IMC, TrojanNN
from eviltwins.data import load_all
from eviltwins.detectors import STRIP, NeuralCleanse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--size", type=float, default=0.2)
    ap.add_argument("--transparency", type=float, default=0.0)
    ap.add_argument("--budget", type=int, default=469)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("runs/compare"))
    args = ap.parse_args()
    spec = et.load_dataset(args.dataset)
    clean_dir = args.work / f"{args.dataset}_clean_s0"
    if not (clean_dir / "model.json").is_file():
        et.train(spec, "cnn", epochs=2, out=clean_dir, quiet=True)
    model = et.load_model(clean_dir)[0]
    common = dict(size=args.size, transparency=args.transparency, quiet=True)
    attacks = {
        "TrojanNN": TrojanNN(epochs=10**6, max_steps=args.budget, **common),
        "TrojanNN* (fixed)": IMC(
            retrain_steps=args.chunk,
            outer_iters=-(-args.budget // args.chunk),
            max_steps=args.budget,
            early_stop=False,
            **common,
        ),
        "TrojanNN* (size, evade NC+STRIP)": IMC(
            mode="size",
            evade="neural-cleanse,strip",
            retrain_steps=args.chunk,
            outer_iters=-(-args.budget // args.chunk),
            max_steps=args.budget,
            early_stop=False,
            **common,
        ),
    }
    x, y = load_all(spec.test)
    fit_x, ev_x, ev_y = x[:1000], x[1000:2000], y[1000:2000]
    print(
        f"{args.dataset}, size {args.size}, transparency {args.transparency}, "
        f"{args.budget} re-training steps, target 0"
    )
    print(
        "| attack | ASR | clean acc | NC anomaly index (target) | NC flagged | STRIP F1 | "
        "STRIP AUC | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, atk in attacks.items():
        t = time.perf_counter()
        res = atk.fit(model, spec)
        nc = NeuralCleanse(quiet=True).inspect(res.model, spec)
        strip = STRIP(variant="original").fit(res.model, fit_x)
        rep = strip.evaluate(ev_x, res.trigger.stamp(ev_x[ev_y != 0]))
        print(
            f"| {name} | {res.metrics['asr']:.3f} | {res.metrics['clean_acc']:.4f} | "
            f"{nc.anomaly[0]:.2f} | {nc.flagged} | {rep.metrics['f1']:.3f} | "
            f"{rep.metrics['auc']:.3f} | {time.perf_counter() - t:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
