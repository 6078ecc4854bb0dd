"""``python -m benchmarks``: the speed table (see ``benchmarks/__init__.py`` for the columns).

Examples::

    python -m benchmarks                                  # cnn + cnn-heavy, 5 methods, real MNIST
    python -m benchmarks --models cnn --methods nc,abs    # some rows only
    python -m benchmarks --quick                          # digits, cnn, tiny budgets: a smoke run
    python -m benchmarks --scale                          # paper-size models (benchmarks/scale.py)

Needs real MNIST (``EVILTWINS_DATA`` or ``--data-root``), except with ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.methods import DETECTORS, METHODS

DEFAULT_METHODS = "nc,abs,strip,trojannn,imc"


def _names(value: str, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no {what} given")
    bad = [n for n in names if allowed is not None and n not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed or ())}"
        )
    return list(dict.fromkeys(names))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Wall time vs the eager and hardware floors, peak RSS and verdict of each "
        "method on real MNIST: one table.",
    )
    ap.add_argument(
        "--models",
        default=None,
        help="architectures, comma-separated (default cnn,cnn-heavy; cnn with --quick)",
    )
    ap.add_argument(
        "--methods",
        type=lambda v: _names(v, METHODS, "method"),
        default=DEFAULT_METHODS,
        help=f"comma-separated, of {', '.join(METHODS)} (default {DEFAULT_METHODS}; "
        "nc-serial is added on CUDA)",
    )
    ap.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CPU rows, plus CUDA rows when a GPU is present",
    )
    ap.add_argument("--quick", action="store_true", help="digits and tiny budgets (smoke run)")
    ap.add_argument(
        "--scale",
        action="store_true",
        help="the scale rows instead (CIFAR-shape ResNet-18 and VGG-16, 43 classes, 224x224): "
        "projected full and scheduled scans, see benchmarks/scale.py",
    )
    ap.add_argument("--out", type=Path, default=None, help="results and cached models")
    ap.add_argument("--fresh", action="store_true", help="rebuild the cached models")
    ap.add_argument("--data-root", type=Path, default=None, help="sets EVILTWINS_DATA")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def devices(choice: str) -> list[str]:
    """The devices the rows run on (``auto``: CPU, plus CUDA when present)."""
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise SystemExit("benchmarks: error: --device cuda but no CUDA device is available")
    if choice == "auto":
        return ["cpu", "cuda"] if cuda else ["cpu"]
    return [choice]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser()
    args = ap.parse_args(argv)
    if args.scale:
        from benchmarks import scale

        return scale.main(["--rows"])
    methods = args.methods
    from eviltwins.models import MODELS

    try:
        given = args.models or ("cnn" if args.quick else "cnn,cnn-heavy")
        models = _names(given, tuple(MODELS.names()), "model")
    except argparse.ArgumentTypeError as err:
        ap.error(str(err))
    if args.data_root is not None:
        os.environ["EVILTWINS_DATA"] = str(args.data_root)
    dataset = "digits" if args.quick else "mnist"
    out = args.out or Path("runs/bench/quick" if args.quick else "runs/bench")
    devs = devices(args.device)
    q = args.quiet
    hw = harness.hardware(devs)
    harness.log(harness.format_hardware(hw, {}), q)
    peak = harness.peaks(devs, args.quick)
    for dev, p in peak.items():
        harness.log(f"{dev} fp32 peak: {p['flops_per_s'] / 1e9:,.1f} GFLOP/s", q)
    folders = {
        m: harness.prepare(m, dataset, out, devs[-1], args.quick, args.fresh, q) for m in models
    }
    plan = []
    for dev in devs:
        extra = ["nc-serial"] if dev == "cuda" and "nc" in methods else []
        for m in models:
            plan += [(dev, m, meth) for meth in dict.fromkeys(methods + extra)]
    rows = []
    for i, (dev, m, meth) in enumerate(plan, 1):
        harness.log(f"[{i}/{len(plan)}] {m} {meth} on {dev}", q)
        cfg = {
            "model": m,
            "method": meth,
            "device": dev,
            "dataset": dataset,
            "models_dir": str(folders[m].resolve()),
            "quick": args.quick,
        }
        row = harness.finish(harness.run_row(cfg, q), peak[dev])
        if "error" not in row:
            harness.log(
                f"  wall {row['wall_s']:.2f} s, floor {row['floor_s']:.2f} s "
                f"({row['speed_vs_floor']:.2f}x), {row['peak_rss_mb']:.0f} MB, "
                f"{row['verdict']}",
                q,
            )
        rows.append(row)
    js, md = harness.write_results(out, hw, peak, rows, argv)
    print(harness.format_hardware(hw, peak))
    print()
    print(harness.format_table(rows))
    for line in harness.serial_speedups(rows):
        print(line)
    harness.log(f"wrote {js} and {md}", q)
    expected = [r for r in rows if r.get("method") in DETECTORS and r.get("ok") is False]
    for r in expected:
        harness.log(f"note: {r['label']} on {r['model']} did not flag label 0", q)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
