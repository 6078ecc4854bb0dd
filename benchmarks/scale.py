"""Scans at the paper's scale: wall time, peak memory and projected full budget of NeuralCleanse
and ABS on CIFAR-shape ResNet-18 / VGG-16, 43 classes and 224x224 inputs, with label scheduling
and without, and how the cost grows with the number of classes.

    python -m benchmarks.scale --rows               # projected full vs scheduled, every shape
    python -m benchmarks.scale --classes 10,20,43,100   # cost vs classes, table and plot
    python -m benchmarks.scale --scan resnet18:10:32    # one full `scan`, end to end
    python -m benchmarks.scale --model runs/r18         # the same on a trained model folder
    python -m benchmarks.scale --scan resnet18-imagenet:10:224 --steps 3   # memory, quickly
    python -m benchmarks.scale --write-43 DIR       # a 43-class tree of real images to train
    python -m benchmarks --scale                    # the same as --rows

The cost of an optimisation step does not depend on the weights, so the timed models are
seeded random initialisations and the images real MNIST digits (or, without MNIST, the digits
that ship with scikit-learn) resized to the input shape in colour, with labels drawn at random
over the classes. Projections time a few steps of each phase after one warm-up step and
multiply by the steps the budget gives (``full``: every label / candidate the whole budget;
``k-arm``: the screen for all, the rest for the kept ones, the largest share the schedule can
give, before early stopping; ABS's steps at ``scan``'s seed batches). ABS runs with
``consistency=0`` so that a random model still yields its 10 candidates (the most reverse
engineering ABS does). ``--scan`` runs the real ``scan`` (its defaults: label scheduling,
seed batches and bfloat16 where native) and reads the process's peak RSS and the scan's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.row import current_rss_mb, peak_rss_mb, reset_peak_rss
from eviltwins.data import DatasetSpec
from eviltwins.data.base import TensorImageDataset
from eviltwins.detectors import ABS, NeuralCleanse
from eviltwins.detectors.nc_schedule import default_keep
from eviltwins.models import build_model
from eviltwins.utils import eval_mode, frozen_params

#: (architecture, classes, side) of the scale rows.
ROWS = (
    ("resnet18", 10, 32),
    ("vgg16", 10, 32),
    ("resnet18", 43, 32),
    ("resnet18-imagenet", 10, 224),
)


def images(n: int, side: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real grey digit images as 3 x side x side colour tensors in [0, 1] (real MNIST
    where ``EVILTWINS_DATA`` holds it, else scikit-learn's digits), labels drawn at random."""
    from eviltwins.data import load_all, load_dataset

    try:
        spec = load_dataset("mnist")
    except Exception:  # noqa: BLE001 - no MNIST here: the shipped digits
        spec = load_dataset("digits")
    x = load_all(spec.test)[0]
    g = torch.Generator().manual_seed(seed)
    x = x[torch.randint(len(x), (n,), generator=g)]
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear")
    x = (x - x.amin()) / (x.amax() - x.amin()).clamp_min(1e-6)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.randint(classes, (n,), generator=g)


def write_43_classes(out: Path, train_per_class: int = 300, test_per_class: int = 40) -> Path:
    """A 43-class tree of real images (GTSRB's class count) for timing a trained model: the
    10 MNIST digits and 10 Fashion-MNIST items upright and rotated by 90 degrees (40 classes)
    and the digits 0-2 upside down, ``*_per_class`` seeded random images each (distinct
    images for a class's rotations), written as ``out/{train,test}/<class>/<i>.png`` in
    3 x 32 x 32 RGB (bilinear), the on-disk form ``eviltwins train --dataset`` reads."""
    import numpy as np
    from PIL import Image

    from eviltwins.data import load_all, load_dataset

    specs = {tag: load_dataset(name) for tag, name in (("m", "mnist"), ("f", "fashion-mnist"))}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        g = np.random.default_rng(1)
        classes = []
        for tag, spec in specs.items():
            x, y = load_all(spec.train if split == "train" else spec.test)
            x, y = (x[:, 0] * 255).round().to(torch.uint8).numpy(), y.numpy()
            for k in range(10):
                idx = g.permutation(np.flatnonzero(y == k))
                classes.append((f"{tag}{k}", x[idx[:per]], 0))
                classes.append((f"{tag}{k}r90", x[idx[per : 2 * per]], 1))
                if tag == "m" and k < 3:
                    classes.append((f"{tag}{k}r180", x[idx[2 * per : 3 * per]], 2))
        for cls, imgs, quarter_turns in classes:
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, a in enumerate(imgs):
                a = np.ascontiguousarray(np.rot90(a, quarter_turns))
                im = Image.fromarray(a).resize((32, 32), Image.BILINEAR).convert("RGB")
                im.save(folder / f"{i}.png")
    return out


def setting(arch: str, classes: int, side: int, n: int = 400) -> tuple[Any, DatasetSpec]:
    """A seeded random model of ``arch`` and a held-out split of ``n`` images for it, held as
    uint8 as an image folder's are."""
    torch.manual_seed(0)
    model = build_model(arch, (3, side, side), classes).eval()
    x, y = images(n, side, classes)
    split = TensorImageDataset((x * 255).round().to(torch.uint8), y)
    names = tuple(str(k) for k in range(classes))
    spec = DatasetSpec(
        f"timing-{side}", (3, side, side), names, (0.0,) * 3, (1.0,) * 3, split, split
    )
    return model, spec


def _seconds(det: Any, model: Any, spec: DatasetSpec) -> float:
    start = time.perf_counter()
    det.inspect(model, spec)
    return time.perf_counter() - start


def per_step(make: Any, model: Any, spec: DatasetSpec) -> tuple[float, float]:
    """(fixed seconds, seconds per step) of the detector ``make(steps)`` builds: one run of 1
    step and one of 3 (after a warm-up run), the difference halved."""
    _seconds(make(1), model, spec)  # warm-up
    one, three = _seconds(make(1), model, spec), _seconds(make(3), model, spec)
    step = max(0.0, (three - one) / 2)
    return max(0.0, one - step), step


def projected(arch: str, classes: int, side: int, precision: str) -> dict:
    """Seconds per NeuralCleanse step over all labels and per ABS reverse step over its 10
    candidates (timed), and the projected full and k-arm scans (NeuralCleanse ``imc``: 500
    steps; ABS: 200 steps)."""
    model, spec = setting(arch, classes, side)
    nc_base, nc_step = per_step(
        lambda k: NeuralCleanse(steps=k, n_inputs=64, precision=precision, quiet=True),
        model,
        spec,
    )
    abs_base, abs_step = per_step(
        lambda k: ABS(steps=k, n_eval=100, consistency=0.0, precision=precision, quiet=True),
        model,
        spec,
    )
    batch = ABS.scan_params["seed_batch"]  # scan's seed batches: a step's cost stops growing
    if classes * ABS().seeds_per_class > batch:
        _, abs_step_batched = per_step(
            lambda k: ABS(
                steps=k,
                n_eval=100,
                consistency=0.0,
                precision=precision,
                seed_batch=batch,
                quiet=True,
            ),
            model,
            spec,
        )
    else:
        abs_step_batched = abs_step
    nc_budget, abs_budget, keep_abs = 500, 200, 3
    keep, screen = default_keep(classes), nc_budget // 5
    nc_sched = nc_step * (screen + keep / classes * (nc_budget - screen))
    a_screen = abs_budget // 4
    abs_sched = abs_step_batched * (a_screen + keep_abs / 10 * (abs_budget - a_screen))
    fixed = nc_base + abs_base
    return {
        "arch": arch,
        "classes": classes,
        "side": side,
        "precision": precision,
        "nc_step_s": round(nc_step, 3),
        "abs_step_s": round(abs_step, 3),
        "abs_step_seed_batch_s": round(abs_step_batched, 3),
        "fixed_s": round(fixed, 1),
        "full_s": round(fixed + nc_step * nc_budget + abs_step * abs_budget),
        "k_arm_s": round(fixed + nc_sched + abs_sched),
    }


def scan_once(
    arch: str, classes: int, side: int, folder: Path | None = None, steps: int | None = None
) -> dict:
    """One real ``scan`` at its defaults of a seeded random ``arch`` (ABS at consistency 0:
    all 10 candidates), or of the trained model in ``folder`` on its own dataset (ABS at its
    defaults); wall time, the inspectors' seconds and peak RSS. ``steps`` caps both budgets
    (a quick memory probe: the same passes, a lower estimate of the full scan's peak)."""
    from eviltwins.data import load_dataset
    from eviltwins.detectors.scan import inspectors, run_scan
    from eviltwins.io import load_model

    if folder is None:
        model, spec = setting(arch, classes, side, n=1600 if side <= 64 else 400)
        dets = inspectors(params=_params({"abs": {"consistency": 0.0}}, steps), quiet=True)
    else:
        model, card = load_model(folder)
        spec = load_dataset(card.dataset, **(card.dataset_options or {}))
        arch, classes, side = card.architecture, card.num_classes, card.input_shape[-1]
        dets = inspectors(params=_params({}, steps), quiet=True)
    reset_peak_rss()  # the peak of the scan itself, not of building the model and images
    before = current_rss_mb()
    start = time.perf_counter()
    with eval_mode(model), frozen_params(model):
        report = run_scan(dets, model, spec, source=arch, calibration="none")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scan_peak = peak_rss_mb()
    return {
        "arch": arch,
        "classes": classes,
        "side": side,
        "seconds": round(time.perf_counter() - start, 1),
        "inspectors": {n: r.seconds for n, r in report.reports.items()},
        "precision": {n: r.details.get("precision") for n, r in report.reports.items()},
        "work": _work(report.reports),
        "peak_mib": round(peak),
        "rss_at_start_mib": None if before is None else round(before),
        "scan_peak_mib": round(scan_peak),
        "steps": steps or "default",
        "verdict": report.verdict,
    }


def _work(reports: dict) -> dict:
    """What the scan's inspectors did: NeuralCleanse's label-steps, labels run past its screen,
    flagged labels and largest index; ABS's candidates and those run past its screen."""
    out: dict = {}
    if (nc := reports.get("neural-cleanse")) is not None:
        steps = nc.details.get("steps") or []
        unfinished = nc.details.get("unfinished") or []
        out["nc_label_steps"] = int(sum(steps))
        out["nc_labels_finished"] = len(steps) - len(unfinished)
        out["nc_flagged"] = list(nc.flagged)
        out["nc_max_index"] = round(max(nc.anomaly, default=0.0), 2)
    if (ab := reports.get("abs")) is not None:
        cands = ab.details.get("candidates") or []
        out["abs_candidates"] = len(cands)
        out["abs_finished"] = len(cands) - len(ab.details.get("unfinished_candidates") or [])
    return out


def _params(params: dict, steps: int | None) -> dict:
    if steps is None:
        return params
    out = {name: {**params.get(name, {}), "steps": steps} for name in ("neural-cleanse", "abs")}
    return {**params, **out}


def plot(rows: list[dict], out: Path) -> None:
    """The projected cost against the number of classes, full and k-arm budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    xs = [r["classes"] for r in rows]
    ax.plot(xs, [r["full_s"] / 60 for r in rows], "o-", label="full budget")
    ax.plot(
        xs, [r["k_arm_s"] / 60 for r in rows], "s-", label="scan defaults (k-arm, seed batches)"
    )
    ax.set_xlabel("classes")
    ax.set_ylabel("projected scan, minutes")
    ax.set_title(f"{rows[0]['arch']} {rows[0]['side']}x{rows[0]['side']}, 2 CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    ap.add_argument("--rows", action="store_true", help="projected full and k-arm budgets")
    ap.add_argument("--classes", default=None, help="class counts for the cost-vs-classes rows")
    ap.add_argument("--scan", default=None, help="arch:classes:side, one real scan")
    ap.add_argument("--model", type=Path, default=None, help="scan this trained model folder")
    ap.add_argument("--steps", type=int, default=None, help="cap the scan's budgets (memory)")
    ap.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--write-43", type=Path, default=None, help="write the 43-class tree there")
    args = ap.parse_args(argv)
    if args.write_43 is not None:
        print(write_43_classes(args.write_43))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    found: list[dict] = []

    def run(arch: str, classes: int, side: int) -> dict:
        row = projected(arch, classes, side, args.precision)
        print(json.dumps(row), file=sys.stderr, flush=True)  # as soon as it is measured
        return row

    if args.rows:
        found += [run(a, c, s) for a, c, s in ROWS]
    if args.classes:
        by_class = [run("resnet18", int(c), 32) for c in args.classes.split(",")]
        plot(by_class, args.out / "scale-classes.png")
        found += by_class
    if args.model is not None:
        found.append(scan_once("", 0, 0, args.model, args.steps))
    elif args.scan:
        arch, classes, side = args.scan.split(":")
        found.append(scan_once(arch, int(classes), int(side), steps=args.steps))
    if not found:
        ap.error("choose --rows, --classes, --scan or --model")
    for row in found:
        print(json.dumps(row), flush=True)
    with open(args.out / "scale.jsonl", "a") as fh:
        for row in found:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
