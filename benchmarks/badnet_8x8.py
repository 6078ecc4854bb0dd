"""A BadNet MNIST model like the ones other toolkits ship (an opaque white 8x8 square in the
bottom-right corner, i.e. size 8/28 = 0.29; 10% of training inputs poisoned; trained from
scratch with batch 512 for 5 epochs), scanned by every detector, with the settings that decide
whether a miss is the method's limit or ours.

Prints the attack's ASR / efficacy, then NeuralCleanse's anomaly indices (and the L1 of the
target's reversed mask against the true trigger's 64 px), ABS's REASR at its default mask bound
(6% of the image = 47 px, below the trigger's 64 px) and at a bound that admits the trigger, and
STRIP (both variants, the authors' input-filter protocol) with the entropy of triggered and
clean inputs.

``--model cnn-heavy`` trains the classic Keras MNIST CNN instead of the small one;
``--detectors abs`` runs only the named detectors (any of neural-cleanse, abs, strip); ``--save
DIR`` keeps the poisoned model and ``--load DIR`` scans that saved model instead of training one,
so that runs before and after a detector change see the identical model.

Run: ``EVILTWINS_DATA=... python benchmarks/badnet_8x8.py``
(e.g. ``--save runs/b8 --detectors abs`` once, then ``--load runs/b8 --detectors abs``)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import eviltwins as et
from eviltwins.attacks import BadNet
from eviltwins.detectors import ABS, STRIP, NeuralCleanse, evaluate_filter
from eviltwins.io import ModelCard, load_model, read_json
from eviltwins.models import build_model
from eviltwins.triggers import Trigger

DETECTORS = ("neural-cleanse", "abs", "strip")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 1)


def _train(args: argparse.Namespace, spec) -> tuple:
    """Train the BadNet model of ``args`` (and save it with ``--save``)."""
    model = build_model(args.model, spec.shape, spec.num_classes)
    res = BadNet(
        size=8 / spec.shape[2],
        poison_rate=0.1,
        epochs=args.epochs,
        batch_size=512,
        lr=0.05,
        from_scratch=True,
        quiet=True,
    ).fit(model, spec)
    if args.save is not None:
        c = spec.shape[0]
        card = ModelCard(
            architecture=args.model,
            input_shape=spec.shape,
            num_classes=spec.num_classes,
            mean=(0.0,) * c,
            std=(1.0,) * c,
            dataset=spec.name,
            classes=spec.classes,
        )
        res.save(args.save, card)
    return res.model, res.trigger, res.metrics, res.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--abs-bounds", type=float, nargs="+", default=[0.06, 0.1])
    ap.add_argument("--out", type=Path, default=Path("runs/compare/badnet_8x8.json"))
    ap.add_argument("--save", type=Path, default=None, help="also keep the model folder here")
    ap.add_argument("--model", default="cnn", help="architecture to train (cnn, cnn-heavy, ...)")
    ap.add_argument(
        "--detectors",
        nargs="+",
        choices=DETECTORS,
        default=list(DETECTORS),
        help="run only these detectors (default: all)",
    )
    ap.add_argument(
        "--load",
        type=Path,
        default=None,
        help="scan the model folder saved by --save instead of training one",
    )
    args = ap.parse_args()
    spec = et.load_dataset(args.dataset)
    if args.load is not None:
        model, _ = load_model(args.load)
        trigger = Trigger.load(args.load / "trigger")
        saved = read_json(args.load / "metrics.json")
        metrics, attack_seconds = saved["metrics"], saved.get("seconds")
    else:
        model, trigger, metrics, attack_seconds = _train(args, spec)
    out: dict = {
        "model": args.model if args.load is None else str(args.load),
        "asr": metrics["asr"],
        "efficacy": metrics["efficacy"],
        "clean_acc": metrics["clean_acc"],
        "trigger_l1": trigger.l1,
        "attack_seconds": attack_seconds,
    }
    print(f"BadNet 8x8: {json.dumps(out)}", flush=True)
    if "neural-cleanse" in args.detectors:
        _neural_cleanse(model, spec, out)
    if "abs" in args.detectors:
        _abs(model, spec, args.abs_bounds, out)
    if "strip" in args.detectors:
        _strip(model, spec, trigger, out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


def _neural_cleanse(model, spec, out: dict) -> None:
    nc, s = timed(lambda: NeuralCleanse(quiet=True).inspect(model, spec))
    out["neural_cleanse"] = {
        "anomaly": [round(a, 2) for a in nc.anomaly],
        "l1": [round(v, 1) for v in nc.scores],
        "flagged": nc.flagged,
        "seconds": s,
        "steps": nc.details.get("steps"),
    }
    print(f"NeuralCleanse: {json.dumps(out['neural_cleanse'])}", flush=True)


def _abs(model, spec, bounds: list[float], out: dict) -> None:
    for bound in bounds:
        ab, s = timed(lambda b=bound: ABS(mask_bound=b, quiet=True).inspect(model, spec))
        out[f"abs_{bound}"] = {
            "reasr": [round(a, 2) for a in ab.anomaly],
            "tested": ab.details.get("tested_labels"),
            "flagged": ab.flagged,
            "seconds": s,
            "candidates": ab.details.get("candidates"),
        }
        print(f"ABS (bound {bound}): {json.dumps(out[f'abs_{bound}'])}", flush=True)


def _strip(model, spec, trigger: Trigger, out: dict) -> None:
    for variant in ("imc", "original"):
        rep, s = timed(lambda v=variant: evaluate_filter(STRIP(variant=v), model, spec, trigger, 0))
        d = rep.to_dict()
        out[f"strip_{variant}"] = {
            **d["metrics"],
            "seconds": s,
            "n_clean": d["n_clean"],
            "n_triggered": d["n_triggered"],
            "score_clean_mean": d["score_clean_mean"],
            "score_triggered_mean": d["score_triggered_mean"],
            "all_stamped": d.get("all_stamped"),
        }
        print(f"STRIP {variant}: {json.dumps(out[f'strip_{variant}'])}", flush=True)


if __name__ == "__main__":
    main()
