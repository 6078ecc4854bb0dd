"""``train``, ``evaluate`` and ``list``: clean models and the registries."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import click

from eviltwins import api
from eviltwins.attacks import ATTACKS
from eviltwins.cli.common import (
    NOT_IN_CONFIG,
    TRIGGER_ARGS,
    PathType,
    check_config,
    common_options,
    config_option,
    data_options,
    dataset_of_model_option,
    dataset_options,
    emit,
    json_option,
    model_folder_option,
    model_source,
    must,
    overwrite_option,
    resolve,
    test_limit_option,
    train_limit_option,
    trigger_options,
    trusted,
)
from eviltwins.cli.estimators import signature_option
from eviltwins.config import validate
from eviltwins.data import DATASETS
from eviltwins.detectors import DETECTORS
from eviltwins.errors import ParamError
from eviltwins.models import MODELS
from eviltwins.training import TrainConfig, check_limits

#: The rules of ``train``'s number options, checked by ``api.train`` before any work.
RULES = TrainConfig._constraints
#: The options of ``train`` that are parameters of ``api.train`` (passed on when given).
TRAIN_PARAMS = (
    "dataset",
    "model",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "augment",
    "seed",
    "train_limit",
    "test_limit",
)


def _check_train(params: dict[str, Any]) -> None:
    """The training options among ``params`` (one ParamError line), before any work."""
    validate(TrainConfig, **{k: v for k, v in params.items() if k in RULES})
    check_limits(params.get("train_limit"), params.get("test_limit"))


@click.command()
@signature_option(
    api.train,
    "dataset",
    f"A registered name ({', '.join(DATASETS.names())}), a .npz file or an image folder.",
)
@data_options
@signature_option(
    api.train, "model", "Architecture ('eviltwins list models') or package.module:Class."
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help=f"Epochs [default: the dataset's]. {must(RULES['epochs'])}",
)
@signature_option(api.train, "batch_size", f"Batch size. {must(RULES['batch_size'])}", type=int)
@signature_option(api.train, "lr", f"Learning rate. {must(RULES['lr'])}", type=float)
@signature_option(api.train, "optimizer", "sgd or adam.")
@click.option(
    "--augment/--no-augment", default=None, help="Training augmentation [default: the dataset's]."
)
@signature_option(api.train, "seed", f"Random seed. {must(RULES['seed'])}", type=int)
@train_limit_option
@test_limit_option
@config_option("any of these options")
@click.option(
    "--out", type=PathType, default=Path("runs/clean"), show_default=True, help="Output folder."
)
@overwrite_option
@common_options
def train(config: Path | None, **values: Any) -> None:
    """Train a clean model; write model.safetensors and model.json to --out.

    A config may set any of these options (command-line flags override it) and the other
    arguments of eviltwins.train (weight_decay, arch_kwargs)."""
    flags = {k: values.pop(k) for k in TRAIN_PARAMS}
    opts, params = resolve(config, flags)
    known = set(inspect.signature(api.train).parameters) - set(opts)
    unknown = sorted(set(params) - known - set(flags))
    if unknown:
        raise ParamError(
            f"unknown option {unknown[0]!r} in config {config}; known: "
            f"{', '.join(sorted(known | set(opts) - NOT_IN_CONFIG))}"
        )
    check_config(config, flags, params, _check_train)
    data = dataset_options(opts, params.pop("dataset_options", None))
    res = api.train(
        **params,
        out=opts["out"],
        overwrite=opts["overwrite"],
        device=opts["device"],
        data_root=opts["data_root"],
        download=opts["download"],
        quiet=opts["quiet"] or None,
        dataset_options=data,
    )
    m = res.metrics
    emit(
        res.to_dict(),
        opts["as_json"],
        f"{res.card.architecture} on {res.card.dataset}: test accuracy {m['test_acc']:.4f} "
        f"after {len(res.history)} epochs ({res.seconds:.1f} s); saved to {res.out}",
    )


@click.command()
@model_folder_option("Model folder written by 'eviltwins train'.")
@dataset_of_model_option
@data_options
@test_limit_option
@trigger_options(
    "A given backdoor's trigger: also report its attack success rate over the non-target test "
    "inputs and its efficacy (mean target probability).",
    "The backdoor's target class (with --trigger) [default: from model.json].",
)
@common_options
def evaluate(**opts: Any) -> None:
    """Measure a model's test accuracy, and a backdoor's success with --trigger.

    Reports the clean test accuracy of a saved model; with --trigger (a .safetensors trigger,
    or a pattern image from any toolkit with --trigger-mask / --trigger-alpha /
    --trigger-position) and --target, also the backdoor's attack success rate and efficacy."""
    res = api.evaluate(
        model_source(opts),
        opts["dataset"],
        device=opts["device"],
        data_root=opts["data_root"],
        download=opts["download"],
        test_limit=opts["test_limit"],
        trust_arch=trusted(opts["trust_arch"], opts["trust_code"]),
        quiet=opts["quiet"] or None,
        dataset_options=dataset_options(opts),
        **{k: opts[k] for k in TRIGGER_ARGS},
    )
    backdoor = (
        ""
        if res.asr is None
        else f"; trigger {res.trigger} -> class {res.target}: ASR {res.asr:.4f}, efficacy "
        f"{res.efficacy:.4f} over {res.n_attack} non-target images"
    )
    emit(
        res.to_dict(),
        opts["as_json"],
        f"{res.model} on {res.dataset}: accuracy {res.accuracy:.4f} over {res.n} test images"
        + backdoor,
    )


REGISTRIES = {"datasets": DATASETS, "models": MODELS, "attacks": ATTACKS, "detectors": DETECTORS}


@click.command("list")
@click.argument("kind")
@json_option("the names")
def list_(kind: str, as_json: bool) -> None:
    """List the registered names of KIND (datasets, models, attacks, detectors)."""
    if kind not in REGISTRIES:
        raise ParamError(f"cannot list {kind!r}; choose one of: {', '.join(REGISTRIES)}")
    names = REGISTRIES[kind].names()
    emit({"kind": kind, "names": names}, as_json, "\n".join(names))
