"""Every ``--help`` and every user error reads as plain text.

Each command and subcommand of the ``eviltwins`` group, every registered attack
(``eviltwins attack NAME --help``) and detector (``eviltwins detect NAME --help``) is rendered
at 80 columns and checked:

* exit code 0;
* no reStructuredText or Markdown markup: no backquote at all (double-backquoted literals,
  roles such as ``:func:``, single-backquoted code), no role prefix (``:class:``), no
  ``**strong**`` or ``*emphasis*`` (a trailing star, as in TrojanNN*, is a name), no
  ``[text](link)``;
* no reference to a file the user does not have: no ``*.md`` file other than ``report.md``
  (which ``eviltwins report`` writes), no ``docs/`` path, no "the excerpt", no issue number;
* no measurement of one machine: a number with a time unit (``17 s``, ``105 ms``,
  ``2.5 minutes``) or a byte unit (``16 MB``), a core count, an ``Nx faster`` speed-up. No
  option takes a duration or a size today, so every such figure is flagged; an option that
  comes to take one should name its unit in its metavar (``--timeout SECONDS``), not as
  ``5 s`` in its help;
* its first paragraph (the summary) is one line at 80 columns, at most 100 characters, and
  one sentence ending with a full stop.

User errors (an unknown name, a bad value, a missing argument) print one line
``eviltwins: error: ...`` on stderr, exit with 2, and carry no traceback and no markup.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from eviltwins.cli import cli, main
from eviltwins.cli.helptext import plain, summary_of, wrap

#: Markup that must not reach a terminal.
MARKUP = {
    "backquote": re.compile(r"`"),
    "role": re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|obj|exc|ref|doc):"),
    "strong": re.compile(r"\*\*"),
    "emphasis": re.compile(r"(?<![\w*])\*[^\s*][^*\n]*?[^\s*\\]\*(?![\w*])"),
    "markdown link": re.compile(r"\[[^\]\n]+\]\([^)\s]+\)"),
}
#: References to files or history the user does not have.
FILE_REFS = re.compile(
    r"\b(?!report\.md\b)[\w.-]+\.md\b|\bdocs/|\bthe excerpt\b|\bissues? #?\d+\b", re.IGNORECASE
)
#: Measurements of one machine.
MEASUREMENTS = re.compile(
    r"\b\d+(?:[.,]\d+)?\s?(?:ms|us|µs|s|sec|seconds?|min|minutes?|h|hours?)\b"
    r"|\b\d+(?:[.,]\d+)?\s?[KMGT]i?B\b"
    r"|\b\d+ (?:CPU )?cores?\b|\bCPU cores\b|\b\d+(?:\.\d+)?x (?:faster|slower)\b"
    r"|\bspeed-?ups?\b",
    re.IGNORECASE,
)
#: Where a sentence ends inside a paragraph (not after "et al.", "e.g.", "i.e.", "Fig.").
SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bFig)[.!?]\s+[A-Z]")


def _paths(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of ``group``, the attacks and detectors included."""
    out = [path]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            out += _paths(cmd, (*path, name))
        else:
            out.append((*path, name))
    return out


PATHS = _paths()


def _help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    code = main([*path, "--help"])
    out, err = capsys.readouterr()
    assert code == 0, (path, err)
    assert err == "", (path, err)
    return out


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def _problems(text: str) -> list[str]:
    """What a user should not see in ``text``: markup, file references, measurements."""
    found = [f"{kind}: {m.group(0)!r}" for kind, rx in MARKUP.items() for m in rx.finditer(text)]
    found += [f"file reference: {m.group(0)!r}" for m in FILE_REFS.finditer(text)]
    found += [f"measurement: {m.group(0)!r}" for m in MEASUREMENTS.finditer(text)]
    return found


def test_the_walk_finds_every_command_and_estimator() -> None:
    names = {" ".join(p) for p in PATHS}
    for expected in ("", "train", "scan", "attack", "attack imc", "detect", "detect abs"):
        assert expected in names, expected
    assert len(PATHS) >= 20


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "eviltwins")
def test_help_is_plain_text(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(path, capsys)
    assert text.startswith("Usage: eviltwins"), text[:200]
    assert _problems(text) == [], f"eviltwins {' '.join(path)} --help"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "eviltwins")
def test_help_opens_with_a_one_line_summary(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _help(path, capsys).splitlines()
    assert lines[1] == "", lines[:3]  # usage, blank line, summary paragraph
    summary = lines[2].strip()
    assert lines[3] == "", f"the summary takes more than one line: {lines[2:5]}"
    assert 0 < len(summary) <= 100, summary
    assert summary.endswith("."), summary
    assert not SENTENCE_END.search(summary), f"more than one sentence: {summary!r}"


@pytest.mark.parametrize("verb", ["attack", "detect"])
def test_each_estimator_points_to_its_methods_page(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The help ends its text with the documentation's Methods page, by the page's title
    (checked against the site's navigation when mkdocs.yml is there)."""
    nav = Path(__file__).resolve().parents[1] / "mkdocs.yml"
    titles = (
        set(re.findall(r"^\s*- (.+?): methods/", nav.read_text(), re.M)) if nav.is_file() else None
    )
    group = cli.get_command(click.Context(cli), verb)
    assert isinstance(group, click.Group)
    for name in group.list_commands(click.Context(group)):
        text = " ".join(_help((verb, name), capsys).split())
        m = re.search(r"See the eviltwins documentation, Methods: (.+?)\. Options:", text)
        assert m is not None, f"{verb} {name}: no pointer to its Methods page"
        if titles is not None:
            assert m.group(1) in titles, (name, m.group(1), sorted(titles))


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["detect", "strp"], ["unknown detector 'strp'", "did you mean 'strip'"]),
        (["attack", "badnett", "--help"], ["unknown attack 'badnett'"]),
        (["train", "--lr", "abc"], ["'abc'", "(see 'eviltwins train --help')"]),
        (["attack", "imc", "--model", "m", "--out", "o", "--size", "2"], ["'size'", "(0, 1]"]),
        (["detect", "abs", "--bogus", "1"], ["no option --bogus", "--top-k"]),
        (["scan", "--calibration"], ["requires an argument", "'eviltwins scan --help'"]),
        (["detect", "abs", "--steps"], ["requires an argument", "'eviltwins detect abs --help'"]),
        (["nosuch"], ["No such command 'nosuch'", "(see 'eviltwins --help')"]),
        (["list", "layers"], ["cannot list 'layers'"]),
    ],
)
def test_user_errors_are_one_plain_line(
    argv: list[str],
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written, and nowhere that matters
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("eviltwins: error: "), err
    assert "Traceback" not in err and _problems(err) == [], err
    for needle in needles:
        assert needle in err, (needle, err)
    assert list(tmp_path.iterdir()) == []


# --- the renderer --------------------------------------------------------------------------------
def test_plain_removes_markup_and_spells_parameters_as_options() -> None:
    doc = """Summary with ``poison_rate`` and ``init="badnet"``.

    See :func:`~eviltwins.detectors.abs_remask.remask_loss` and :class:`NeuralCleanse` and
    *emphasis*, **strong**, `code`, ``from_scratch=True``, ``inplace=False``, ``steps=None``,
    a [link](https://example.org) and ``not_a_param``; TrojanNN* keeps its star.
    """
    text = plain(
        doc,
        {
            "poison_rate": False,
            "init": False,
            "from_scratch": True,
            "inplace": True,
            "steps": False,
        },
    )
    assert text.startswith("Summary with --poison-rate and --init badnet.")
    assert "See remask_loss and NeuralCleanse and emphasis, strong, code, --from-scratch, " in text
    assert "--no-inplace, no --steps, a link (https://example.org) and not_a_param;" in text
    assert "TrojanNN* keeps its star." in text
    assert _problems(text) == []


def test_plain_drops_file_references_measurements_and_pointers() -> None:
    doc = """ABS (Liu et al., CCS 2019), following ALGORITHMS.md ("ABS"):

    1. Elevation (ALGORITHMS.md step 2; the original's ``find_min_max``): per channel, the
       label's rise (see :func:`low_high_split`).
    2. Batches of at most 16 MB of maps, then the rest; step 3 runs on candidates.

    Speed: on the MNIST model 31 s plain, 20 s with both (same verdict). It ran 1.8x faster
    on 2 CPU cores. The bound is 1.2x the mask (Fig. 3).

    Example: ``ABS().inspect(model, data)``.
    """
    text = plain(doc)
    paragraphs = text.split("\n\n")
    assert paragraphs[0] == "ABS (Liu et al., CCS 2019):"
    assert paragraphs[1] == (
        "1. Elevation (the original's find_min_max): per channel, the label's rise."
    )
    assert paragraphs[2] == "2. then the rest; step 3 runs on candidates."
    assert paragraphs[3] == "The bound is 1.2x the mask (Fig. 3)."
    assert len(paragraphs) == 4  # the Python example is gone
    assert _problems(text) == []
    assert summary_of(text) == "ABS (Liu et al., CCS 2019):"


def test_wrap_hangs_list_items_and_keeps_literal_blocks() -> None:
    text = plain(
        """Lead::

            x' = a * k + (1 - a) * x,    a = 1 - t

        - first item, long enough to wrap onto a second line of the narrow text block here
        - second
        """
    )
    out = wrap(text, 40, "  ")
    assert "  Lead:\n\n      x' = a * k + (1 - a) * x,    a = 1 - t\n\n  - first" in out
    assert "\n    " in out.split("- first", 1)[1].split("- second")[0]  # hanging indent
