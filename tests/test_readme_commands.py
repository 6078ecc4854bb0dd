"""Every command in the README still exists as written: the set-up commands are the ones CI runs,
each CLI tour line names a real command with real options, and each Python tour call names a
real function with real keyword arguments. The commands themselves run end to end in the tests
of their own commands (train, attack, detect, scan, sweep, report, calibrate, import-model).
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
from pathlib import Path

import click
import pytest

import eviltwins as et
from eviltwins.cli import cli, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def _bash_lines() -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang not in ("bash", "sh", "console", ""):
            continue
        joined = body.replace("\\\n", " ")
        lines += [ln.split("  #")[0].strip() for ln in joined.splitlines() if ln.strip()]
    return lines


def _cli_lines() -> list[str]:
    return [ln for ln in _bash_lines() if ln.startswith("eviltwins ")]


def _command(words: list[str]) -> tuple[click.Command, list[str]]:
    cmd: click.Command = cli
    rest = list(words)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        assert sub is not None, f"no command {rest[0]!r} in {' '.join(words)}"
        cmd, rest = sub, rest[1:]
    return cmd, rest


def test_the_readme_has_a_cli_tour_and_a_python_tour():
    assert len(_cli_lines()) >= 10
    assert any(lang == "python" for lang, _ in BLOCKS)


def test_the_set_up_commands_are_the_ones_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = [ln for ln in _bash_lines() if ln.startswith(("python3 -m venv", ".venv/bin/"))]
    assert len(setup) == 2, setup
    for line in setup:
        assert line in ci, f"README set-up command not run by .ci/run: {line}"


@pytest.mark.parametrize("line", _cli_lines())
def test_each_cli_tour_line_names_a_real_command_and_real_options(line):
    cmd, rest = _command(shlex.split(line)[1:])
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{word} is not an option of: {line}"


def test_list_detectors_prints_what_the_readme_says(capsys):
    line = next(ln for ln in _cli_lines() if ln.startswith("eviltwins list detectors"))
    said = re.search(r"eviltwins list detectors\s+#\s*(.*)", README).group(1).split()
    assert main(shlex.split(line)[1:]) == 0
    assert capsys.readouterr().out.split() == said


def test_each_python_tour_call_names_a_real_function_and_real_keywords():
    code = "\n".join(body for lang, body in BLOCKS if lang == "python")
    calls = [
        n
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "et"
    ]
    assert len(calls) >= 5
    for call in calls:
        fn = getattr(et, call.func.attr, None)
        assert callable(fn), f"et.{call.func.attr} does not exist"
        params = inspect.signature(fn).parameters
        for kw in call.keywords:
            if call.func.attr == "sweep" and kw.arg not in params:  # **changes: RunOptions
                from eviltwins.experiments import RunOptions

                RunOptions.of(None, **{kw.arg: 2})
                continue
            assert kw.arg in params, f"et.{call.func.attr} takes no {kw.arg}="
