"""Detector speed as ratios measured in one run (no absolute timing claims).

1. NeuralCleanse, all labels batched vs the same algorithm run one label at a time (the
   reference loop below), on a BadNet small CNN (10 classes), same budget: prints both
   times, the speed-up, and the flagged labels of each (they must agree).
2. STRIP with N = 100 overlays: scored images/second vs the model's raw forward throughput at
   the same batch size (N forwards per input is the floor, so the ideal ratio is 1/N... the
   figure reported is overlay-forward throughput = N * scored img/s over raw img/s).

Run: ``python benchmarks/detector_speed.py [--dataset digits|mnist] [--n-inputs 320]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import eviltwins as et
from eviltwins.attacks import BadNet
from eviltwins.data import load_all
from eviltwins.detectors import STRIP, NeuralCleanse


def nc_one_label_at_a_time(model, spec, **kw):
    """Reference loop: the same NeuralCleanse, one label per run, MAD test at the end."""
    from eviltwins.metrics import anomaly_index

    norms = []
    for label in range(spec.num_classes):
        rep = NeuralCleanse(labels=[label], **kw).inspect(model, spec)
        norms.append(rep.scores[0])
    idx = anomaly_index(norms)
    return [k for k, a in enumerate(idx) if a > 2.0], norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--n-inputs", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--strip-images", type=int, default=200)
    args = ap.parse_args()
    spec = et.load_dataset(args.dataset)
    clean = et.train(spec, "cnn", epochs=spec.default_epochs, quiet=True, device="cpu").model
    bad = BadNet(size=0.15, epochs=10 if args.dataset == "digits" else 1, quiet=True).fit(
        clean, spec
    )
    model = bad.model
    kw = dict(n_inputs=args.n_inputs, epochs=args.epochs, quiet=True)
    t = time.perf_counter()
    batched = NeuralCleanse(**kw).inspect(model, spec)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    flagged_ref, _ = nc_one_label_at_a_time(model, spec, **kw)
    t_ref = time.perf_counter() - t
    print(
        f"NeuralCleanse ({args.dataset}, {spec.num_classes} labels, {args.n_inputs} inputs, "
        f"{args.epochs} epochs): batched {t_batched:.1f} s, one label at a time "
        f"{t_ref:.1f} s, speed-up {t_ref / t_batched:.2f}x; flagged {batched.flagged} vs "
        f"{flagged_ref}"
    )

    x, _ = load_all(spec.test)
    x = x[: args.strip_images]
    strip = STRIP(variant="original").fit(model, x)
    n = 100
    t = time.perf_counter()
    strip.score(x)
    t_strip = time.perf_counter() - t
    batch = 2048  # STRIP's overlay batch: 20 inputs x 100 overlays
    xb = x[torch.randint(0, len(x), (batch,))]
    with torch.no_grad():
        model(xb)
        t = time.perf_counter()
        reps = max(1, (len(x) * n) // batch)
        for _ in range(reps):
            model(xb)
        t_raw = (time.perf_counter() - t) / (reps * batch)
    strip_ips = len(x) / t_strip
    raw_ips = 1 / t_raw
    print(
        f"STRIP N={n}: {strip_ips:.0f} inputs/s = {strip_ips * n:.0f} overlay forwards/s; "
        f"raw forward {raw_ips:.0f} img/s at batch {batch}; ratio "
        f"{strip_ips * n / raw_ips:.2f} of the floor"
    )


if __name__ == "__main__":
    main()
