"""The sweep runner: clean models trained once and cached, then one task per cell.

Run folder layout (``out``)::

    sweep.json                     the validated spec of the last run
    clean/<key>/model.*            cached clean model per (dataset, model, seed, training options)
    cells/<cell key>.json          one result per cell, written atomically when the cell ends
    cells/<cell key>/trigger.*     its trigger (safetensors + PNG) and stamped examples
    report/                        written by ``eviltwins report`` (see eviltwins.report)

A cell is finished when its JSON exists with ``"status": "ok"``; a re-run skips finished cells
and retries failed ones. A failing cell records its error (type, message, traceback) and the
others go on. Ctrl-C or a kill loses only the cells still running: each result is written by the
driver the moment its task returns (write to a temporary file, then rename).
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eviltwins.errors import EviltwinsError
from eviltwins.experiments.executors import make_executor, set_threads
from eviltwins.experiments.spec import (
    CLEAN_ATTACK,
    Cell,
    SweepSpec,
    cells,
    clean_config,
    clean_key,
    load_spec,
)
from eviltwins.io import read_json, write_json
from eviltwins.utils import progress, versions

CELL_SCHEMA = "eviltwins.cell/1"
SUMMARY_SCHEMA = "eviltwins.sweep-summary/1"
N_EXAMPLES = 4


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep run did: cells in the grid, run now, skipped (already finished), failed."""

    out: str
    total: int
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    executor: str
    clean_trained: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SUMMARY_SCHEMA,
            "out": self.out,
            "total": self.total,
            "ran": self.ran,
            "skipped": self.skipped,
            "failed": self.failed,
            "seconds": self.seconds,
            "executor": self.executor,
            "clean_trained": self.clean_trained,
        }

    def summary(self) -> str:
        s = (
            f"sweep {self.out}: {self.total} cells, ran {len(self.ran)}, skipped "
            f"{len(self.skipped)} finished, {len(self.failed)} failed ({self.seconds:.0f} s, "
            f"{self.executor})"
        )
        for key, err in list(self.failed.items())[:5]:
            s += f"\n  failed {key}: {err}"
        return s


# --- tasks (top-level functions: they run in worker processes and on Ray nodes) -------------
def train_clean_task(
    cfg: dict[str, Any], data_root: str | None, device: str, threads: int | None
) -> dict:
    """Train one clean model; returns its safetensors blob (or the error)."""
    from eviltwins import api
    from eviltwins.io import model_to_bytes

    set_threads(threads)
    opts = {k: v for k, v in cfg.items() if k not in ("dataset", "model")}
    try:
        res = api.train(
            cfg["dataset"], cfg["model"], data_root=data_root, device=device, quiet=True, **opts
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
    return {"result": result, "files": files}


def _run_cell(
    cfg: dict[str, Any], clean_blob: bytes, data_root: str | None, device: str
) -> tuple[dict, dict]:
    from safetensors.torch import save

    from eviltwins.api import _configured, get_dataset
    from eviltwins.attacks import ATTACKS
    from eviltwins.data import load_all
    from eviltwins.detectors import DETECTORS, InputFilter, evaluate_filter
    from eviltwins.io import model_from_bytes, model_to_bytes
    from eviltwins.training import evaluate, predict
    from eviltwins.utils import resolve_device

    clean = cfg["clean"]
    model, card = model_from_bytes(clean_blob, resolve_device(device))
    spec = get_dataset(
        cfg["dataset"], data_root, False, clean["train_limit"], clean["test_limit"], cfg["seed"]
    )
    files: dict[str, bytes] = {}
    out: dict[str, Any] = {}
    trigger = None
    target = int(cfg["params"].get("target", 0))
    if cfg["attack"] == CLEAN_ATTACK:
        poisoned = model
        acc = evaluate(model, spec.test)["accuracy"]
        out["attack"] = {"attack": CLEAN_ATTACK, "metrics": {"clean_acc": acc, "benign_acc": acc}}
    else:
        res = _configured(ATTACKS, cfg["attack"], cfg["params"], True).fit(model, spec)
        poisoned, trigger, target = res.model, res.trigger, res.target
        out["attack"] = res.to_dict()
        x, y = load_all(spec.test, limit=256)
        x = x[y != target][:N_EXAMPLES]
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
        det = _configured(DETECTORS, d["name"], d["params"], True)
        if isinstance(det, InputFilter):
            if trigger is None:
                detectors[label] = {"skipped": "input filters need a trigger; clean-model cell"}
                continue
            rep = evaluate_filter(det, poisoned, spec, trigger, target, cfg["n_clean"])
            detectors[label] = {"kind": "filter", **rep.to_dict()}
        else:
            rep = det.inspect(poisoned, spec)
            d_out = {"kind": "inspection", **rep.to_dict()}
            labels = list(rep.details.get("labels", range(len(rep.anomaly))))
            if target in labels:
                d_out["target_anomaly"] = float(rep.anomaly[labels.index(target)])
            d_out["target_flagged"] = target in rep.flagged
            detectors[label] = d_out
    out["detectors"] = detectors
    if cfg.get("save_model"):
        files["model.safetensors"] = model_to_bytes(poisoned, card)
    return out, files


def _describe(err: BaseException) -> str:
    msg = " ".join(str(err).split())[:400]
    return msg if isinstance(err, EviltwinsError) else f"{type(err).__name__}: {msg}"


# --- the driver ----------------------------------------------------------------------------
def is_finished(path: Path) -> bool:
    """A cell result exists and succeeded (an unreadable file counts as unfinished)."""
    if not path.is_file():
        return False
    try:
        return read_json(path, "cell result").get("status") == "ok"
    except EviltwinsError:
        return False


def run_sweep(
    spec: SweepSpec | str | os.PathLike[str] | dict[str, Any],
    out: str | os.PathLike[str] | None = None,
    *,
    executor: str = "local",
    jobs: int = 1,
    ray_address: str | None = None,
    threads: int | None = None,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    quiet: bool | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep into ``out`` (default ``runs/<name>``); see the module docstring.

    ``executor`` is ``local`` (``jobs`` processes; 1 = in this process) or ``ray``
    (``ray_address`` of an existing cluster, else a local one). ``threads`` pins torch threads
    per task (default: all cores for a sequential run, cores/jobs for processes, 1 on Ray).
    ``device`` is resolved in each task (``auto``: CUDA when the worker has it).
    """
    from eviltwins.data.base import resolve_data_root
    from eviltwins.io import load_model, model_from_bytes, model_to_bytes, save_model

    start = time.perf_counter()
    spec = load_spec(spec)
    out = Path(out) if out is not None else Path("runs") / spec.name
    (out / "cells").mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", spec.to_dict())
    ex = make_executor(executor, jobs=jobs, address=ray_address, device=device)
    threads = threads if threads is not None else ex.default_threads()
    root = str(resolve_data_root(data_root))

    grid = cells(spec)
    keys = [c.key(spec) for c in grid]
    skipped = [k for k in keys if is_finished(out / "cells" / f"{k}.json")]
    todo = [(c, k) for c, k in zip(grid, keys, strict=True) if k not in set(skipped)]

    # Stage 1: every clean model the remaining cells need, trained once and cached.
    needed: dict[str, dict[str, Any]] = {}
    for c, _ in todo:
        needed.setdefault(
            clean_key(spec, c.dataset, c.model, c.seed),
            clean_config(spec, c.dataset, c.model, c.seed),
        )
    blobs: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    to_train = [k for k in needed if not (out / "clean" / k / "model.json").is_file()]
    try:
        if to_train:
            bar = progress(total=len(to_train), desc="clean models", quiet=quiet)
            args = [(needed[k], root, device, threads) for k in to_train]
            for i, res in ex.imap(train_clean_task, args, cpus=threads):
                key = to_train[i]
                if "error" in res:
                    errors[key] = res["error"]
                else:
                    blobs[key] = res["blob"]
                    save_model(*model_from_bytes(res["blob"]), out / "clean" / key)
                bar.update(1)
            bar.close()
        for k in needed:  # cached clean models of earlier runs
            if k not in errors and k not in blobs:
                blobs[k] = model_to_bytes(*load_model(out / "clean" / k))

        # Stage 2: the cells.
        ran: list[str] = []
        failed: dict[str, str] = {}
        runnable: list[tuple[Cell, str]] = []
        for c, k in todo:
            ck = clean_key(spec, c.dataset, c.model, c.seed)
            if ck in errors:
                _write_cell(out, k, _clean_failure(c, spec, errors[ck]), {})
                failed[k] = f"clean model: {errors[ck]}"
            else:
                runnable.append((c, k))
        bar = progress(total=len(runnable), desc=f"sweep {spec.name}", quiet=quiet)
        args = [
            (
                {**c.config(spec), "save_model": spec.save_models},
                blobs[clean_key(spec, c.dataset, c.model, c.seed)],
                root,
                device,
                threads,
            )
            for c, _ in runnable
        ]
        for i, res in ex.imap(run_cell_task, args, cpus=threads):
            key = runnable[i][1]
            _write_cell(out, key, res["result"], res["files"])
            if res["result"]["status"] == "ok":
                ran.append(key)
            else:
                failed[key] = res["result"]["error"]
            bar.update(1)
        bar.close()
    finally:
        ex.close()
    return SweepSummary(
        str(out),
        len(grid),
        ran,
        skipped,
        failed,
        round(time.perf_counter() - start, 1),
        executor,
        [k for k in to_train if k not in errors],
    )


def _clean_failure(cell: Cell, spec: SweepSpec, error: str) -> dict[str, Any]:
    return {
        "schema": CELL_SCHEMA,
        "status": "error",
        "error": f"clean model: {error}",
        "cell": cell.config(spec),
    }


def _write_cell(out: Path, key: str, result: dict[str, Any], files: dict[str, bytes]) -> None:
    """Side files first, the JSON last (atomically): its presence marks the cell as done."""
    if files:
        from eviltwins.triggers import Trigger

        folder = out / "cells" / key
        folder.mkdir(parents=True, exist_ok=True)
        for name, blob in files.items():
            if name == "trigger.safetensors":  # Trigger.save also writes the PNG preview
                Trigger.from_bytes(blob).save(folder / "trigger")
                continue
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(blob)
            os.replace(tmp, folder / name)
    write_json(out / "cells" / f"{key}.json", result)


def load_cells(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every cell result of a run folder (finished or failed), sorted by key."""
    folder = Path(run_dir) / "cells"
    if not folder.is_dir():
        from eviltwins.errors import DataError

        raise DataError(
            f"{run_dir} holds no cells/ folder; pass a folder written by 'eviltwins sweep'"
        )
    rows = []
    for p in sorted(folder.glob("*.json")):
        try:
            d = read_json(p, "cell result")
        except EviltwinsError:
            continue
        d["key"] = p.stem
        rows.append(d)
    return rows
