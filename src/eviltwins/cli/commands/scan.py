"""``scan``: the model inspectors on one model, one verdict (and ``--fail-on-detect`` for CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from eviltwins import api
from eviltwins.cli.common import (
    PathType,
    check_config,
    common_options,
    config_option,
    data_options,
    dataset_of_model_option,
    emit,
    loading,
    model_folder_option,
    model_source,
    overwrite_option,
    resolve,
    test_limit_option,
)
from eviltwins.cli.estimators import inspectors_option
from eviltwins.detectors.scan import inspector_names, inspectors
from eviltwins.errors import ParamError

#: The exit code of ``scan --fail-on-detect`` when an inspector flags a label.
EXIT_DETECTED = 3


@click.command()
@model_folder_option("Model folder to scan.")
@dataset_of_model_option
@data_options
@test_limit_option
@inspectors_option("to run")
@click.option(
    "--calibration",
    default="auto",
    show_default=True,
    metavar="auto|none|FILE",
    help="What gives the model's p(trojan): auto (the calibration shipped for the model's "
    "input shape with these detectors and settings, if any), none, or a file written by "
    "'eviltwins calibrate'. With one, the verdict is p(trojan) >= 0.5; without, any "
    "inspector's flag.",
)
@click.option(
    "--out",
    type=PathType,
    default=Path("runs/scan"),
    show_default=True,
    help="Folder for scan.json, scan.html and each inspector's report and reversed triggers.",
)
@click.option(
    "--fail-on-detect",
    is_flag=True,
    help=f"Exit with code {EXIT_DETECTED} when the verdict is backdoor suspected (to gate models "
    "in CI).",
)
@config_option("any of these options, and per detector its parameters ('abs: {steps: 100}')")
@overwrite_option
@common_options
def scan(config: Path | None, **values: Any) -> int:
    """Scan a model for a backdoor with the model inspectors and print one verdict.

    The inspectors are NeuralCleanse and ABS by default (--detectors); the verdict states the
    rule it follows. With a calibration for the model's inputs and these settings
    (--calibration) the verdict gives p(trojan), the calibrated probability that the model is
    backdoored, and follows it: 'backdoor suspected (p(trojan) 0.97, calibrated): label L
    (NeuralCleanse index X, ABS REASR Y)'. Without one, any inspector's flag decides: 'clean
    (no inspector flags; uncalibrated)'.

    Writes scan.json, scan.html (per-label charts, reversed triggers) and a folder per
    inspector to --out. Exit code 0 when the scan ran (3 with --fail-on-detect when the verdict
    is backdoor suspected). Detector parameters go in a --config YAML, one mapping per detector
    (neural-cleanse: {steps: 200}); their defaults are the paper's budgets (NeuralCleanse
    preset imc: 500 steps per label), spent with label scheduling (schedule: k-arm: a short
    screen of every label, the rest for the few whose triggers shrink fastest) and in bfloat16
    where the hardware multiplies it natively (precision: auto). Where a shipped calibration
    fitted with the full budget in float32 applies, the scan runs that way; set schedule: full
    and precision: fp32 to choose it yourself."""
    opts, params = resolve(config, {})
    known = inspector_names()
    for key in params:  # a config's keys read with "_" for "-"
        if key.replace("_", "-") not in known:
            raise ParamError(
                f"config {config}: {key!r} is neither an option of scan nor a model inspector "
                f"({', '.join(known)}) whose parameters it would hold"
            )
    check_config(config, {}, params, lambda p: inspectors(opts["detectors"], p))
    report = api.scan(
        model_source(opts),
        opts["dataset"],
        detectors=opts["detectors"],
        params=params,
        calibration=opts["calibration"],
        **loading(opts),
    )
    emit(report.to_dict(), opts["as_json"], report.verdict)
    return EXIT_DETECTED if opts["fail_on_detect"] and report.is_backdoored else 0
