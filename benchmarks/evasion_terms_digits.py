"""What each IMC evasion term moves, on digits (small CNN, size 0.3, 6 outer iterations of 24
re-training steps): mask L1 (NeuralCleanse's measure), efficacy beside ASR, and the entropy of
50/50 mixtures of stamped and *different clean* test inputs (STRIP's measure).

Run: ``python benchmarks/evasion_terms_digits.py``
"""

from __future__ import annotations

import torch

import eviltwins as et
from eviltwins.attacks import IMC
from eviltwins.data import load_all
from eviltwins.metrics import prediction_entropy

RUNS = [
    ("size", ()),
    ("size", ("neural-cleanse",)),
    ("opacity", ()),
    ("opacity", ("neural-cleanse",)),
    ("fixed", ()),
    ("fixed", ("strip",)),
    ("opacity", ("neural-cleanse", "strip")),
    ("fixed", ("abs",)),
]


def mixture_entropy(model, trigger, x, y, target: int = 0) -> float:
    xs = trigger.stamp(x[y != target])
    partner = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))][: len(xs)]
    with torch.no_grad():
        return prediction_entropy(model((xs + partner) / 2)).mean().item()


def main() -> None:
    spec = et.load_dataset("digits")
    clean = et.train(spec, "cnn", epochs=20, seed=0, device="cpu", quiet=True).model
    x, y = load_all(spec.test)
    print("| run | ASR | efficacy | mask L1 | mixture entropy (nats) | acc drop (pt) |")
    print("|---|---|---|---|---|---|")
    for mode, evade in RUNS:
        res = IMC(
            size=0.3,
            mode=mode,
            evade=evade,
            outer_iters=6,
            retrain_steps=24,
            trigger_steps=60 if mode != "fixed" else 20,
            early_stop=False,
            quiet=True,
        ).fit(clean, spec)
        m = res.metrics
        name = f"mode {mode}" + (f", `--evade {','.join(evade)}`" if evade else "")
        print(
            f"| {name} | {m['asr']:.3f} | {m['efficacy']:.3f} | {m['mask_l1']:.1f} | "
            f"{mixture_entropy(res.model, res.trigger, x, y):.2f} | {100 * m['acc_drop']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
