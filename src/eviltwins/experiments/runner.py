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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eviltwins.errors import DataError, EviltwinsError
from eviltwins.experiments.executors import make_executor
from eviltwins.experiments.folder import (
    check_run_folder,
    lock_run_folder,
    prepare_run_folder,
    spec_reads,
)
from eviltwins.experiments.grid import Cell, cells, clean_config, clean_key
from eviltwins.experiments.options import RunOptions
from eviltwins.experiments.spec import SweepSpec, load_spec, user_models
from eviltwins.experiments.store import (
    CELL_SCHEMA,
    CellFileError,
    CellResult,
    read_cell,
    write_cell,
)
from eviltwins.experiments.tasks import run_cell_task, train_clean_task
from eviltwins.io import write_json
from eviltwins.utils import progress

SUMMARY_SCHEMA = "eviltwins.sweep-summary/1"
N_EXAMPLES = 4
LOCK_FILE = ".lock"


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


# --- the driver ----------------------------------------------------------------------------


def run_sweep(
    spec: SweepSpec | str | os.PathLike[str] | dict[str, Any],
    out: str | os.PathLike[str] | None = None,
    options: RunOptions | None = None,
    **changes: Any,
) -> SweepSummary:
    """Run (or resume) a sweep into ``out`` (default ``runs/<name>``); see the module docstring.

    ``options`` (:class:`RunOptions`: executor, jobs, threads, device, data root, quiet), or
    its fields as keywords (``run_sweep(spec, out, threads=1)``), say how it runs.
    Everything the user gives is checked before any work: the options, the spec, and ``out``
    (:func:`check_run_folder`; created and proved writable). A second sweep into a folder in
    use raises :class:`SweepLockedError`.
    """
    from eviltwins.data.base import resolve_data_root

    start = time.perf_counter()
    opts = RunOptions.of(options, **changes)
    source = spec if isinstance(spec, str | os.PathLike) else None
    spec = load_spec(spec)
    out = Path(out) if out is not None else Path("runs") / spec.name
    out = check_run_folder(out, spec_reads(spec, source, opts.data_root))
    root = str(resolve_data_root(opts.data_root))
    ex = make_executor(opts.executor, jobs=opts.jobs, address=opts.ray_address, device=opts.device)
    lock = None
    try:
        prepare_run_folder(out)
        lock = lock_run_folder(out)
        return _run_locked(spec, out, ex, opts, root, start)
    finally:
        ex.close()
        if lock is not None:
            os.close(lock)


def _run_locked(
    spec: SweepSpec, out: Path, ex: Any, opts: RunOptions, root: str, start: float
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
    threads = opts.threads if opts.threads is not None else ex.default_threads()
    device, quiet = opts.device, opts.quiet
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
        opts.executor,
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
