"""A sweep's run folder: what may be one (never a model folder or a home folder) and the lock
that keeps one sweep at a time in it (``out/.lock``, ``flock``: released when the process ends,
crash or not)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eviltwins.errors import EviltwinsError, ParamError
from eviltwins.paths import Inputs, prepare_out

LOCK_FILE = ".lock"


class SweepLockedError(EviltwinsError):
    """Another sweep is running in the same run folder."""


def check_run_folder(out: str | os.PathLike[str], inputs: Inputs | None = None) -> Path:
    """Check (creating nothing) that ``out`` can be a sweep's run folder; one
    :class:`~eviltwins.errors.ParamError` line otherwise: a path meeting one of ``inputs``
    (the spec file, the datasets), a file, a path under a file, or a non-empty folder that is
    not a sweep run folder (no ``sweep.json`` or ``cells/``), so a sweep never writes into a
    model folder, a dataset or a home folder. Returns ``out`` resolved
    (:func:`~eviltwins.paths.prepare_out`): the path to write to."""
    out = prepare_out(out, "sweep", inputs=inputs)  # inputs, files, unwritable, other kinds
    for name, kind in (("cells", "folder"), ("clean", "folder"), ("sweep.json", "file")):
        path = out / name
        if (path.exists() or path.is_symlink()) and not (
            path.is_dir() if kind == "folder" else path.is_file()
        ):
            raise ParamError(f"--out {out}: {name} is not a {kind}; remove it or use another --out")
    return out


def prepare_run_folder(out: str | os.PathLike[str], inputs: Inputs | None = None) -> Path:
    """Check ``out`` (:func:`check_run_folder`), create it (and ``cells/``) and prove it
    writable, before any work; returns the path to write to."""
    out = check_run_folder(out, inputs)
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ParamError(
            f"--out {out} cannot be written ({err.strerror or err}); choose a folder you can "
            "write to"
        ) from None
    return out


def spec_reads(
    spec: Any, source: str | os.PathLike[str] | None, data_root: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """What a sweep of ``spec`` (read from the file ``source``, if any) reads from disk, for
    :func:`check_run_folder` to keep the run folder apart from: the spec file and each
    dataset's file or folder."""
    from eviltwins.data import dataset_location

    reads: dict[str, Any] = {"the sweep spec": source}
    for ds in spec.datasets:
        reads[f"the dataset {ds}"] = dataset_location(ds, data_root)
    return reads


def lock_run_folder(out: Path) -> int | None:
    """Hold ``out/.lock`` (``flock``, non-blocking) for this process; a second sweep into
    ``out`` gets :class:`SweepLockedError`. The lock dies with the process (crash or kill),
    so a stale file never blocks. Returns the descriptor to close (``None``: no locking here)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
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
