"""The ``eviltwins`` command line: a thin layer over the public Python API (click).

Results go to stdout (``--json`` for machine-readable output); progress bars and logs go to
stderr. A user mistake prints one line ``eviltwins: error: <message>`` and exits with code 2;
bugs keep their tracebacks. Commands live in :mod:`eviltwins.cli.commands`; the options they
share in :mod:`eviltwins.cli.common`; ``attack`` and ``detect`` options are generated from the
estimators' signatures by :mod:`eviltwins.cli.estimators`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys

import click

from eviltwins.cli.commands.calibrate import calibrate
from eviltwins.cli.commands.estimators import attack, detect
from eviltwins.cli.commands.imports import import_model, layers
from eviltwins.cli.commands.models import evaluate, list_, train
from eviltwins.cli.commands.scan import scan
from eviltwins.cli.commands.sweeps import demo, report_, sweep
from eviltwins.cli.helptext import summary_of
from eviltwins.errors import EviltwinsError
from eviltwins.version import __version__

__all__ = ["cli", "main", "run"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True)
@click.version_option(__version__, prog_name="eviltwins")
def cli() -> None:
    """Backdoor attacks and detectors for image classifiers (Pang et al., 2020).

    After "A Tale of Evil Twins: Adversarial Inputs versus Poisoned Models" (Pang et al., CCS
    2020). Attacks: BadNet, Blended, TrojanNN and TrojanNN* (imc); detectors: NeuralCleanse,
    TABOR and ABS (model inspectors), STRIP, SCALE-UP and the NeuralCleanse + STRIP ensemble
    (input filters). 'eviltwins demo' runs a small experiment end to end; 'eviltwins COMMAND
    --help' describes each command."""


for _command in (
    train,
    import_model,
    evaluate,
    layers,
    scan,
    calibrate,
    attack,
    detect,
    list_,
    sweep,
    report_,
    demo,
):
    if _command.short_help is None:  # the listing shows the whole summary, not its start
        _command.short_help = summary_of(_command.help or "")
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; returns the exit code (2 for user errors, with one stderr line)."""
    try:
        rv = cli.main(args=argv, prog_name="eviltwins", standalone_mode=False)
    except EviltwinsError as err:
        click.echo(f"eviltwins: error: {err}", err=True)
        return 2
    except click.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # click >= 8.2: bare group prints help
            click.echo(err.ctx.get_help() if err.ctx else str(err))
            return 0
        msg = " ".join(err.format_message().split())
        where = _command_path(err.ctx, sys.argv[1:] if argv is None else argv)
        click.echo(f"eviltwins: error: {msg} (see 'eviltwins{where} --help')", err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"eviltwins: error: {' '.join(err.format_message().split())}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("eviltwins: interrupted; finished outputs are kept", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def _command_path(ctx: click.Context | None, argv: list[str]) -> str:
    """The subcommand a usage error belongs to (``" scan"``, ``" detect abs"``; ``""`` for
    the group): from the error's context, else (click's parser raises some errors without
    one) the command names that start ``argv``."""
    if ctx is not None:
        return f" {ctx.command_path.split(' ', 1)[1]}" if ctx.parent else ""
    path, group = "", cli
    with contextlib.suppress(Exception):  # an unknown name ends the path: the group's help
        for word in argv:
            if not isinstance(group, click.Group) or word.startswith("-"):
                break
            cmd = group.get_command(click.Context(group), word)
            if cmd is None:
                break
            path, group = f"{path} {word}", cmd
    return path


def run() -> None:
    """Console-script entry point (``eviltwins``).

    Once the command is done, a Ctrl-C no longer raises :class:`KeyboardInterrupt`: it ends
    the process at once, quietly, with the command's exit code (its output flushed first). One
    landing while Python shuts down (in torch's exit handlers, say) would otherwise print a
    traceback after the command's result.
    """
    code: int | None = None
    while True:
        try:
            if code is None:
                code = main()
            signal.signal(signal.SIGINT, functools.partial(_exit_now, code))
            break
        except KeyboardInterrupt:  # landing as main() returns, before the handler is set
            code = 130 if code is None else code
    _flush()
    sys.exit(code)


def _exit_now(code: int, *_: object) -> None:
    """The SIGINT handler once the command is done: flush and end now with ``code``."""
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing to keep
            stream.flush()
