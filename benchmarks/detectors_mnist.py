"""Detector verdicts on real MNIST (small CNN): a clean model and a BadNet model (opaque white
square of size 0.15, target 0, 1 epoch). Prints NeuralCleanse anomaly indices, STRIP F1/AUC
(both variants), the ensemble and ABS REASR, with seconds per detector.

Run: ``EVILTWINS_DATA=... python benchmarks/detectors_mnist.py [--dataset mnist]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import eviltwins as et
from eviltwins.attacks import BadNet
from eviltwins.data import load_all
from eviltwins.detectors import ABS, STRIP, NCStripEnsemble, NeuralCleanse
from eviltwins.triggers import Trigger


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--work", type=Path, default=Path("runs/compare"))
    ap.add_argument("--models", nargs="+", default=["clean", "badnet"], choices=["clean", "badnet"])
    args = ap.parse_args()
    spec = et.load_dataset(args.dataset)
    clean_dir = args.work / f"{args.dataset}_clean_s0"
    if not (clean_dir / "model.json").is_file():
        et.train(spec, "cnn", epochs=2, out=clean_dir, quiet=True)
    clean = et.load_model(clean_dir)[0]
    bad = BadNet(size=0.15, epochs=1, quiet=True).fit(clean, spec)
    print(f"BadNet: ASR {bad.metrics['asr']:.4f}, clean acc {bad.metrics['clean_acc']:.4f}")
    x, y = load_all(spec.test)
    fit_x, ev_x, ev_y = x[:1000], x[1000:2000], y[1000:2000]
    trig_x = bad.trigger.stamp(ev_x[ev_y != 0])
    for name, model in (("clean", clean), ("badnet", bad.model)):
        if name not in args.models:
            continue
        t = time.perf_counter()
        nc = NeuralCleanse(quiet=True).inspect(model, spec)
        print(
            f"{name}: NeuralCleanse anomaly {[round(a, 2) for a in nc.anomaly]} flagged "
            f"{nc.flagged} ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        t = time.perf_counter()
        ab = ABS(quiet=True).inspect(model, spec)
        print(
            f"{name}: ABS REASR per label {[round(a, 2) for a in ab.anomaly]} flagged "
            f"{ab.flagged} ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        for variant in ("imc", "original"):
            t = time.perf_counter()
            rep = STRIP(variant=variant).fit(model, fit_x).evaluate(ev_x, trig_x)
            print(
                f"{name}: STRIP {variant}: {rep.summary()} ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
        s = nc.suspect
        t = time.perf_counter()
        ens = NCStripEnsemble().fit(model, fit_x, trigger=Trigger(nc.masks[s], nc.patterns[s]))
        print(
            f"{name}: {ens.evaluate(ev_x, trig_x).summary()} ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
