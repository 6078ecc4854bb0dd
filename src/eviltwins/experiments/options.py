"""How a sweep runs (not what it computes: that is the spec): one frozen :class:`RunOptions`
taken by :func:`~eviltwins.experiments.run_sweep`, :func:`eviltwins.sweep` and the CLI."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from eviltwins.base import MAX_WORKERS, Interval
from eviltwins.errors import ParamError

#: Worker processes (``jobs``) and torch threads per task (``threads``).
WORKERS = Interval(int, 1, MAX_WORKERS)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run a sweep, checked when built (one :class:`~eviltwins.errors.ParamError`
    line, before any work).

    ``executor`` is ``local`` (``jobs`` processes; 1 = in this process) or ``ray``
    (``ray_address`` of an existing cluster, else a local one). ``threads`` pins torch threads
    per task (default: all cores for a sequential run, cores/jobs for processes, 1 on Ray).
    ``device`` is resolved in each task (``auto``: CUDA when the worker has it). ``data_root``
    is where datasets are read; ``quiet`` turns the progress bars off (``None``: off when
    not a terminal).
    """

    executor: str = "local"
    jobs: int = 1
    ray_address: str | None = None
    threads: int | None = None
    device: str = "auto"
    data_root: str | os.PathLike[str] | None = None
    quiet: bool | None = None

    def __post_init__(self) -> None:
        if not WORKERS.ok(self.jobs):
            raise ParamError(
                f"--jobs must be >= 1 and <= {MAX_WORKERS} (worker processes); got {self.jobs!r}"
            )
        if self.threads is not None and not WORKERS.ok(self.threads):
            raise ParamError(
                f"--threads must be >= 1 and <= {MAX_WORKERS} (torch threads per cell); got "
                f"{self.threads!r}"
            )
        if not (self.quiet is None or isinstance(self.quiet, bool)):
            raise ParamError(f"quiet must be true, false or None; got {self.quiet!r}")

    @classmethod
    def of(cls, options: RunOptions | None = None, **changes: Any) -> RunOptions:
        """``options`` (default: the defaults) with ``changes`` (field names; an unknown one
        is one ParamError line)."""
        names = [f.name for f in dataclasses.fields(cls)]
        for name in changes:
            if name not in names:
                raise ParamError(f"unknown sweep run option {name!r}; known: {', '.join(names)}")
        return dataclasses.replace(options or cls(), **changes)
