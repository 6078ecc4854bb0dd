"""The sweep runner: clean models trained once and cached, then one task per cell.

Run folder layout (``out``)::

    sweep.json                     the validated spec of the last run
    clean/<key>/model.*            cached clean model per (dataset, model, seed, training options)
    cells/<cell key>.json          one result per cell, written atomically when the cell ends
    cells/<cell key>/trigger.*     its trigger (safetensors + PNG) and stamped examples
    report/                        written by ``eviltwins report`` (see eviltwins.report)
    .lock                          held (flock) by the running sweep; holds its pid

A cell is finished when its JSON exists, has the shape of a cell result (:func:`read_cell`) and
``"status": "ok"``; a re-run skips finished cells and retries failed ones, and recomputes a cell
whose file is unreadable (cut short, not JSON, the wrong shape). A failing cell records its
error (type, message, traceback) and the others go on. Ctrl-C or a kill loses only the cells
still running: each result is written by the driver the moment its task returns (write to a
temporary file, then rename).

``out`` must be new, empty or a sweep run folder (never a model folder or a home folder), and
one sweep at a time runs in it: the driver holds ``out/.lock`` (``flock``, released when the
process ends, crash or not). Worker processes exit when the driver dies.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eviltwins.errors import DataError, EviltwinsError, ParamError
from eviltwins.experiments.executors import make_executor, set_threads
from eviltwins.experiments.spec import (
    CLEAN_ATTACK,
    Cell,
    SweepSpec,
    cells,
    clean_config,
    clean_key,
    load_spec,
    user_models,
)
from eviltwins.experiments.store import (
    CELL_SCHEMA,
    CellFileError,
    CellResult,
    read_cell,
    write_cell,
)
from eviltwins.io import write_json
from eviltwins.paths import prepare_out
from eviltwins.utils import progress, versions

SUMMARY_SCHEMA = "eviltwins.sweep-summary/1"
N_EXAMPLES = 4
LOCK_FILE = ".lock"


class SweepLockedError(EviltwinsError):
    """Another sweep is running in the same run folder."""


class CellsFailedError(EviltwinsError):
    """A sweep finished with failed cells (raised by :meth:`SweepSummary.raise_for_failures`;
    the CLI turns it into exit code 2)."""


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
    unreadable: dict[str, str] = field(default_factory=dict)

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
            "unreadable": self.unreadable,
        }

    def summary(self) -> str:
        s = (
            f"sweep {self.out}: {self.total} cells, ran {len(self.ran)}, skipped "
            f"{len(self.skipped)} finished, {len(self.failed)} failed ({self.seconds:.0f} s, "
            f"{self.executor})"
        )
        if self.unreadable:
            s += f"\n  recomputed {len(self.unreadable)} unreadable cell file(s)"
        for key, err in list(self.failed.items())[:5]:
            s += f"\n  failed {key}: {err}"
        return s

    def failure_line(self) -> str | None:
        """One line naming the failed cells (``None`` when every cell finished)."""
        if not self.failed:
            return None
        key, err = next(iter(self.failed.items()))
        first = " ".join(f"{key}: {err}".split())[:300]
        return (
            f"{len(self.failed)} of {self.total} cells failed (first: {first}); finished cells "
            "are kept, re-run to retry"
        )

    def raise_for_failures(self) -> None:
        """Raise :class:`CellsFailedError` (one line) when any cell failed."""
        line = self.failure_line()
        if line is not None:
            raise CellsFailedError(line)


# --- tasks (top-level functions: they run in worker processes and on Ray nodes) -------------
def train_clean_task(
    cfg: dict[str, Any], data_root: str | None, device: str, threads: int | None
) -> dict:
    """Train one clean model; returns its safetensors blob (or the error)."""
    from eviltwins.config import validate
    from eviltwins.experiments.clean import train_clean
    from eviltwins.io import model_to_bytes
    from eviltwins.training import TrainConfig

    set_threads(threads)
    sets = ("dataset", "model", "train_limit", "test_limit", "arch_kwargs")
    try:
        res = train_clean(
            cfg["dataset"],
            cfg["model"],
            validate(TrainConfig, **{k: v for k, v in cfg.items() if k not in sets}),
            arch_kwargs=cfg.get("arch_kwargs"),
            device=device,
            data_root=data_root,
            train_limit=cfg.get("train_limit"),
            test_limit=cfg.get("test_limit"),
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
    from eviltwins.data import load_all
    from eviltwins.detectors import DETECTORS, InputFilter, evaluate_filter
    from eviltwins.io import model_from_bytes, model_to_bytes
    from eviltwins.training import evaluate, get_dataset, predict
    from eviltwins.utils import resolve_device

    clean = cfg["clean"]
    # the sweep's spec names its model: a user architecture there is trusted (imported)
    model, card = model_from_bytes(clean_blob, resolve_device(device), trust_arch=(cfg["model"],))
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
        res = ATTACKS.build(cfg["attack"], cfg["params"], True).fit(model, spec)
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
        det = DETECTORS.build(d["name"], d["params"], True)
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


# --- the run folder ----------------------------------------------------------------------------
def check_run_folder(out: str | os.PathLike[str]) -> Path:
    """Check (creating nothing) that ``out`` can be a sweep's run folder; one
    :class:`~eviltwins.errors.ParamError` line otherwise: a file, a path under a file, or a
    non-empty folder that is not a sweep run folder (no ``sweep.json`` or ``cells/``), so a
    sweep never writes into a model folder or a home folder."""
    out = prepare_out(out, "sweep")  # a file, under a file, unwritable, another kind of folder
    for name, kind in (("cells", "folder"), ("clean", "folder"), ("sweep.json", "file")):
        path = out / name
        if (path.exists() or path.is_symlink()) and not (
            path.is_dir() if kind == "folder" else path.is_file()
        ):
            raise ParamError(f"--out {out}: {name} is not a {kind}; remove it or use another --out")
    return out


def _prepare_run_folder(out: Path) -> None:
    """Create ``out`` (and ``cells/``) and prove it writable, before any work."""
    check_run_folder(out)
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ParamError(
            f"--out {out} cannot be written ({err.strerror or err}); choose a folder you can "
            "write to"
        ) from None


def _lock_run_folder(out: Path) -> int | None:
    """Hold ``out/.lock`` (``flock``, non-blocking) for this process; a second sweep into
    ``out`` gets :class:`SweepLockedError`. The lock dies with the process (crash or kill),
    so a stale file never blocks. Returns the descriptor to close (``None``: no locking here)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ParamError(
            f"--out {out}: cannot open the lock file {path} ({err.strerror or err})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if not isinstance(err, BlockingIOError):  # a filesystem without locks: go on
            os.close(fd)
            return None
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        os.close(fd)
        pid = text if text.isdigit() else "unknown"
        raise SweepLockedError(
            f"another sweep is running in {out} (pid {pid}); wait for it or use another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check_run_args(jobs: Any, threads: Any) -> None:
    def bad(v: Any) -> bool:
        return isinstance(v, bool) or not isinstance(v, int) or v < 1

    if bad(jobs):
        raise ParamError(f"--jobs must be >= 1 (worker processes); got {jobs!r}")
    if threads is not None and bad(threads):
        raise ParamError(f"--threads must be >= 1 (torch threads per cell); got {threads!r}")


# --- the driver ----------------------------------------------------------------------------


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
    Everything the user gives is checked before any work: ``jobs`` and ``threads`` (>= 1),
    the spec, and ``out`` (:func:`check_run_folder`; created and proved writable). A second
    sweep into a folder in use raises :class:`SweepLockedError`.
    """
    from eviltwins.data.base import resolve_data_root

    start = time.perf_counter()
    _check_run_args(jobs, threads)
    spec = load_spec(spec)
    out = Path(out) if out is not None else Path("runs") / spec.name
    ex = make_executor(executor, jobs=jobs, address=ray_address, device=device)
    root = str(resolve_data_root(data_root))
    _prepare_run_folder(out)
    lock = _lock_run_folder(out)
    try:
        return _run_locked(spec, out, ex, executor, threads, device, root, quiet, start)
    finally:
        ex.close()
        if lock is not None:
            os.close(lock)


def _run_locked(
    spec: SweepSpec,
    out: Path,
    ex: Any,
    executor: str,
    threads: int | None,
    device: str,
    root: str,
    quiet: bool | None,
    start: float,
) -> SweepSummary:
    """The sweep proper, while this process holds the run folder's lock."""
    from eviltwins.io import load_model, model_from_bytes, model_to_bytes, save_model

    trust = tuple(user_models(spec))  # the spec's own user architectures: the user named them
    grid = cells(spec)
    keys = [c.key(spec) for c in grid]
    skipped: list[str] = []
    unreadable: dict[str, str] = {}
    for k in keys:
        path, side = out / "cells" / f"{k}.json", out / "cells" / k
        if path.is_dir() or ((side.exists() or side.is_symlink()) and not side.is_dir()):
            what, kind = (path, "folder") if path.is_dir() else (side, "file")
            raise DataError(
                f"{what} is a {kind} where the sweep writes a cell result; remove it and re-run"
            )
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            if read_cell(path).ok:
                skipped.append(k)
        except CellFileError as err:
            unreadable[k] = err.reason
    write_json(out / "sweep.json", spec.to_dict())
    threads = threads if threads is not None else ex.default_threads()
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
    for k in needed:  # cached clean models of earlier runs (an unreadable one is retrained)
        if (out / "clean" / k / "model.json").is_file():
            with contextlib.suppress(EviltwinsError):
                blobs[k] = model_to_bytes(*load_model(out / "clean" / k, trust_arch=trust))
    to_train = [k for k in needed if k not in blobs]
    if to_train:
        bar = progress(total=len(to_train), desc="clean models", quiet=quiet)
        args = [(needed[k], root, device, threads) for k in to_train]
        for i, res in ex.imap(train_clean_task, args, cpus=threads):
            key = to_train[i]
            if "error" in res:
                errors[key] = res["error"]
            else:
                blobs[key] = res["blob"]
                save_model(*model_from_bytes(res["blob"], trust_arch=trust), out / "clean" / key)
            bar.update(1)
        bar.close()

    # Stage 2: the cells.
    ran: list[str] = []
    failed: dict[str, str] = {}
    runnable: list[tuple[Cell, str]] = []
    for c, k in todo:
        ck = clean_key(spec, c.dataset, c.model, c.seed)
        if ck in errors:
            write_cell(out, k, _clean_failure(c, spec, errors[ck]), {})
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
        result: CellResult = res["result"]
        write_cell(out, key, result, res["files"])
        if result.ok:
            ran.append(key)
        else:
            failed[key] = result.error or "failed"
        bar.update(1)
    bar.close()
    return SweepSummary(
        str(out),
        len(grid),
        ran,
        skipped,
        failed,
        round(time.perf_counter() - start, 1),
        executor,
        [k for k in to_train if k not in errors],
        unreadable,
    )


def _clean_failure(cell: Cell, spec: SweepSpec, error: str) -> CellResult:
    return CellResult.from_dict(
        {
            "schema": CELL_SCHEMA,
            "status": "error",
            "error": f"clean model: {error}",
            "cell": cell.config(spec),
        }
    )
