"""The sweep report from a sweep's cells: :func:`build_report` writes into ``out``

- ``cells.csv``: one row per finished cell (attack metrics, and per detector its verdict
  numbers; see :mod:`eviltwins.report.table`);
- the registered figures the grid supports (:mod:`eviltwins.report.figures`);
- ``report.md`` and ``report.html``: each of the paper's claims
  (:mod:`eviltwins.report.claims`) next to the measured value and whether it holds here, the
  figures, and a per-setting table;
- ``report.json``: :meth:`Report.to_dict`;
- ``population.csv``: with clean and backdoored models, the scanner over them
  (:mod:`eviltwins.report.population`).

A cell file that could not be used (cut short, not JSON, the wrong shape) is named in
:attr:`Report.unreadable`, the summary and ``report.md``; the sweep recomputes it. Reading a run
folder (its cells, ``sweep.json``, the clean models' class names) is the caller's job
(``eviltwins.experiments.reporting.write_sweep_report``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eviltwins.io import write_json
from eviltwins.paths import make_folder
from eviltwins.report.cells import CellLike, detector_labels, shown_detectors
from eviltwins.report.claims import Claim, claims
from eviltwins.report.documents import unreadable_line, write_documents
from eviltwins.report.figures import FigureInput, render_figures
from eviltwins.report.population import POPULATION_HEAD, inspector_labels, population_table
from eviltwins.report.table import Row, flatten, summary_table, write_csv
from eviltwins.results import Result, internal


@dataclass(frozen=True)
class Report(Result):
    """What :func:`build_report` wrote: paths, rows, claims."""

    SCHEMA = "eviltwins.report/1"

    out: Path
    rows: list[Row] = internal()
    claims: list[Claim] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    failed: list[CellLike] = internal(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # "cells/<name>" -> why
    population: list[list[str]] = field(default_factory=list)  # POPULATION_HEAD rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "out": str(self.out),
            "cells": len(self.rows),
            "failed": len(self.failed),
            "unreadable": self.unreadable,
            "claims": [c.to_dict() for c in self.claims],
            "figures": [str(p) for p in self.figures],
            "population": [dict(zip(POPULATION_HEAD, r, strict=True)) for r in self.population],
        }

    def summary(self) -> str:
        lines = [
            f"report {self.out}: {len(self.rows)} cells ({len(self.failed)} failed), "
            f"{len(self.figures)} figures, report.md / report.html"
        ]
        if self.unreadable:
            lines.append(f"  {unreadable_line(self.unreadable)}")
        for c in self.claims:
            if c.holds is not None:
                lines.append(f"  [{c.verdict}] {c.claim}: {c.measured}")
        short = [c for c in self.claims if c.needs]
        if short:
            lines.append(
                f"  {len(short)} of {len(self.claims)} claims not measured: each "
                f"{short[0].needs}; report.md shows their means (run more seeds for a verdict)"
            )
        return "\n".join(lines)

    def unreadable_lines(self) -> list[str]:
        """One warning line per unusable cell file (at most 10, then a count)."""
        items = list(self.unreadable.items())
        out = [
            " ".join(
                f"cell file {name} unreadable ({why}); re-run the sweep to recompute it".split()
            )
            for name, why in items[:10]
        ]
        if len(items) > 10:
            out.append(f"... and {len(items) - 10} more unreadable cell files")
        return out


def build_report(
    cells: Sequence[CellLike],
    out: Path,
    *,
    name: str,
    description: str = "",
    unreadable: Mapping[str, str] | None = None,
    figures: set[str] | None = None,
    run_dir: Path | None = None,
    classes: Mapping[str, Sequence[str]] | None = None,
) -> Report:
    """Write the CSV, figures and Markdown/HTML report of a sweep's ``cells`` into ``out``
    (see the module docstring). ``name`` and ``description`` head the documents; ``figures``
    names the figures wanted (None: every one the rows support); ``run_dir`` is where the cells'
    example files are (``cells/<key>/examples.safetensors``, for Fig. 11) and ``classes`` each
    dataset's class names."""
    ok = [c for c in cells if c.ok]
    failed = [c for c in cells if not c.ok]
    out = make_folder(out)
    rows = [flatten(c) for c in ok]
    write_csv(rows, out / "cells.csv")
    det = detector_labels(ok)
    shown = shown_detectors(det)
    data = FigureInput(rows, shown, run_dir, dict(classes or {}))
    made = render_figures(data, out, figures)
    combined = [s.label for s in shown if not s.is_filter]  # the first entry of each
    population = population_table(rows, inspector_labels(rows), combined)
    if population:
        write_csv(
            [dict(zip(POPULATION_HEAD, r, strict=True)) for r in population], out / "population.csv"
        )
    rep = Report(out, rows, claims(rows, det), made, failed, dict(unreadable or {}), population)
    write_documents(
        out,
        name=name,
        description=description,
        n_cells=len(rows),
        claim_rows=[[c.claim, c.paper, c.measured, c.verdict] for c in rep.claims],
        figures=made,
        table=summary_table(rows, shown),
        population=population,
        failed=[(c.key, c.error if c.error is not None else "") for c in failed],
        unreadable=rep.unreadable,
    )
    write_json(out / "report.json", rep.to_dict())
    return rep
