"""``calibrate``: fit a scan's p(trojan) on the models of finished sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from eviltwins import api
from eviltwins.base import SEED_RANGE
from eviltwins.cli.common import PathType, emit, json_option, must
from eviltwins.cli.estimators import inspectors_option
from eviltwins.cli.types import Bounded
from eviltwins.detectors.calibration import FOLDS


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=PathType, metavar="RUN_DIR...")
@click.option(
    "--out",
    type=PathType,
    required=True,
    help="The calibration file to write (JSON), for 'eviltwins scan --calibration FILE'.",
)
@inspectors_option("whose statistics are combined", "; each sweep must have run them")
@click.option(
    "--folds",
    type=Bounded(FOLDS),
    default=5,
    show_default=True,
    help="Folds of the out-of-fold measurement (lowered to the number of models of the "
    f"smaller kind when that is smaller). {must(FOLDS)}",
)
@click.option(
    "--seed",
    type=Bounded(SEED_RANGE),
    default=0,
    show_default=True,
    help=f"Seed of the folds. {must(SEED_RANGE)}",
)
@click.option(
    "--source",
    default=None,
    help="Text naming the population in the calibration [default: the sweeps' names, "
    "datasets, architectures and attacks].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the calibration file at --out (never a file of another kind).",
)
@json_option("the calibration")
def calibrate(run_dirs: tuple[Path, ...], as_json: bool, **opts: Any) -> None:
    """Fit the p(trojan) of 'eviltwins scan' on the models of finished sweeps.

    The fit reads the models of the finished sweeps RUN_DIR...: a logistic model on each
    inspector's largest statistic over the labels (NeuralCleanse's largest anomaly index, ABS's
    largest REASR), clean cells (attack none) against backdoored ones, with its out-of-fold AUC
    and cross-entropy. Failed cells are skipped and counted. Every model must take the same
    input and each inspector must have run with the same settings; a scan uses the calibration
    only with those."""
    res = api.calibrate(
        list(run_dirs),
        opts["out"],
        detectors=opts["detectors"],
        folds=opts["folds"],
        seed=opts["seed"],
        source=opts["source"],
        overwrite=opts["overwrite"],
    )
    emit(res.to_dict(), as_json, res.summary())
