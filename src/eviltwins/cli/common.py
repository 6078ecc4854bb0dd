"""What the commands share: option groups defined once, YAML configs, output and errors.

Results go to stdout (``--json`` for machine-readable output); progress bars and logs go to
stderr. A user mistake prints one line ``eviltwins: error: <message>`` and exits with code 2;
bugs keep their tracebacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from eviltwins.base import (
    CLASS_INDEX,
    IMAGE_SIZE,
    INPUT_LIMITS,
    MAX_CLASSES,
    MAX_MAGNITUDE,
    SUBSET_SIZE,
    Interval,
)
from eviltwins.cli.types import Bounded, Mapping, Numbers, config_problem, rule_text
from eviltwins.config import read_yaml
from eviltwins.errors import ParamError
from eviltwins.experiments.options import WORKERS
from eviltwins.io import ModelSource
from eviltwins.paths import check_apart
from eviltwins.triggers import check_alpha

PathType = click.Path(path_type=Path)
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: Command-line options a YAML config may not set (they say how to read the config itself).
NOT_IN_CONFIG = frozenset({"config", "as_json", "json"})
#: Options only the command line may give: trust in user code lives in the invocation, never
#: in a file (SECURITY.md), and a config may come from someone else.
TRUST_OPTIONS = frozenset({"trust_arch", "trust_code"})


def options(*decorators: Decorator) -> Decorator:
    """Several click options as one decorator, listed in ``--help`` in the order given."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn

    return apply


# --- single options, each defined once -----------------------------------------------------------
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:N]."
)
data_root_option = click.option(
    "--data-root",
    type=PathType,
    default=None,
    help="Folder holding the datasets [default: $EVILTWINS_DATA, else ~/.cache/eviltwins/data].",
)
download_option = click.option(
    "--download", is_flag=True, help="Fetch the dataset if it is missing."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="Hide progress bars.")


def json_option(what: str = "the result") -> Decorator:
    """``--json``: print ``what`` as JSON instead of the summary line."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def jobs_option(help: str) -> Decorator:
    """``--jobs/-j``: worker processes on this machine (checked by RunOptions)."""
    return click.option(
        "--jobs", "-j", type=int, default=1, show_default=True, help=f"{help} {must(WORKERS)}"
    )


def must(rule: Interval) -> str:
    """The sentence a number option's ``--help`` states its bound in: ``Must be an int in
    [1, 1024].``"""
    return f"Must be {rule_text(rule)}."


#: The ``--model`` options that describe a bare weights file (see :class:`ModelSource`).
MODEL_FLAGS = ("model", "arch", "input_shape", "num_classes", "mean", "std", "arch_kwargs")


def arch_option(help: str, required: bool = False) -> Decorator:
    """``--arch``: the architecture of a weights file."""
    return click.option("--arch", default=None, required=required, metavar="ARCH", help=help)


#: The options that describe a weights file's input, normalisation and constructor.
weights_file_options = options(
    click.option(
        "--input-shape",
        type=Numbers(int, "C,H,W"),
        default=None,
        help=f"Input of a weights file: {INPUT_LIMITS} (C x H x W) [default: the dataset's].",
    ),
    click.option(
        "--num-classes",
        type=int,
        default=None,
        help=f"Classes of a weights file, an int in [2, {MAX_CLASSES}] [default: the dataset's].",
    ),
    click.option(
        "--mean",
        type=Numbers(float, "M[,M,M]"),
        default=None,
        help="Per-channel normalisation mean of a weights file, numbers in "
        f"[-{MAX_MAGNITUDE}, {MAX_MAGNITUDE}] [default: 0].",
    ),
    click.option(
        "--std",
        type=Numbers(float, "S[,S,S]"),
        default=None,
        help="Per-channel normalisation std of a weights file, numbers in "
        f"[-{MAX_MAGNITUDE}, {MAX_MAGNITUDE}] [default: 1].",
    ),
    click.option(
        "--arch-kwargs",
        type=Mapping(),
        default=None,
        metavar="YAML",
        help="Constructor options of the architecture, a YAML/JSON mapping (e.g. '{width: 16}').",
    ),
)


def model_folder_option(help: str) -> Decorator:
    """``--model`` (a model folder, or a weights file with ``--arch`` and its input), the
    flags that describe a bare weights file, and the trust flags."""
    return options(
        click.option(
            "--model",
            "model",
            type=PathType,
            required=True,
            help=f"{help} Or a weights file (.pth/.pt/.bin/.safetensors state dict), or a Hugging "
            "Face folder (config.json + model.safetensors), with --arch.",
        ),
        arch_option(
            "Architecture of a weights file: a registered name, torchvision:NAME, timm:NAME or "
            "package.module:Class (naming it here lets its module be imported). With a model "
            "folder: must match its card, and trusts it."
        ),
        weights_file_options,
        trust_options,
    )


def model_source(opts: dict[str, Any]) -> ModelSource:
    """The ``--model`` options as the API's :class:`~eviltwins.io.ModelSource`."""
    return ModelSource(
        opts["model"],
        opts["arch"],
        opts["input_shape"],
        opts["num_classes"],
        opts["mean"],
        opts["std"],
        dict(opts["arch_kwargs"] or {}),
    )


dataset_of_model_option = click.option(
    "--dataset",
    default=None,
    help="Dataset: a registered name, a .npz file or an image folder [default: the model's own].",
)
#: Options of a dataset named by path, passed on as ``dataset_options`` (see ``data_options``).
DATA_OPTIONS = ("image_size", "channels", "normalize")
data_options = options(
    click.option(
        "--image-size",
        type=Bounded(IMAGE_SIZE),
        default=None,
        metavar="N",
        help="Resize the images of a .npz / image-folder dataset to N x N, N "
        f"{rule_text(IMAGE_SIZE).removeprefix('an int ')} [default: as stored].",
    ),
    click.option(
        "--channels",
        type=click.Choice(["1", "3"]),
        default=None,
        callback=lambda ctx, param, value: None if value is None else int(value),
        help="1 (grey) or 3 (colour) for a .npz / image-folder dataset [default: as stored; "
        "an image folder: 1 when every image is grey].",
    ),
    click.option(
        "--normalize",
        type=click.Choice(["auto", "none", "imagenet"]),
        default=None,
        help="Normalisation for a .npz / image-folder dataset: auto (the train split's "
        "per-channel mean and std), none, imagenet [default: auto].",
    ),
)


def dataset_options(opts: dict[str, Any], base: Any = None) -> Any:
    """The ``data_options`` given in ``opts`` as ``dataset_options`` of the API, over ``base``
    (a config's ``dataset_options`` mapping; anything else is passed on for the API to refuse)."""
    given = {k: opts[k] for k in DATA_OPTIONS if opts.get(k) is not None}
    if isinstance(base, dict):
        return {**base, **given}
    return given if base is None else base


train_limit_option = click.option(
    "--train-limit",
    type=Bounded(SUBSET_SIZE),
    default=None,
    help=f"Train on a random subset of N images. {must(SUBSET_SIZE)}",
)
test_limit_option = click.option(
    "--test-limit",
    type=Bounded(SUBSET_SIZE),
    default=None,
    help=f"Test on a random subset of N images. {must(SUBSET_SIZE)}",
)


def config_option(what: str) -> Decorator:
    """``--config``: a YAML file of ``what`` (flags on the command line override it)."""
    return click.option(
        "--config", type=PathType, default=None, help=f"YAML file with {what} (flags override it)."
    )


overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Write into an --out folder holding another kind of eviltwins output (a model, "
    "an attack, a report) after deleting those files; never a folder the command reads "
    "(the input model's, a dataset's), never files eviltwins did not write.",
)

trust_options = options(
    click.option(
        "--trust-arch",
        "trust_arch",
        multiple=True,
        metavar="PKG.MOD:CLASS",
        help="A user architecture the model card may name; its module is imported (its code "
        "runs). Repeatable. Without it a card naming package.module:Class is refused and "
        "nothing is imported.",
    ),
    click.option(
        "--trust-code",
        is_flag=True,
        help="Import whatever user architecture the model card names (runs that code: only "
        "for models from a source you trust).",
    ),
)

#: --device, --data-root, --download, --quiet, --json: the commands that load data share them.
common_options = options(
    device_option, data_root_option, download_option, quiet_option, json_option()
)


# --- a given backdoor: its trigger (a file or an image) and target -----------------------------
def _trigger_specs(trigger_help: str, target_help: str) -> list[tuple[list[str], dict[str, Any]]]:
    """Declarations and settings of ``--trigger``, its image options and ``--target``."""
    return [
        (
            ["--trigger"],
            {
                "type": PathType,
                "default": None,
                "help": f"{trigger_help} A .safetensors trigger written by eviltwins, or a "
                "pattern image (PNG, JPEG, ...; converted to the model's grey or RGB): a patch "
                "smaller than the input (opaque unless --trigger-alpha or --trigger-mask), or "
                "the full input size with --trigger-mask or a --trigger-alpha below 1.",
            },
        ),
        (
            ["--trigger-mask"],
            {
                "type": PathType,
                "default": None,
                "help": "Grey image of the pattern's size: each pixel's opacity m = value / 255 "
                "(white: the pattern shows; black: the input does).",
            },
        ),
        (
            ["--trigger-alpha"],
            {
                "type": float,
                "default": None,
                "metavar": "FLOAT",
                "callback": lambda ctx, param, value: None if value is None else check_alpha(value),
                "help": "Opacity m in (0, 1] of every pixel of the pattern image (1 = opaque; "
                "m = 1 - transparency) [default: 1 for a patch].",
            },
        ),
        (
            ["--trigger-position"],
            {
                "default": None,
                "metavar": "ROW,COL|CORNER",
                "help": "Where a patch goes: bottom-right [default], bottom-left, top-right, "
                "top-left, center, or ROW,COL of its top-left pixel.",
            },
        ),
        (
            ["--target"],
            {"type": int, "default": None, "help": f"{target_help} {must(CLASS_INDEX)}"},
        ),
    ]


def trigger_params(trigger_help: str, target_help: str) -> tuple[click.Option, ...]:
    """``--trigger``, ``--trigger-mask``, ``--trigger-alpha``, ``--trigger-position`` and
    ``--target`` as click parameters (the arguments of the same names of ``api.detect`` and
    ``api.evaluate``); :func:`trigger_options` is the same as a decorator."""
    return tuple(click.Option(d, **kw) for d, kw in _trigger_specs(trigger_help, target_help))


def trigger_options(trigger_help: str, target_help: str) -> Decorator:
    """The options of :func:`trigger_params` as one decorator."""
    specs = _trigger_specs(trigger_help, target_help)
    return options(*(click.option(*d, **kw) for d, kw in specs))


#: The ``trigger_options`` names, as the API's keyword arguments.
TRIGGER_ARGS = ("trigger", "trigger_mask", "trigger_alpha", "trigger_position", "target")


# --- helpers of the command bodies ---------------------------------------------------------------
def emit(result: dict[str, Any], as_json: bool, summary: str) -> None:
    """Print ``result`` as JSON with ``--json``, else the one-paragraph ``summary``."""
    click.echo(json.dumps(result, indent=2) if as_json else summary)


def trusted(trust_arch: tuple[str, ...], trust_code: bool) -> bool | tuple[str, ...]:
    """``--trust-arch`` / ``--trust-code`` as the ``trust_arch`` argument of the API."""
    return True if trust_code else tuple(trust_arch)


def loading(opts: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments that ``api.attack`` and ``api.detect`` share: where results go,
    which user architectures the received card may import, the device, data and test subset."""
    return {
        "out": opts["out"],
        "overwrite": opts["overwrite"],
        "trust_arch": trusted(opts["trust_arch"], opts["trust_code"]),
        "device": opts["device"],
        "data_root": opts["data_root"],
        "download": opts["download"],
        "test_limit": opts["test_limit"],
        "quiet": opts["quiet"] or None,
        "dataset_options": dataset_options(opts),
    }


def check_config(
    config: Path | None,
    flags: dict[str, Any],
    params: dict[str, Any],
    check: Callable[[dict[str, Any]], Any],
) -> None:
    """Validate the callee's parameters before any work: ``check`` (one ParamError line)
    those the command line gave (``flags``; a problem names the option), then ``params``
    with the config's values too (a problem names the config file)."""
    check({k: v for k, v in flags.items() if v is not None})
    if config is not None:
        try:
            check(params)
        except ParamError as err:
            raise ParamError(f"config {config}: {err}"[:500]) from None


def resolve(config: Path | None, flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command's options and the callee's parameters, from the command line and a YAML
    ``config`` (a flag given on the command line wins over the config).

    ``flags`` are the options that are parameters of the callee (an estimator's, or
    ``api.train``'s), ``None`` when not given. Returns ``(options, params)``: ``options`` maps
    every other command option (``out``, ``device``, ``quiet``, ...) to its value, a config
    value cast like the flag would be; ``params`` holds the ``flags`` the user set and the
    config's other keys as written (the callee checks their names, types and ranges).
    """
    ctx = click.get_current_context()
    values = read_yaml(config) if config is not None else {}
    opts = {k: v for k, v in ctx.params.items() if k not in flags}
    params = {k: v for k, v in flags.items() if v is not None}
    by_name = {p.name: p for p in ctx.command.params}
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    for key, value in values.items():
        if key in NOT_IN_CONFIG:
            raise ParamError(f"option {key!r} cannot be set in config {config}")
        if key in TRUST_OPTIONS and key in by_name:
            raise ParamError(
                f"option {key!r} cannot be set in config {config}: trust in user code is given "
                f"on the command line (--{key.replace('_', '-')}), never by a file"
            )
        param = by_name.get(key)
        if param is None or key in flags:
            params.setdefault(key, value)  # callee's parameter (flag wins when given)
            continue
        cast = None if value is None else _cast(ctx, param, key, value, config)
        if ctx.get_parameter_source(key) not in given:  # a flag wins, but the file is checked
            opts[key] = cast
    if config is not None and opts.get("out") is not None:  # never write beside the config
        check_apart(opts["out"], {"the config file": config})
    return opts, params


def _cast(ctx: click.Context, param: click.Parameter, key: str, value: Any, config: Any) -> Any:
    """A config value of the option's own YAML type (:func:`config_problem`) cast (and called
    back) like the option's flag would be."""
    problem = config_problem(param, value)
    if problem is not None:
        raise ParamError(
            f"option {key!r} in config {config} must be {problem}; got {value!r}"[:300]
        )
    try:
        cast = param.type_cast_value(ctx, value)
    except click.BadParameter as err:
        raise ParamError(
            f"option {key!r} in config {config}: {' '.join(err.message.split())}"
        ) from None
    except (TypeError, ValueError, OverflowError):
        raise ParamError(
            f"option {key!r} in config {config} must be {param.type.name}; got {value!r}"
        ) from None
    if param.callback is not None:
        cast = param.callback(ctx, param, cast)
    return cast
