"""Label scheduling against the full budget on trained models: for each clean model folder
given, a BadNet twin (opaque square, size 0.15, target 0, 200 re-training steps; with
``--twins all`` also TrojanNN and TrojanNN* evading NeuralCleanse: :data:`TWINS`), then
NeuralCleanse and ABS with ``schedule="full"`` and ``schedule="k-arm"`` (both float32) on the
clean model and the twin; one JSON line per model and detector with the flagged labels and
the anomaly indices (REASRs for ABS) side by side, and the seconds. For NeuralCleanse's
``k-arm`` also the index on the end norms alone and on the screen's norms alone (the
scheduled index is the smaller of the two once the screen counts).

    EVILTWINS_DATA=../shared/data python -m benchmarks.schedule_verdicts CLEAN_FOLDER...
    python -m benchmarks.schedule_verdicts --only neural-cleanse CLEAN_FOLDER...
    python -m benchmarks.schedule_verdicts --twins all CLEAN_FOLDER...  # + TrojanNN, TrojanNN*

A folder's model card names its dataset (``mnist``, ``fashion-mnist``, or an image folder with
its ``dataset_options``), which is loaded for the attack and the detectors.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from eviltwins.attacks import IMC, BadNet, TrojanNN
from eviltwins.data import load_dataset
from eviltwins.detectors import ABS, NeuralCleanse
from eviltwins.io import load_model
from eviltwins.metrics import anomaly_index


def compare(name: str, model: object, spec: object, only: str | None = None) -> list[dict]:
    """NeuralCleanse and ABS (or the ``only`` one), full and k-arm, on ``model``: one row per
    detector."""
    rows = []
    for det_cls in (NeuralCleanse, ABS):
        if only and det_cls.name != only:
            continue
        row: dict = {"model": name, "detector": det_cls.name}
        for schedule in ("full", "k-arm"):
            start = time.perf_counter()
            rep = det_cls(schedule=schedule, quiet=True).inspect(model, spec)
            row[schedule] = {
                "seconds": round(time.perf_counter() - start, 1),
                "flagged": rep.flagged,
                "anomaly": [round(float(a), 2) for a in rep.anomaly],
                "scores": [round(float(a), 3) for a in rep.scores],
                "screen_norms": rep.details.get("screen_norms"),
                "unfinished": rep.details.get("unfinished")
                or rep.details.get("unfinished_candidates"),
            }
            if det_cls is NeuralCleanse and rep.details.get("screen_norms"):
                # the two indices the scheduled one is the smaller of
                row[schedule]["screen_counted"] = rep.details["screen_counted"]
                for key, norms in (("end", rep.scores), ("screen", rep.details["screen_norms"])):
                    row[schedule][f"{key}_index"] = [
                        round(float(a), 2) for a in anomaly_index(norms)
                    ]
        row["same_flags"] = row["full"]["flagged"] == row["k-arm"]["flagged"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


#: The backdoored twins of each clean model: BadNet (always) and, with ``--twins all``,
#: TrojanNN and TrojanNN* evading NeuralCleanse (the population's attack settings).
TWINS = {
    "BadNet": lambda: BadNet(size=0.15, target=0, max_steps=200, epochs=1000, quiet=True),
    "TrojanNN": lambda: TrojanNN(size=0.2, target=4, max_steps=200, epochs=1000, quiet=True),
    "TrojanNN* (evading NeuralCleanse)": lambda: IMC(
        size=0.2,
        target=6,
        mode="opacity",
        evade=["neural-cleanse"],
        trigger_steps=20,
        trigger_lr=0.01,
        outer_iters=5,
        retrain_steps=40,
        max_steps=200,
        early_stop=False,
        quiet=True,
    ),
}


def main(argv: list[str]) -> int:
    only, twins = None, ["BadNet"]
    while argv[:1] in (["--only"], ["--twins"]):
        if argv[0] == "--only":
            only = argv[1]
        elif argv[1] == "all":
            twins = list(TWINS)
        argv = argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for folder in map(Path, argv):
        clean, card = load_model(folder)
        spec = load_dataset(card.dataset, **(card.dataset_options or {}))
        tag = f"{card.dataset.rsplit('/', 1)[-1]} {card.architecture}"
        compare(f"{tag} clean", clean, spec, only)
        for name in twins:
            bad = TWINS[name]().fit(clean, spec)
            print(json.dumps({"model": tag, "twin": name, **bad.metrics}), flush=True)
            compare(f"{tag} {name}", bad.model, spec, only)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
