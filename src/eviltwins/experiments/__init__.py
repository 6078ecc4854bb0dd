"""Experiments: the paper's sweeps as validated YAML specs, run cell by cell (resumable) on a
local or Ray executor; see :func:`run_sweep`."""

from eviltwins.experiments.executors import EXECUTORS, LocalExecutor, RayExecutor, make_executor
from eviltwins.experiments.runner import SweepSummary, is_finished, load_cells, run_sweep
from eviltwins.experiments.spec import Cell, SweepSpec, cells, load_spec

__all__ = [
    "EXECUTORS",
    "Cell",
    "LocalExecutor",
    "RayExecutor",
    "SweepSpec",
    "SweepSummary",
    "cells",
    "is_finished",
    "load_cells",
    "load_spec",
    "make_executor",
    "run_sweep",
]
