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

from eviltwins.config import read_yaml
from eviltwins.errors import ParamError

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


def model_folder_option(help: str) -> Decorator:
    """``--model``: a saved model folder (required)."""
    return click.option("--model", "model", type=PathType, required=True, help=help)


dataset_of_model_option = click.option(
    "--dataset", default=None, help="Dataset [default: the model's own]."
)
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
