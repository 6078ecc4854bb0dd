"""Detector verdicts on real MNIST (small CNN): a clean model and a BadNet model (opaque white
square of size 0.15, target 0, 1 epoch). Prints NeuralCleanse anomaly indices (and steps per
label), STRIP F1/AUC (both variants) and the ensemble under the authors' input-filter protocol
(with the all-stamped variant beside), and ABS REASR, with seconds per detector. Input filters
are fitted on a seeded random 1,000 test images and evaluated on another 1,000
(:func:`eviltwins.detectors.evaluate_filter`).

Run: ``EVILTWINS_DATA=... python benchmarks/detectors_mnist.py [--dataset mnist]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import eviltwins as et
from eviltwins.attacks import BadNet
from eviltwins.detectors import ABS, STRIP, NCStripEnsemble, NeuralCleanse, evaluate_filter


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
    for name, model in (("clean", clean), ("badnet", bad.model)):
        if name not in args.models:
            continue
        t = time.perf_counter()
        nc = NeuralCleanse(quiet=True).inspect(model, spec)
        print(
            f"{name}: NeuralCleanse anomaly {[round(a, 2) for a in nc.anomaly]} flagged "
            f"{nc.flagged}, steps per label {nc.details.get('steps')} "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        t = time.perf_counter()
        ab = ABS(quiet=True).inspect(model, spec)
        print(f"{name}: {ab.summary()}; REASR per label {[round(a, 2) for a in ab.anomaly]}")
        for det in (STRIP(), STRIP(variant="original"), NCStripEnsemble()):
            rep = evaluate_filter(det, model, spec, bad.trigger, 0, 1000)
            label = det.name + (f" {det.variant}" if det.name == "strip" else "")
            print(f"{name}: {label}: {rep.summary()}", flush=True)


if __name__ == "__main__":
    main()
