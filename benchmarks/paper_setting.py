"""The paper's setting on a CPU: real MNIST / Fashion-MNIST images re-written in the on-disk form
of the paper's colour datasets (class-per-folder PNG trees sorted by class, as GTSRB and ImageNet
subsets are stored; 3-channel 32x32), then BadNet, TrojanNN and TrojanNN* (fixed mode, and
evading NeuralCleanse and STRIP) on batch-norm ResNet-18 / VGG-11 models, and all four detectors,
each run end to end by the command line (``eviltwins sweep``) over several seeds.

No colour dataset can be had offline; the images are real (not noise), the networks and the
folder loader are the paper's kind. Budgets fit 2 CPU cores: a few thousand images, a few
hundred re-training steps, networks of reduced width (``--width``), NeuralCleanse and ABS with
fewer optimisation steps than their papers' (the values are in the written sweep specs).

Run: ``EVILTWINS_DATA=... python -m benchmarks.paper_setting --out runs/paper``
(``--models resnet18 vgg11 --seeds 0 1 2``; ``--tree-only`` just writes the image trees).
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
    tree: Path, model: str, width: int, seeds: list[int], sizes: list[float], steps: int
) -> dict[str, Any]:
    """The sweep of one model on one tree: every attack at ``steps`` re-training steps (equal
    budgets), every detector, the claims read over ``seeds``."""
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
            {"name": "neural-cleanse", "label": "NeuralCleanse", "params": {"steps": 150}},
            {"name": "strip", "label": "STRIP"},
            {"name": "ensemble", "label": "ensemble", "params": {"nc_steps": 150}},
            {"name": "abs", "label": "ABS", "params": {"steps": 100}},
        ],
        "n_clean": 500,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/paper"))
    ap.add_argument("--datasets", nargs="+", default=["mnist"])
    ap.add_argument("--models", nargs="+", default=["resnet18", "vgg11"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--tree-only", action="store_true")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    summary: dict[str, Any] = {}
    for dataset in args.datasets:
        tree = out / f"{dataset}-tree"
        if not (tree / "val").is_dir():
            write_tree(dataset, tree)
        if args.tree_only:
            continue
        for model in args.models:
            spec = sweep_spec(tree, model, args.width, args.seeds, args.sizes, args.steps)
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
