"""``attack ATTACK`` and ``detect DETECTOR``: one subcommand per registered estimator, whose
options are generated from its signature (:mod:`eviltwins.cli.estimators`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from eviltwins import api
from eviltwins.attacks import ATTACKS
from eviltwins.base import N_CLEAN
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
    must,
    options,
    overwrite_option,
    resolve,
    test_limit_option,
    train_limit_option,
    trigger_params,
)
from eviltwins.cli.estimators import EstimatorCommand, EstimatorGroup, estimator_command
from eviltwins.detectors import DETECTORS, InputFilter

#: The options after ``--model`` that ``attack`` and ``detect`` share.
_shared = options(
    data_options,
    config_option("any option below and any parameter of the estimator"),
    overwrite_option,
    common_options,
)


def _invoke(
    values: dict[str, Any], verb: Callable[..., Any], passed: tuple[str, ...]
) -> tuple[dict[str, Any], Any]:
    """Call ``verb`` (``api.attack`` / ``api.detect``) for the running command's estimator:
    its parameters from the flags and ``--config``, the command's ``passed`` options (those
    it has) and the loading options. Returns the resolved options and the result."""
    cmd = click.get_current_context().command
    assert isinstance(cmd, EstimatorCommand)
    flags, rest = cmd.split(values)
    opts, params = resolve(rest["config"], flags)
    registry = ATTACKS if verb is api.attack else DETECTORS
    check_config(rest["config"], flags, params, lambda p: registry.build(cmd.key, p))
    more = {k: opts[k] for k in passed if k in opts}
    res = verb(cmd.key, model_source(opts), opts["dataset"], params=params, **more, **loading(opts))
    return opts, res


# --- attack --------------------------------------------------------------------------------------
@click.command(context_settings={"show_default": False})
@model_folder_option("Benign model folder written by 'eviltwins train'.")
@dataset_of_model_option
@train_limit_option
@test_limit_option
@click.option("--out", type=PathType, required=True, help="Output folder.")
@_shared
def _attack(**values: Any) -> None:
    """Plant this backdoor in a copy of the model (--model); write the poisoned model,
    trigger.safetensors/.png, metrics.json and examples.png to --out. A config may hold any of
    these options and parameters (flags override it)."""
    opts, res = _invoke(values, api.attack, ("train_limit",))
    m = res.metrics
    emit(
        res.to_dict(),
        opts["as_json"],
        f"{res.attack}: ASR {m['asr']:.4f}, efficacy {m['efficacy']:.4f}, clean accuracy "
        f"{m['clean_acc']:.4f} (drop {100 * m['acc_drop']:.2f} points), mask L1 "
        f"{m['mask_l1']:.1f}; saved to {opts['out']}",
    )


attack = EstimatorGroup(
    "attack",
    registry=ATTACKS,
    make=lambda key, cls: estimator_command(_attack, key, cls),
    subcommand_metavar="ATTACK [OPTIONS]",
    help="Plant a backdoor with ATTACK in a copy of a model.\n\n"
    "Writes the poisoned model, trigger.safetensors/.png, metrics.json and examples.png to "
    "--out. imc with --init trojannn (the default) is TrojanNN*; with --init badnet it is "
    "BadNet*. Each attack's options are its parameters, with their defaults: "
    "'eviltwins attack ATTACK --help'.",
)


# --- detect --------------------------------------------------------------------------------------
#: The options of input filters only: ``api.detect``'s stamped-input protocol.
FILTER_OPTIONS = (
    *trigger_params(
        "Trigger to stamp on the evaluation inputs [default: the model folder's "
        "trigger.safetensors].",
        "The attack's target class [default: from model.json, else 0].",
    ),
    click.Option(
        ["--n-clean"],
        type=int,
        default=1000,
        show_default=True,
        help=f"Held-out clean images to fit on (and as many to test), a seeded random draw "
        f"of the test split. {must(N_CLEAN)}",
    ),
    click.Option(
        ["--protocol"],
        type=click.Choice(["effective", "all-stamped"]),
        default="effective",
        show_default=True,
        help="effective = clean inputs the model gets right vs stamped inputs it sends to the "
        "target (the authors'); all-stamped = every clean and stamped input. Both are "
        "reported.",
    ),
)


@click.command()
@model_folder_option("Model folder to scan.")
@dataset_of_model_option
@test_limit_option
@click.option(
    "--out", type=PathType, default=None, help="Folder for report.json (and reversed triggers)."
)
@_shared
def _detect(**values: Any) -> None:
    """Scan the model (--model) with this detector: a model inspector inspects the model; an
    input filter is evaluated on clean vs stamped held-out inputs. A config may hold any of
    these options and parameters (flags override it)."""
    opts, report = _invoke(values, api.detect, tuple(str(p.name) for p in FILTER_OPTIONS))
    emit(report.to_dict(), opts["as_json"], report.summary())


def _detector_command(key: str, cls: type) -> EstimatorCommand:
    """Input filters take the stamped-input protocol options; inspectors have no use for them."""
    if issubclass(cls, InputFilter):
        return estimator_command(_detect, key, cls, FILTER_OPTIONS, "an input filter")
    return estimator_command(_detect, key, cls, (), "a model inspector")


#: The detectors' names, input filters (True) and model inspectors (False).
_kinds = {
    kind: [k for k in DETECTORS.names() if issubclass(DETECTORS.get(k), InputFilter) is kind]
    for kind in (True, False)
}
detect = EstimatorGroup(
    "detect",
    registry=DETECTORS,
    make=_detector_command,
    subcommand_metavar="DETECTOR [OPTIONS]",
    help="Scan a model with DETECTOR.\n\n"
    f"A model inspector ({', '.join(_kinds[False])}) inspects the model; an input filter "
    f"({', '.join(_kinds[True])}) is evaluated on clean vs stamped held-out inputs. Each "
    "detector's options are its parameters, with their defaults: "
    "'eviltwins detect DETECTOR --help'.",
)
