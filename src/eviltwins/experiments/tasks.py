"""The sweep's tasks: top-level functions (they run in worker processes and on Ray nodes) that
train a clean model or run one cell (the attack on the clean model, then every detector) and
return plain data and a :class:`~eviltwins.experiments.store.CellResult` for the driver to
write."""

from __future__ import annotations

import time
import traceback
from typing import Any

from eviltwins.errors import EviltwinsError
from eviltwins.experiments.executors import set_threads
from eviltwins.experiments.grid import cell_target
from eviltwins.experiments.spec import CLEAN_ATTACK
from eviltwins.experiments.store import CELL_SCHEMA, CellResult
from eviltwins.utils import versions

#: Stamped examples saved per cell (next to its trigger).
N_EXAMPLES = 4


def train_clean_task(
    cfg: dict[str, Any], data_root: str | None, device: str, threads: int | None
) -> dict:
    """Train one clean model; returns its safetensors blob (or the error)."""
    from eviltwins.config import validate
    from eviltwins.experiments.clean import train_clean
    from eviltwins.io import model_to_bytes
    from eviltwins.training import TrainConfig, get_dataset

    set_threads(threads)
    sets = ("dataset", "model", "train_limit", "test_limit", "arch_kwargs", "dataset_options")
    try:
        tc = validate(TrainConfig, **{k: v for k, v in cfg.items() if k not in sets})
        limits = (cfg.get("train_limit"), cfg.get("test_limit"))
        options = cfg.get("dataset_options") or {}
        data = get_dataset(cfg["dataset"], data_root, False, *limits, cfg["seed"], **options)
        res = train_clean(
            data,
            cfg["model"],
            tc,
            arch_kwargs=cfg.get("arch_kwargs"),
            device=device,
            limits=limits,
            quiet=True,
        )
    except Exception as err:  # recorded on every cell of this model; the sweep goes on
        return {"error": _describe(err), "traceback": traceback.format_exc()}
    return {"blob": model_to_bytes(res.model, res.card), "metrics": res.metrics}


def run_cell_task(
    cfg: dict[str, Any],
    clean_blob: bytes,
    data_root: str | None,
    device: str,
    threads: int | None,
) -> dict:
    """Run one cell: the attack on the clean model, then every detector on the result.

    Returns ``{"result": <cell JSON>, "files": {name: bytes}}``; errors become a result with
    ``status: error`` (KeyboardInterrupt is not caught).
    """
    set_threads(threads)
    start = time.perf_counter()
    try:
        result, files = _run_cell(cfg, clean_blob, data_root, device)
        result["status"] = "ok"
    except Exception as err:
        result = {"status": "error", "error": _describe(err), "traceback": traceback.format_exc()}
        files = {}
    result.update(
        schema=CELL_SCHEMA,
        cell=cfg,
        seconds=round(time.perf_counter() - start, 2),
        threads=threads,
        versions=versions(),
    )
    return {"result": CellResult.from_dict(result), "files": files}


def _run_cell(
    cfg: dict[str, Any], clean_blob: bytes, data_root: str | None, device: str
) -> tuple[dict, dict]:
    from safetensors.torch import save

    from eviltwins.attacks import ATTACKS
    from eviltwins.detectors import DETECTORS
    from eviltwins.detectors.evaluation import non_target_examples
    from eviltwins.io import model_from_bytes, model_to_bytes
    from eviltwins.training import evaluate, get_dataset, predict
    from eviltwins.utils import peak_memory, resolve_device

    clean = cfg["clean"]
    # the sweep's spec names its model: a user architecture there is trusted (imported)
    model, card = model_from_bytes(clean_blob, resolve_device(device), trust_arch=(cfg["model"],))
    limits = (clean["train_limit"], clean["test_limit"])
    options = clean.get("dataset_options") or {}
    spec = get_dataset(cfg["dataset"], data_root, False, *limits, cfg["seed"], **options)
    files: dict[str, bytes] = {}
    out: dict[str, Any] = {}
    trigger = None
    target = cell_target(cfg, spec.num_classes)
    if cfg["attack"] == CLEAN_ATTACK:
        poisoned = model
        acc = evaluate(model, spec.test)["accuracy"]
        out["attack"] = {"attack": CLEAN_ATTACK, "metrics": {"clean_acc": acc, "benign_acc": acc}}
    else:
        params = {**cfg["params"], **({"target": target} if "target" in cfg["params"] else {})}
        res = ATTACKS.build(cfg["attack"], params, True).fit(model, spec)
        poisoned, trigger, target = res.model, res.trigger, res.target
        out["attack"] = res.to_dict()
        x = non_target_examples(spec, target, N_EXAMPLES, cfg["seed"])
        stamped = trigger.stamp(x)
        files["trigger.safetensors"] = trigger.to_bytes()
        files["examples.safetensors"] = save(
            {
                "clean": x.contiguous(),
                "stamped": stamped.contiguous(),
                "pred": predict(poisoned, stamped).argmax(1).contiguous(),
            }
        )
    out["target"] = target
    detectors: dict[str, Any] = {}
    for d in cfg["detectors"]:
        label = d.get("label") or d["name"]
        det = DETECTORS.build(d["name"], d["params"], True)
        if det.family == "filter" and trigger is None:
            detectors[label] = {"skipped": "input filters need a trigger; clean-model cell"}
            continue
        with peak_memory(resolve_device(device)) as memory:
            detectors[label] = _detect(det, poisoned, spec, trigger, target, cfg)
        detectors[label]["peak_mb"] = memory["peak_mb"]
    out["detectors"] = detectors
    if cfg.get("save_model"):
        files["model.safetensors"] = model_to_bytes(poisoned, card)
    return out, files


def _detect(det: Any, model: Any, spec: Any, trigger: Any, target: int, cfg: dict) -> dict:
    """One detector's record on the cell's model: an input filter evaluated with the attack's
    trigger, or a model inspection with the target's anomaly and whether it was flagged."""
    from eviltwins.detectors import run_detector

    if det.family == "filter":
        rep = run_detector(
            det,
            model,
            spec,
            trigger=trigger,
            target=target,
            n_clean=cfg["n_clean"],
            seed=cfg["seed"],
        )
        return {"kind": "filter", **rep.to_dict()}
    rep = run_detector(det, model, spec)
    out = {"kind": "inspection", **rep.to_dict()}
    # None (not written) when the target was not inspected or, for ABS, untested
    target_anomaly = rep.anomaly_of(target)
    if target_anomaly is not None:
        out["target_anomaly"] = target_anomaly
    out["target_flagged"] = target in rep.flagged
    return out


def _describe(err: BaseException) -> str:
    msg = " ".join(str(err).split())[:400]
    return msg if isinstance(err, EviltwinsError) else f"{type(err).__name__}: {msg}"
