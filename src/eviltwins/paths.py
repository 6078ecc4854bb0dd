"""Paths from users and strangers: files to read and folders to write, checked before any work.

One home for the two questions every command asks about a path it was given:

- :func:`readable_file`: is this a file we can read? The one-line error says *why* not (missing,
  a folder, a broken or looping symlink, permission denied), not just "does not exist".
- :func:`prepare_out`: may results go into this folder? Checked before a model is trained or an
  attack runs, so a bad ``--out`` costs nothing: it must not be a file, lie under a file, or be
  unwritable; it must not be the input model's folder; and a non-empty folder written for another
  purpose (a model folder for an attack, an attack folder for training) is refused unless
  ``overwrite``, which deletes only the files eviltwins itself writes there.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from eviltwins.errors import DataError, ParamError

#: The files each kind of output folder holds, as eviltwins writes them.
OUTPUT_FILES: dict[str, frozenset[str]] = {
    "model": frozenset({"model.json", "model.safetensors"}),
    "attack": frozenset(
        {
            "model.json",
            "model.safetensors",
            "trigger.safetensors",
            "trigger.png",
            "metrics.json",
            "examples.png",
        }
    ),
    "report": frozenset({"report.json", "reversed.safetensors", "reversed.png"}),
    # and a sub-folder per inspector, a "report" folder each
    "scan": frozenset({"scan.json", "scan.html"}),
}
#: Files that tell what a folder is, most specific first.
_MARKERS = (
    ("sweep", "sweep.json"),
    ("sweep", "cells"),
    ("attack", "trigger.safetensors"),
    ("attack", "metrics.json"),
    ("model", "model.json"),
    ("scan", "scan.json"),
    ("report", "report.json"),
)


def why_unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (``None`` when it can)."""
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symlink loop"
        if path.is_symlink():
            return f"is a broken symlink (to {os.readlink(path)})"
        if err.errno == errno.ENOTDIR:
            return "lies under something that is not a folder"
        if err.errno == errno.EACCES:
            return "cannot be reached (permission denied)"
        return "does not exist"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return None


def readable_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a :class:`Path` when it is a readable regular file; else a one-line
    :class:`~eviltwins.errors.DataError` saying what it is instead."""
    path = Path(path)
    reason = why_unreadable(path)
    if reason is not None:
        raise DataError(f"{what} {path} {reason}")
    return path


def folder_kind(folder: Path) -> str | None:
    """What eviltwins wrote into ``folder``: sweep (``sweep.json`` or ``cells/``), attack, model
    scan or report; ``None`` for a missing or empty folder and ``"other"`` for one holding only files eviltwins did not write."""
    try:
        names = {p.name for p in folder.iterdir()} - {".lock"}  # a sweep's lock file
    except OSError:
        return None
    if not names:
        return None
    for kind, marker in _MARKERS:
        if marker in names:
            return kind
    return "other"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def prepare_out(
    out: str | os.PathLike[str],
    kind: str,
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    flag: str = "--out",
) -> Path:
    """Check the output folder ``out`` for results of ``kind`` (a key of
    :data:`OUTPUT_FILES`) before any work is done; returns it (created later, by the writer).

    Refused with one :class:`~eviltwins.errors.ParamError` line: a file, a path under a file, an
    unwritable place, the folder of one of ``inputs`` (the input model is never modified), and a
    non-empty folder of another kind unless ``overwrite``. ``overwrite`` deletes the files
    eviltwins writes (:data:`OUTPUT_FILES`) and nothing else: a folder that also holds other
    files is refused either way.
    """
    out = Path(out)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        folder = src if src.is_dir() else src.parent
        if _same(out, folder) or _same(out, src):
            raise ParamError(
                f"{flag} {out} is the input model's folder; eviltwins never writes over its "
                f"input: choose another {flag}"
            )
    if out.exists() and not out.is_dir():
        raise ParamError(f"{flag} {out} is a file; give a folder (it is created if missing)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ParamError(f"{flag} {out} lies under the file {parent}; give a folder")
            break
    # Probe the folder itself, or the nearest existing ancestor it would be created in; the
    # folder is created only when results are written.
    probe_dir = out if out.is_dir() else next((p for p in out.parents if p.is_dir()), Path("."))
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".eviltwins-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ParamError(
            f"{flag} {out} cannot be written ({err.strerror or err}); choose a folder you can "
            "write to"
        ) from None
    present = folder_kind(out)
    if present is not None and present != kind:
        names = sorted(p.name for p in out.iterdir())
        if present == "sweep":
            raise ParamError(f"{flag} {out} holds a sweep run (sweep.json); choose another {flag}")
        if kind not in OUTPUT_FILES:  # a sweep run folder: new, empty, or a sweep's own
            raise ParamError(
                f"{flag} {out} is a non-empty folder that is not a {kind} run folder (it holds "
                f"{', '.join(names[:3])}); give a new or empty folder"
            )
        ours = frozenset().union(*OUTPUT_FILES.values())
        foreign = [n for n in names if n not in ours]
        if foreign:
            raise ParamError(
                f"{flag} {out} already holds files eviltwins did not write ({foreign[0]!r}"
                f"{', ...' if len(foreign) > 1 else ''}); choose a new or empty folder"
            )
        if not overwrite:
            raise ParamError(
                f"{flag} {out} holds a {present} folder ({', '.join(names[:3])}); writing a "
                f"{kind} there would mix the two: choose another {flag}, or pass --overwrite "
                "(API: overwrite=True) to delete its eviltwins files first"
            )
        for n in names:
            if not ((out / n).is_file() or (out / n).is_symlink()):
                raise ParamError(f"{flag} {out}: {n} is not a file eviltwins wrote; clear it")
        for n in names:
            (out / n).unlink()
    return out


def publish_mode(path: str | os.PathLike[str]) -> None:
    """Give a file written through a private temporary file (mode 0600) the mode a plain
    ``open(path, "w")`` would have: 0666 minus the process umask."""
    os.chmod(path, 0o666 & ~_UMASK)


def _umask() -> int:
    mask = os.umask(0o022)  # read it once, at import (os.umask can only read by setting)
    os.umask(mask)
    return mask


_UMASK = _umask()


__all__ = ["OUTPUT_FILES", "folder_kind", "prepare_out", "publish_mode", "readable_file"]
