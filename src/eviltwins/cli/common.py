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

from eviltwins.config import parse_yaml, read_yaml
from eviltwins.errors import ParamError
from eviltwins.io import ModelSource

PathType = click.Path(path_type=Path)
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: Command-line options a YAML config may not set (they say how to read the config itself).
NOT_IN_CONFIG = frozenset({"config", "as_json", "json"})


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
    """``--jobs/-j``: worker processes on this machine."""
    return click.option("--jobs", "-j", type=int, default=1, show_default=True, help=help)


class Numbers(click.ParamType):
    """Comma-separated numbers (``1,28,28``; a YAML list in a config), as a tuple of
    ``kind``."""

    def __init__(self, kind: type, metavar: str) -> None:
        self.kind, self.metavar, self.name = kind, metavar, f"{kind.__name__}s"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.metavar

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[Any, ...]:
        items = value if isinstance(value, list | tuple) else str(value).split(",")
        try:
            return tuple(self.kind(str(v).strip()) for v in items)
        except ValueError:
            self.fail(f"{value!r} is not comma-separated {self.kind.__name__}s", param, ctx)


class Mapping(click.ParamType):
    """A YAML/JSON mapping given inline (``'{width: 16}'``; a mapping in a config)."""

    name = "mapping"

    def convert(self, value: Any, param: Any, ctx: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        return parse_yaml(str(value), f"--{param.name.replace('_', '-')} {value!r}")


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
        help="Input of a weights file [default: the dataset's].",
    ),
    click.option(
        "--num-classes",
        type=int,
        default=None,
        help="Classes of a weights file [default: the dataset's].",
    ),
    click.option(
        "--mean",
        type=Numbers(float, "M[,M,M]"),
        default=None,
        help="Per-channel normalisation mean of a weights file [default: 0].",
    ),
    click.option(
        "--std",
        type=Numbers(float, "S[,S,S]"),
        default=None,
        help="Per-channel normalisation std of a weights file [default: 1].",
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
            help=f"{help} Or a weights file (.pth/.pt/.bin/.safetensors state dict) with --arch.",
        ),
        arch_option(
            "Architecture of a weights file: a registered name, torchvision:NAME or "
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
        type=int,
        default=None,
        metavar="N",
        help="Resize the images of a .npz / image-folder dataset to N x N [default: as stored].",
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
    "--train-limit", type=int, default=None, help="Train on a random subset of N."
)
test_limit_option = click.option(
    "--test-limit", type=int, default=None, help="Test on a random subset of N."
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
    "an attack, a report) after deleting those files; never the input model's folder, "
    "never files eviltwins did not write.",
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
        (["--target"], {"type": int, "default": None, "help": target_help}),
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
        param = by_name.get(key)
        if param is None or key in flags:
            params.setdefault(key, value)  # callee's parameter (flag wins when given)
            continue
        if ctx.get_parameter_source(key) in given:
            continue
        opts[key] = None if value is None else _cast(ctx, param, key, value, config)
    return opts, params


def _cast(ctx: click.Context, param: click.Parameter, key: str, value: Any, config: Any) -> Any:
    """A config value cast (and called back) like the option's flag would be."""
    try:
        cast = param.type_cast_value(ctx, value)
    except click.BadParameter as err:
        raise ParamError(
            f"option {key!r} in config {config}: {' '.join(err.message.split())}"
        ) from None
    except (TypeError, ValueError):
        raise ParamError(
            f"option {key!r} in config {config} must be {param.type.name}; got {value!r}"
        ) from None
    if param.callback is not None:
        cast = param.callback(ctx, param, cast)
    return cast
