"""Experiments: the paper's sweeps as validated YAML specs, run cell by cell (resumable) on a
local or Ray executor; see :func:`run_sweep`."""

from eviltwins.experiments.clean import TrainResult, train_clean
from eviltwins.experiments.executors import EXECUTORS, LocalExecutor, RayExecutor, make_executor
from eviltwins.experiments.folder import SweepLockedError, check_run_folder, spec_reads
from eviltwins.experiments.grid import Cell, cells
from eviltwins.experiments.options import RunOptions
from eviltwins.experiments.runner import CellsFailedError, SweepSummary, run_sweep
from eviltwins.experiments.spec import Entry, SweepSpec, load_spec
from eviltwins.experiments.store import (
    AttackRecord,
    CellConfig,
    CellFileError,
    CellResult,
    DetectorRecord,
    is_finished,
    load_cells,
    read_cell,
    scan_cells,
    write_cell,
)

__all__ = [
    "EXECUTORS",
    "AttackRecord",
    "Cell",
    "CellConfig",
    "CellFileError",
    "CellResult",
    "DetectorRecord",
    "Entry",
    "CellsFailedError",
    "LocalExecutor",
    "RayExecutor",
    "RunOptions",
    "SweepLockedError",
    "SweepSpec",
    "SweepSummary",
    "TrainResult",
    "cells",
    "check_run_folder",
    "spec_reads",
    "is_finished",
    "load_cells",
    "load_spec",
    "make_executor",
    "read_cell",
    "run_sweep",
    "scan_cells",
    "train_clean",
    "write_cell",
]
