"""The report of a sweep's run folder: reads what the report layer needs from the folder (the
cells through the store, ``sweep.json``'s name, description and wanted figures, the clean
models' class names) and hands it to :func:`eviltwins.report.build_report`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eviltwins.errors import DataError
from eviltwins.experiments.store import scan_cells
from eviltwins.io import read_json
from eviltwins.paths import prepare_out
from eviltwins.report import Report, build_report


def write_sweep_report(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Report:
    """Write the CSV, figures and Markdown/HTML report of a sweep folder into
    ``run_dir/report`` (or ``out``); see :mod:`eviltwins.report.build`. A folder without
    finished cells raises :class:`~eviltwins.errors.DataError`. ``out`` is checked first
    (:func:`~eviltwins.paths.prepare_out`): it may be ``run_dir/report`` or a folder outside
    the run folder, never the run folder itself, its ``cells/`` or ``clean/`` models, a folder
    holding the run folder, or a folder holding another kind of output."""
    run_dir = Path(run_dir)
    cells, unreadable = scan_cells(run_dir)
    if not any(c.ok for c in cells):
        failed = sum(not c.ok for c in cells)
        bad = f", {len(unreadable)} unreadable" if unreadable else ""
        raise DataError(
            f"{run_dir} has no finished cells yet ({failed} failed{bad}); run "
            "'eviltwins sweep' first"
        )
    where = prepare_out(
        out if out is not None else run_dir / "report",
        "sweep-report",
        inputs=_reads(run_dir),
    )
    spec = _sweep_json(run_dir)
    name = spec.get("name")
    description = spec.get("description")
    return build_report(
        cells,
        where,
        name=name if isinstance(name, str) else run_dir.name,
        description=description if isinstance(description, str) else "",
        unreadable=unreadable,
        figures=_wanted_figures(spec),
        run_dir=run_dir,
        classes=_classes(run_dir),
    )


def _reads(run_dir: Path) -> dict[str, Path]:
    """What the report reads from a run folder: its cells, clean models' cards and spec."""
    return {
        "the sweep spec": run_dir / "sweep.json",
        "the sweep's cells": run_dir / "cells",
        "the sweep's clean models": run_dir / "clean",
    }


def _sweep_json(run_dir: Path) -> dict[str, Any]:
    """The run's ``sweep.json`` (``{}`` when missing or unusable: the report does without)."""
    try:
        d = read_json(run_dir / "sweep.json", "sweep spec")
    except DataError:
        return {}
    return d if isinstance(d, dict) else {}


def _wanted_figures(spec: dict[str, Any]) -> set[str] | None:
    figs = spec.get("figures")
    if not isinstance(figs, list):
        return None
    return {f for f in figs if isinstance(f, str)} or None


def _classes(run_dir: Path) -> dict[str, Sequence[str]]:
    """Dataset -> class names, from the clean models' cards (for Fig. 11's titles)."""
    out: dict[str, Sequence[str]] = {}
    for card in (run_dir / "clean").glob("*/model.json"):
        try:
            d = read_json(card, "model card")
        except DataError:
            continue
        if not isinstance(d, dict) or not isinstance(d.get("dataset"), str):
            continue
        classes = d.get("classes")
        if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
            out.setdefault(d["dataset"], classes)
    return out


__all__ = ["write_sweep_report"]
