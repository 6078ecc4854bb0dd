"""``sweep``, ``report`` and ``demo``: the paper's experiments and their reports."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from eviltwins import api
from eviltwins.base import SEED_RANGE
from eviltwins.cli.common import (
    PathType,
    common_options,
    device_option,
    emit,
    jobs_option,
    json_option,
    must,
    quiet_option,
)
from eviltwins.data import is_path_dataset
from eviltwins.experiments import RunOptions, cells, check_run_folder, load_spec, spec_reads
from eviltwins.experiments.options import WORKERS
from eviltwins.experiments.spec import user_models


def _run_options(values: dict[str, Any]) -> RunOptions:
    """The :class:`~eviltwins.experiments.RunOptions` among a command's option values (the
    options named like its fields; ``--quiet`` not given means "off when not a terminal")."""
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    given = {k: v for k, v in values.items() if k in fields}
    if "quiet" in given:
        given["quiet"] = given["quiet"] or None
    return RunOptions.of(**given)


def _check_text(spec: Any, as_json: bool) -> None:
    """``sweep --check``: the cells of ``spec`` and its user models, nothing run."""
    keys = [c.key(spec) for c in cells(spec)]
    user = user_models(spec)
    text = f"{spec.name}: {len(keys)} cells, valid"
    for m in user:
        text += (
            f"\nnote: model {m!r} is user code: module {m.split(':')[0]!r} is imported when "
            "the sweep runs (not checked now)"
        )
    emit({"name": spec.name, "cells": keys, "user_models": user}, as_json, text)


@click.command()
@click.argument("config", type=PathType)
@click.option("--out", type=PathType, default=None, help="Run folder. [default: runs/<sweep name>]")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine (--jobs processes); ray: a Ray cluster (pip install "
    "'eviltwins[ray]').",
)
@jobs_option("local: worker processes.")
@click.option(
    "--ray-address",
    default=None,
    help="ray: address of an existing cluster [default: start a local one].",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Torch threads per cell [default: all cores / jobs; 1 on Ray]. Keep it fixed to "
    f"reproduce numbers exactly. {must(WORKERS)}",
)
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report.")
@click.option("--check", is_flag=True, help="Only validate CONFIG and list its cells.")
@common_options
def sweep(
    config: Path,
    out: Path | None,
    report: bool,
    check: bool,
    download: bool,
    as_json: bool,
    **values: Any,
) -> None:
    """Run (or resume) the sweep in CONFIG, a YAML file, and write its report.

    Writes every cell's JSON result to OUT/cells, then the report to OUT/report (OUT: --out).
    Finished cells are skipped; failed cells are retried; Ctrl-C keeps every finished cell.
    Exits with 2 when any cell failed."""
    run = _run_options(values)  # checked before the spec is read
    spec = load_spec(config)
    reads = spec_reads(spec, config, run.data_root)
    check_run_folder(out if out is not None else Path("runs") / spec.name, reads)
    if download:
        for ds in spec.datasets:
            if not is_path_dataset(ds):  # a path has nothing to fetch
                api.get_dataset(ds, run.data_root, download=True)
    if check:
        _check_text(spec, as_json)
        return
    summary = api.sweep(spec, out, run, report=report)
    text = summary.summary()
    if report and (summary.ran or summary.skipped):
        text += f"\nreport: {Path(summary.out) / 'report' / 'report.md'}"
    emit(summary.to_dict(), as_json, text)
    summary.raise_for_failures()  # exit 2 with one line: never a success for a broken run


@click.command("report")
@click.argument("run_dir", type=PathType)
@click.option("--out", type=PathType, default=None, help="Folder [default: RUN_DIR/report].")
@json_option()
def report_(run_dir: Path, out: Path | None, as_json: bool) -> None:
    """Write the report of the sweep folder RUN_DIR.

    The report holds cells.csv, the paper's figures (PNG) and report.md / report.html with
    each claim of the paper next to the measured value."""
    rep = api.write_sweep_report(run_dir, out)
    for line in rep.unreadable_lines():
        click.echo(f"eviltwins: warning: {line}", err=True)
    emit(rep.to_dict(), as_json, rep.summary())


@click.command()
@click.option(
    "--out", type=PathType, default=Path("runs/demo"), show_default=True, help="Output folder."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help=f"Random seed. {must(SEED_RANGE)}"
)
@jobs_option("Worker processes.")
@device_option
@quiet_option
@json_option("the report summary")
def demo(out: Path, seed: int, as_json: bool, **values: Any) -> None:
    """Run the paper's main experiment, in small, on the embedded digits dataset.

    Nothing is downloaded and a CPU is enough: train a clean small CNN; run TrojanNN and
    TrojanNN* at the same re-training budget at two trigger sizes; run NeuralCleanse and STRIP
    on every model; write the report (OUT/report/report.md, .html, figures; OUT: --out).
    Re-running resumes. Exits with 2 when any cell failed (the report of the finished cells is
    still written)."""
    from eviltwins.experiments.demo import demo_spec  # read when run (tests replace it)

    run = _run_options(values)
    summary = api.sweep(demo_spec(seeds=[seed]), out, run, report=False)
    if not (summary.ran or summary.skipped):  # every cell failed: nothing to report
        emit({"sweep": summary.to_dict(), "report": None}, as_json, summary.summary())
        summary.raise_for_failures()
    rep = api.write_sweep_report(summary.out)
    emit(
        {"sweep": summary.to_dict(), "report": rep.to_dict()},
        as_json,
        f"{summary.summary()}\n{rep.summary()}\nopen {rep.out / 'report.html'}",
    )
    summary.raise_for_failures()
