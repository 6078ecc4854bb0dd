"""Paths from users and strangers: files to read and folders to write, checked before any work.

One home for the two questions every command asks about a path it was given:

- :func:`readable_file`: is this a file we can read? The one-line error says *why* not (missing,
  a folder, a broken or looping symlink, permission denied), not just "does not exist".
- :func:`prepare_out`: may results go into this folder? Checked before a model is trained or an
  attack runs, so a bad ``--out`` costs nothing. The path is resolved first (``..`` through
  folders not yet created, symlinks: :func:`resolve_path`) and written at that place; it must
  not meet anything the command reads (:func:`check_apart`: be, contain or lie inside the input
  model's folder, a dataset, ...), be a file, lie under a file, or be unwritable; and a
  non-empty folder written for another purpose (a model folder for an attack, an attack folder
  for training) is refused unless ``overwrite``, which deletes only the files eviltwins itself
  writes there.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Mapping
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
    # a sweep's report (``eviltwins report``), and its figures
    "sweep-report": frozenset({"report.json", "report.md", "report.html", "cells.csv"}),
}
#: Files that tell what a folder is, most specific first.
_MARKERS = (
    ("sweep", "sweep.json"),
    ("sweep", "cells"),
    ("attack", "trigger.safetensors"),
    ("attack", "metrics.json"),
    ("model", "model.json"),
    ("scan", "scan.json"),
    ("sweep-report", "report.md"),
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
        return unreadable(err)
    return None


def unreadable(err: OSError) -> str:
    """What an :class:`OSError` from opening or reading a received file says about it:
    "cannot be read (permission denied)", "does not exist", "cannot be read (<reason>)"."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read (permission denied)"
    if err.errno == errno.ENOENT:
        return "does not exist"
    reason = err.strerror or " ".join(str(err).split()) or type(err).__name__
    return f"cannot be read ({reason.lower()})"


def readable_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a :class:`Path` when it is a readable regular file; else a one-line
    :class:`~eviltwins.errors.DataError` saying what it is instead."""
    path = Path(path)
    reason = why_unreadable(path)
    if reason is not None:
        raise DataError(f"{what} {path} {reason}")
    return path


def folder_kind(folder: Path) -> str | None:
    """What eviltwins wrote into ``folder``: sweep (``sweep.json`` or ``cells/``), attack,
    model, scan, sweep-report or (a detector's) report; ``None`` for a missing or empty folder
    and ``"other"`` for one holding only files eviltwins did not write."""
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


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Where ``path`` leads: absolute, with ``..`` and symlinks resolved, also through folders
    that do not exist yet (``o_x/../base`` is ``base`` once ``o_x`` is created, which is what
    ``mkdir -p`` does). Every output folder is checked, and written, at this path."""
    return Path(os.path.realpath(os.fspath(path)))


def shown_path(path: Path) -> Path:
    """A resolved ``path`` as a user reads it: relative to the working folder when it lies
    inside it (``runs/clean``), else absolute."""
    try:
        rel = path.relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return path
    return rel if rel.parts else path


def make_folder(path: str | os.PathLike[str]) -> Path:
    """Create the folder ``path`` (and its parents) at its resolved place (see
    :func:`resolve_path`), so that ``o_x/../out`` leaves no empty ``o_x`` behind; returns the
    resolved folder as :func:`shown_path` shows it."""
    folder = resolve_path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return shown_path(folder)


#: An input of a command: what it is (``"the input model"``) and its path (``None``: none).
Inputs = Mapping[str, "str | os.PathLike[str] | None"]


def _overlap(out: Path, src: Path) -> str | None:
    """How the resolved output folder ``out`` meets the resolved input ``src`` (``None``: it
    does not): a folder input may not be the output, hold it or lie in it; a file input may
    not be the output, nor may the folder holding it be the output or lie in it (a folder
    beside the file, ``data/runs`` for ``data/d.npz``, is fine: nothing there reaches it)."""
    folder = src if src.is_dir() else src.parent
    if out == src and not src.is_dir():
        return "is {noun}"
    if out == folder:
        return "is the folder of {noun}"
    if src.is_dir() and src in out.parents:
        return "lies inside the folder of {noun}"
    if out in src.parents:
        return "contains the folder of {noun}" if src.is_dir() else "contains {noun}"
    return None


def check_apart(out: str | os.PathLike[str], inputs: Inputs, flag: str = "--out") -> Path:
    """Refuse (one :class:`~eviltwins.errors.ParamError` line) an output folder ``out`` that
    would write where the command reads: one that is, lies inside or contains an input folder
    (a model folder, an image-folder dataset, a sweep's cells), or that is, or contains, the
    folder of an input file (a weights file, a ``.npz`` dataset, a trigger image, a config).
    ``inputs`` maps what each input is (``"the input model"``) to its path. Both sides are
    resolved first (:func:`resolve_path`: ``..`` through folders not yet created, symlinks),
    so no spelling of a path reaches an input. Returns the resolved ``out``."""
    target = resolve_path(out)
    for noun, src in inputs.items():
        if src is None:
            continue
        where = resolve_path(src)
        how = _overlap(target, where)
        if how is None:
            continue
        given = os.fspath(out)
        shown = shown_path(target)
        that = "" if Path(given) == shown else f" (that is {shown})"
        at = "" if how.startswith("is the folder") and where.is_dir() else f" ({shown_path(where)})"
        raise ParamError(
            f"{flag} {given}{that} {how.format(noun=noun)}{at}; eviltwins never writes into "
            f"what a command reads: choose another {flag}"
        )
    return target


def prepare_out(
    out: str | os.PathLike[str],
    kind: str,
    *,
    inputs: Inputs | None = None,
    overwrite: bool = False,
    flag: str = "--out",
) -> Path:
    """Check the output folder ``out`` for results of ``kind`` (a key of
    :data:`OUTPUT_FILES`, or ``"sweep"``) before any work is done; returns the path to write
    to: ``out`` resolved (:func:`resolve_path`), shown relative to the working folder when it
    lies inside it. The folder itself is created later, by the writer.

    ``out`` is resolved first (``..`` through folders not yet created, symlinks), and every
    check uses that path, as every write must. Refused with one
    :class:`~eviltwins.errors.ParamError` line: a path that meets one of ``inputs`` (see
    :func:`check_apart`: the input model is never modified), a symlink loop, a file, a path
    under a file, an unwritable place, and a non-empty folder of another kind unless
    ``overwrite``. ``overwrite`` deletes the files eviltwins writes (:data:`OUTPUT_FILES`) and
    nothing else: a folder that also holds other files is refused either way.
    """
    label = f"{flag} {os.fspath(out)}"
    out = check_apart(out, inputs or {}, flag)
    loop = next((p for p in (out, *out.parents) if p.is_symlink()), None)
    if loop is not None:  # realpath leaves only a symlink it cannot resolve: a loop
        raise ParamError(f"{label} lies under the symlink loop {loop}; give a folder")
    if out.exists() and not out.is_dir():
        raise ParamError(f"{label} is a file; give a folder (it is created if missing)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ParamError(f"{label} lies under the file {parent}; give a folder")
            break
    # Probe the folder itself, or the nearest existing ancestor it would be created in; the
    # folder is created only when results are written.
    probe_dir = out if out.is_dir() else next((p for p in out.parents if p.is_dir()), Path("/"))
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".eviltwins-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ParamError(
            f"{label} cannot be written ({err.strerror or err}); choose a folder you can write to"
        ) from None
    _check_kind(out, kind, overwrite, label, flag)
    return shown_path(out)


def _check_kind(out: Path, kind: str, overwrite: bool, label: str, flag: str) -> None:
    """Refuse a non-empty ``out`` of another kind than ``kind`` (see :func:`prepare_out`);
    with ``overwrite``, delete its eviltwins files first."""
    present = folder_kind(out)
    if present is None or present == kind:
        return
    names = sorted(p.name for p in out.iterdir())
    if present == "sweep":
        raise ParamError(f"{label} holds a sweep run (sweep.json); choose another {flag}")
    if kind not in OUTPUT_FILES:  # a sweep run folder: new, empty, or a sweep's own
        raise ParamError(
            f"{label} is a non-empty folder that is not a {kind} run folder (it holds "
            f"{', '.join(names[:3])}); give a new or empty folder"
        )
    ours = frozenset().union(*OUTPUT_FILES.values())
    foreign = [n for n in names if n not in ours]
    if foreign:
        raise ParamError(
            f"{label} already holds files eviltwins did not write ({foreign[0]!r}"
            f"{', ...' if len(foreign) > 1 else ''}); choose a new or empty folder"
        )
    if not overwrite:
        raise ParamError(
            f"{label} holds a {present} folder ({', '.join(names[:3])}); writing a "
            f"{kind} there would mix the two: choose another {flag}, or pass --overwrite "
            "(API: overwrite=True) to delete its eviltwins files first"
        )
    for n in names:
        if not ((out / n).is_file() or (out / n).is_symlink()):
            raise ParamError(f"{label}: {n} is not a file eviltwins wrote; clear it")
    for n in names:
        (out / n).unlink()


def publish_mode(path: str | os.PathLike[str]) -> None:
    """Give a file written through a private temporary file (mode 0600) the mode a plain
    ``open(path, "w")`` would have: 0666 minus the process umask."""
    os.chmod(path, 0o666 & ~_UMASK)


def _umask() -> int:
    mask = os.umask(0o022)  # read it once, at import (os.umask can only read by setting)
    os.umask(mask)
    return mask


_UMASK = _umask()


__all__ = [
    "OUTPUT_FILES",
    "check_apart",
    "folder_kind",
    "make_folder",
    "prepare_out",
    "publish_mode",
    "readable_file",
    "resolve_path",
    "shown_path",
    "unreadable",
]
