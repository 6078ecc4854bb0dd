"""``eviltwins scan`` on a blue team's own residual network, trained outside eviltwins.

What it measures: whether the CLI scan, run exactly as a user would run it on a weights file of
their own architecture, tells a clean model from a BadNet model, and how long each scan takes.

1. Trains :class:`benchmarks.resmini.ResMini` (stem + two residual blocks with batch norm) on
   real MNIST with plain PyTorch: ``torch.manual_seed(0)``, 2 epochs on the full 60k training
   set, Adam (lr 1e-3), batch 128, inputs normalised with mean 0.1307 / std 0.3081 inside the
   loop. Reports test accuracy on the 10k test set; saves ``OUT/resmini-clean.pth`` (the
   state dict). (The full set, not a 20k subset: measured at about 0.14 s per batch on one
   thread of a busy 2-core machine, i.e. about 2.3 minutes for the 938 batches.)
2. Plants a BadNet backdoor, again in plain PyTorch: a copy of the clean model fine-tuned for 1
   epoch where a seeded 10% of each batch gets a 4x4 white square (pixel value 1.0 before
   normalisation) in the bottom-right corner and label 0. Reports clean test accuracy and the
   attack success rate (ASR: stamped test images whose label is not 0 that are classified 0;
   the clean model's figure is given as the baseline). Saves ``OUT/resmini-badnet.pth``.
3. Scans each weights file with ``eviltwins scan --model OUT/resmini-*.pth --arch
   benchmarks.resmini:ResMini --dataset mnist --mean 0.1307 --std 0.3081 --data-root ROOT
   --out OUT/scan-* --quiet`` in a subprocess from the repo root (with the repo root on
   ``PYTHONPATH``: the ``eviltwins`` console script does not put the working folder on
   ``sys.path``), default detectors (NeuralCleanse and ABS) at their default budgets, and
   times it. Prints one line per model (test accuracy, ASR, the verdict, p(trojan) when
   scan.json has it, the scan's seconds) and writes ``OUT/summary.json``.

``--quick`` (a check that the script works, about a minute of training plus two short scans):
a seeded 2,000-image training subset, 1 epoch each, and the scans with small budgets through
``--config OUT/quick-config.yaml`` (``neural-cleanse: {steps: 20, n_inputs: 64}``, ``abs:
{steps: 10}``); its figures mean nothing.

Training and the scans run on ``--threads`` CPU threads (default 1; the scans through
``OMP_NUM_THREADS``), on ``--device`` (default cpu).

Run (from the repo root)::

    python -m benchmarks.residual_scan --out runs/residual-scan --data-root /path/to/data
    python -m benchmarks.residual_scan --out /tmp/resscan-quick --quick --data-root ...

``--data-root`` holds torchvision's layout ``ROOT/MNIST/raw/*-ubyte`` (default:
``$EVILTWINS_DATA``, else ``~/.cache/eviltwins/data``, as for ``eviltwins``); nothing is
downloaded. A missing data root or MNIST is one line on stderr and exit code 2; a scan that
fails is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.resmini import ResMini

REPO = Path(__file__).resolve().parents[1]
ARCH = "benchmarks.resmini:ResMini"
MEAN, STD = 0.1307, 0.3081
SEED = 0
BATCH = 128
LR = 1e-3
TARGET = 0
POISON_RATE = 0.10
SQUARE = 4  # side of the white trigger square, in pixels (bottom-right corner)
FULL_EPOCHS, QUICK_EPOCHS = 2, 1
BADNET_EPOCHS = 1
QUICK_TRAIN = 2000
QUICK_CONFIG = {"neural-cleanse": {"steps": 20, "n_inputs": 64}, "abs": {"steps": 10}}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def fail(msg: str, code: int) -> SystemExit:
    """One line on stderr; raise the returned exception to exit with ``code``."""
    print(f"residual_scan: error: {msg}", file=sys.stderr, flush=True)
    return SystemExit(code)


def log(msg: str) -> None:
    print(f"[residual_scan] {msg}", file=sys.stderr, flush=True)


def default_data_root() -> Path:
    env = os.environ.get("EVILTWINS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "eviltwins" / "data"


def load_mnist(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train x, train y, test x, test y); x float in [0, 1], N x 1 x 28 x 28, unnormalised."""
    if not root.is_dir():
        raise fail(f"data root {root} is not a folder (pass --data-root)", 2)
    raw = root / "MNIST" / "raw"
    missing = [
        n for n in MNIST_FILES if not (raw / n).is_file() and not (raw / f"{n}.gz").is_file()
    ]
    if missing:
        raise fail(f"MNIST not found under {root} (no {raw / missing[0]}); pass --data-root", 2)
    from torchvision.datasets import MNIST

    try:
        train = MNIST(str(root), train=True, download=False)
        test = MNIST(str(root), train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found" (e.g. only .gz files)
        raise fail(f"MNIST under {root} could not be read by torchvision: {err}", 2) from None

    def split(ds: Any) -> tuple[Tensor, Tensor]:
        return ds.data.unsqueeze(1).float().div_(255.0), ds.targets.long()

    return (*split(train), *split(test))


def normalise(x: Tensor) -> Tensor:
    return (x - MEAN) / STD


def stamp(x: Tensor) -> Tensor:
    """A copy of ``x`` (unnormalised, in [0, 1]) with the white square in the bottom-right."""
    x = x.clone()
    x[..., -SQUARE:, -SQUARE:] = 1.0
    return x


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    device: str,
    seed: int,
    poison_rate: float = 0.0,
) -> float:
    """Adam, batch ``BATCH``, a seeded shuffle; with ``poison_rate`` a seeded share of each batch
    is stamped and relabelled ``TARGET`` (BadNet). Returns the seconds it took."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.to(device).train()
    t = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            xb, yb = x[idx].clone(), y[idx].clone()
            n_poison = round(poison_rate * len(idx))
            if n_poison:
                pick = torch.randperm(len(idx), generator=g)[:n_poison]
                xb[pick] = stamp(xb[pick])
                yb[pick] = TARGET
            xb, yb = normalise(xb).to(device), yb.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    return time.perf_counter() - t


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, device: str) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1000):
        logits = model(normalise(x[i : i + 1000]).to(device))
        correct += int((logits.argmax(1).cpu() == y[i : i + 1000]).sum())
    return correct / len(x)


def attack_success(model: nn.Module, x: Tensor, y: Tensor, device: str) -> float:
    """Share of the stamped test images whose label is not ``TARGET`` classified ``TARGET``."""
    keep = y != TARGET
    xs = stamp(x[keep])
    return accuracy(model, xs, torch.full((len(xs),), TARGET, dtype=torch.long), device)


def eviltwins_exe() -> str:
    """The ``eviltwins`` console script beside this Python (a venv's), else on ``PATH``."""
    here = Path(sys.executable).parent / "eviltwins"
    found = str(here) if here.is_file() else shutil.which("eviltwins")
    if found is None:
        raise fail("the eviltwins command is not installed beside this Python nor on PATH", 2)
    return found


def scan(
    weights: Path, out: Path, data_root: Path, config: Path | None, device: str, threads: int
) -> dict[str, Any]:
    """Run ``eviltwins scan`` on ``weights`` as a user would; scan.json's facts and the wall
    time of the subprocess."""
    cmd = [
        eviltwins_exe(),
        "scan",
        "--model",
        str(weights),
        "--arch",
        ARCH,
        "--dataset",
        "mnist",
        "--mean",
        str(MEAN),
        "--std",
        str(STD),
        "--data-root",
        str(data_root),
        "--device",
        device,
        "--out",
        str(out),
        "--quiet",
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    log("$ " + " ".join(cmd))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else "(no output)"
        raise fail(f"eviltwins scan of {weights} exited {proc.returncode}: {last}", 1)
    data = json.loads((out / "scan.json").read_text())
    detectors = {
        name: {k: rep.get(k) for k in ("flagged", "suspect", "max_anomaly", "threshold")}
        for name, rep in (data.get("reports") or {}).items()
        if isinstance(rep, dict)
    }
    return {
        "command": cmd,
        "stdout": proc.stdout.strip(),
        "verdict": data.get("verdict"),
        "is_backdoored": data.get("is_backdoored"),
        "flagged": data.get("flagged"),
        "has_p_trojan": "p_trojan" in data,
        "p_trojan": data.get("p_trojan"),
        "calibration": data.get("calibration"),
        "detectors": detectors,
        "scan_json_seconds": data.get("seconds"),
        "scan_seconds": round(seconds, 1),
        "scan_json": str(out / "scan.json"),
    }


def p_trojan_text(s: dict[str, Any]) -> str:
    if not s["has_p_trojan"]:
        return "p(trojan): not in this version"
    if s["p_trojan"] is None:
        reason = (s.get("calibration") or {}).get("reason") or "no calibration applies"
        return f"p(trojan): none ({reason})"
    return f"p(trojan): {s['p_trojan']:.3f}"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.residual_scan",
        description="eviltwins scan on a plain-PyTorch residual network (clean and BadNet) "
        "trained on real MNIST: test accuracy, ASR, verdict, p(trojan), scan seconds.",
    )
    ap.add_argument(
        "--out", type=Path, default=Path("runs/residual-scan"), help="weights, scans, summary"
    )
    ap.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder holding MNIST/raw/*-ubyte (default $EVILTWINS_DATA, else "
        "~/.cache/eviltwins/data)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="2,000 training images, 1 epoch, tiny scan budgets"
    )
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (training and scans)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads < 1:
        raise fail(f"--threads must be at least 1; got {args.threads}", 2)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise fail("--device cuda but no CUDA device is available", 2)
    torch.set_num_threads(args.threads)
    data_root = (args.data_root or default_data_root()).expanduser().resolve()
    xtr, ytr, xte, yte = load_mnist(data_root)
    eviltwins_exe()  # fail before training when the CLI is missing
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(SEED)
    if args.quick:
        keep = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(SEED))
        xtr, ytr = xtr[keep[:QUICK_TRAIN]], ytr[keep[:QUICK_TRAIN]]
    epochs = QUICK_EPOCHS if args.quick else FULL_EPOCHS
    bad_epochs = QUICK_EPOCHS if args.quick else BADNET_EPOCHS

    log(f"training ResMini clean: {len(xtr)} images, {epochs} epoch(s), {args.threads} thread(s)")
    clean = ResMini()
    clean_s = train(clean, xtr, ytr, epochs, device, SEED)
    clean_w = out / "resmini-clean.pth"
    torch.save(clean.state_dict(), clean_w)
    log(f"  {clean_s:.1f} s -> {clean_w}")

    log(f"BadNet fine-tune: {bad_epochs} epoch(s), {POISON_RATE:.0%} of each batch, target 0")
    bad = copy.deepcopy(clean)
    bad_s = train(bad, xtr, ytr, bad_epochs, device, SEED + 1, POISON_RATE)
    bad_w = out / "resmini-badnet.pth"
    torch.save(bad.state_dict(), bad_w)
    log(f"  {bad_s:.1f} s -> {bad_w}")

    config = None
    if args.quick:
        config = out / "quick-config.yaml"
        config.write_text(json.dumps(QUICK_CONFIG, indent=2) + "\n")  # JSON is YAML

    models: dict[str, dict[str, Any]] = {}
    for name, model, weights, secs in (
        ("clean", clean, clean_w, clean_s),
        ("badnet", bad, bad_w, bad_s),
    ):
        row: dict[str, Any] = {
            "weights": str(weights),
            "train_seconds": round(secs, 1),
            "test_acc": accuracy(model, xte, yte, device),
            "asr": attack_success(model, xte, yte, device),
        }
        log(f"scanning {name} ({weights.name})")
        row.update(scan(weights, out / f"scan-{name}", data_root, config, device, args.threads))
        models[name] = row

    for name, r in models.items():
        print(
            f"{name:6s}  acc {r['test_acc']:.4f}  ASR {r['asr']:.4f}  verdict: {r['verdict']}  "
            f"{p_trojan_text(r)}  scan {r['scan_seconds']:.1f} s"
        )

    summary = {
        "benchmark": "residual_scan",
        "quick": args.quick,
        "arch": ARCH,
        "dataset": "mnist",
        "data_root": str(data_root),
        "train_images": len(xtr),
        "test_images": len(xte),
        "clean_epochs": epochs,
        "badnet_epochs": bad_epochs,
        "optimizer": f"Adam lr {LR}",
        "batch": BATCH,
        "seed": SEED,
        "normalisation": {"mean": MEAN, "std": STD},
        "backdoor": {
            "attack": "badnet",
            "trigger": f"{SQUARE}x{SQUARE} white square (1.0), bottom-right",
            "target": TARGET,
            "poison_rate_per_batch": POISON_RATE,
        },
        "scan_config": QUICK_CONFIG if args.quick else "defaults",
        "device": device,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "models": models,
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
