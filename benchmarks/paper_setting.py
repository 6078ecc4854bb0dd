"""The paper's setting on a CPU: real MNIST / Fashion-MNIST images re-written in the on-disk form
of the paper's colour datasets (class-per-folder PNG trees sorted by class, as GTSRB and ImageNet
subsets are stored; 3-channel 32x32), then BadNet, TrojanNN and TrojanNN* (fixed mode, and
evading NeuralCleanse and STRIP) on batch-norm ResNet-18 / VGG-11 models, and all four detectors,
each run end to end by the command line (``eviltwins sweep``) over several seeds.

No colour dataset can be had offline; the images are real (not noise), the networks and the
folder loader are the paper's kind. Budgets fit 2 CPU cores: a few thousand images, a few
hundred re-training steps, networks of reduced width (``--width``), NeuralCleanse and ABS with
fewer optimisation steps than their papers' (the values are in the written sweep specs).

Run: ``EVILTWINS_DATA=... python -m benchmarks.paper_setting --out runs/paper --jobs 2``
(``--models resnet18 vgg11 --width 8 --sizes 0.2 0.3 --seeds 0 1 2 --steps 200
--detector-steps 100`` are the defaults; ``--tree-only`` just writes the image trees;
``--summarize`` prints a table per finished run and the claims check once per TrojanNN*
variant).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import eviltwins as et

#: Sizes of the written trees (images per class) and of the images.
TRAIN_PER_CLASS, TEST_PER_CLASS, SIDE = 400, 150, 32


def folder_name(index: int, name: str) -> str:
    """A class folder name that sorts in label order and is a safe file name
    (Fashion-MNIST's ``T-shirt/top`` holds a slash)."""
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


def write_tree(
    dataset: str,
    out: Path,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    side: int = SIDE,
    seed: int = 0,
) -> Path:
    """Write ``dataset`` (a grey MNIST-like dataset) as ``out/train/<class>/*.png`` and
    ``out/val/<class>/*.png``: a seeded random ``*_per_class`` images of each class of each
    split, resized bilinearly to ``side`` x ``side`` and stored as RGB PNGs (grey replicated
    into three channels), file names numbered so that a listing is sorted by class."""
    spec = et.load_dataset(dataset)
    g = torch.Generator().manual_seed(seed)
    for split, ds, per in (
        ("train", spec.train, train_per_class),
        ("val", spec.test, test_per_class),
    ):
        x, y = et.data.load_all(ds)
        for k, name in enumerate(spec.classes):
            idx = torch.nonzero(y == k).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)[:per]]
            imgs = F.interpolate(x[idx].float(), size=(side, side), mode="bilinear")
            imgs = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
            folder = out / split / folder_name(k, name)
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(imgs):
                arr = np.ascontiguousarray(im.permute(1, 2, 0).numpy())
                Image.fromarray(arr, "RGB").save(folder / f"{k:02d}_{i:05d}.png")
    return out


def sweep_spec(
    tree: Path,
    model: str,
    width: int,
    seeds: list[int],
    sizes: list[float],
    steps: int,
    detector_steps: int = 100,
) -> dict[str, Any]:
    """The sweep of one model on one tree: every attack at ``steps`` re-training steps (equal
    budgets), every detector (NeuralCleanse, the ensemble's NeuralCleanse and ABS at
    ``detector_steps`` optimisation steps), the claims read over ``seeds``."""
    per = max(1, steps // 4)
    imc = {"outer_iters": 4, "retrain_steps": per, "max_steps": steps, "early_stop": False}
    return {
        "name": f"paper-{tree.name}-{model}",
        "description": f"{tree.name} as a class-sorted colour PNG tree, {model} (width {width})",
        "datasets": [str(tree)],
        "dataset_options": {"image_size": SIDE, "channels": 3},
        "models": [model],
        "clean": {"epochs": 6, "batch_size": 64, "arch_kwargs": {"width": width}},
        "attacks": [
            {"name": "none", "label": "clean"},
            {"name": "badnet", "label": "BadNet", "params": {"epochs": 1000, "max_steps": steps}},
            {
                "name": "trojannn",
                "label": "TrojanNN",
                "params": {"epochs": 1000, "max_steps": steps},
            },
            {"name": "imc", "label": "TrojanNN*", "params": imc},
            {
                "name": "imc",
                "label": "TrojanNN* (evading NC+STRIP)",
                "params": {**imc, "mode": "opacity", "evade": ["neural-cleanse", "strip"]},
            },
        ],
        "sizes": sizes,
        "transparencies": [0.0],
        "seeds": seeds,
        "detectors": [
            {
                "name": "neural-cleanse",
                "label": "NeuralCleanse",
                "params": {"steps": detector_steps},
            },
            {"name": "strip", "label": "STRIP"},
            {"name": "ensemble", "label": "ensemble", "params": {"nc_steps": detector_steps}},
            {"name": "abs", "label": "ABS", "params": {"steps": detector_steps}},
        ],
        "n_clean": 500,
    }


#: Columns of the summary table: (header, flattened cell column).
COLUMNS = (
    ("clean acc.", "clean_acc"),
    ("ASR", "asr"),
    ("efficacy", "efficacy"),
    ("NC index (target)", "NeuralCleanse.target_anomaly"),
    ("STRIP F1", "STRIP.f1"),
    ("ensemble F1", "ensemble.f1"),
    ("ABS REASR (target)", "ABS.target_anomaly"),
)


def _mean_std(values: list[float]) -> str:
    v = [x for x in values if x is not None and x == x]
    if not v:
        return "-"
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
    return f"{m:.2f} ± {sd:.2f}" + ("" if len(v) == len(values) else f" ({len(v)})")


def summarize(run: Path) -> str:
    """A markdown table of a finished sweep: one row per (attack, size), each column the mean
    ± std over seeds (a count in brackets where some seeds have no value: an untested ABS
    target, a filter not run on the clean model), then the claims check's verdicts."""
    from eviltwins.experiments import load_cells
    from eviltwins.report.cells import detector_labels
    from eviltwins.report.table import flatten

    ok = [c for c in load_cells(run) if c.ok]
    rows = [flatten(c) for c in ok]
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["attack"], r["size"]), []).append(r)
    head = ["attack", "size", "seeds", *(h for h, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (attack, size), rs in groups.items():
        cells = [_mean_std([r.get(c) for r in rs]) for _, c in COLUMNS]
        lines.append(
            f"| {attack} | {size if size is not None else '-'} | {len(rs)} | "
            + " | ".join(cells)
            + " |"
        )
    lines += claim_lines(rows, detector_labels(ok))
    return "\n".join(lines)


def claim_lines(rows: list[dict[str, Any]], det: dict[str, str]) -> list[str]:
    """The claims check read once per TrojanNN* variant of the sweep (each against TrojanNN
    alone: the report's own check pools every variant that starts from TrojanNN); ``det``
    maps a detector's name to its label, as the report's (``detector_labels``)."""
    from eviltwins.report import claims

    out = []
    for star in sorted({r["attack"] for r in rows if r["attack_name"] == "imc"}):
        keep = [r for r in rows if r["attack_name"] != "imc" or r["attack"] == star]
        out += ["", f"Claims, {star} against TrojanNN:", ""]
        out += [f"- {c.claim}: **{c.verdict}** ({c.measured})" for c in claims(keep, det)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/paper"))
    ap.add_argument("--datasets", nargs="+", default=["mnist"])
    ap.add_argument("--models", nargs="+", default=["resnet18", "vgg11"])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--detector-steps", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--tree-only", action="store_true")
    ap.add_argument("--summarize", action="store_true", help="print the tables of finished runs")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.summarize:
        for run in sorted(p.parent for p in out.glob("*/sweep.json")):
            print(f"### {run.name}\n\n{summarize(run)}\n")
        return 0
    summary: dict[str, Any] = {}
    for dataset in args.datasets:
        tree = out / f"{dataset}-tree"
        if not (tree / "val").is_dir():
            write_tree(dataset, tree)
        if args.tree_only:
            continue
        for model in args.models:
            spec = sweep_spec(
                tree, model, args.width, args.seeds, args.sizes, args.steps, args.detector_steps
            )
            path = out / f"{spec['name']}.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            run = out / spec["name"]
            cmd = ["eviltwins", "sweep", str(path), "--out", str(run), "--jobs", str(args.jobs)]
            print("$", " ".join(cmd), flush=True)
            rc = subprocess.call(cmd, env={**os.environ})
            report = run / "report" / "report.json"
            summary[spec["name"]] = {
                "rc": rc,
                "report": json.loads(report.read_text()) if report.is_file() else None,
            }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return max((s["rc"] for s in summary.values()), default=0)


if __name__ == "__main__":
    sys.exit(main())
