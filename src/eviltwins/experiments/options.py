"""How a sweep runs (not what it computes: that is the spec): one frozen :class:`RunOptions`
taken by :func:`~eviltwins.experiments.run_sweep`, :func:`eviltwins.sweep` and the CLI."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from eviltwins.errors import ParamError
from eviltwins.utils import is_int


def _count(value: Any) -> bool:
    return is_int(value) and value >= 1


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
        if not _count(self.jobs):
            raise ParamError(f"--jobs must be >= 1 (worker processes); got {self.jobs!r}")
        if self.threads is not None and not _count(self.threads):
            raise ParamError(
                f"--threads must be >= 1 (torch threads per cell); got {self.threads!r}"
            )

    @classmethod
    def of(cls, options: RunOptions | None = None, **changes: Any) -> RunOptions:
        """``options`` (default: the defaults) with ``changes`` (field names; an unknown one
        is one ParamError line)."""
        names = [f.name for f in dataclasses.fields(cls)]
        for name in changes:
            if name not in names:
                raise ParamError(f"unknown sweep run option {name!r}; known: {', '.join(names)}")
        return dataclasses.replace(options or cls(), **changes)
