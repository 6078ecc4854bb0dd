"""Docstrings as ``--help`` text: developer prose in reStructuredText, shown as plain text.

An estimator's class docstring documents it in Python and in ``eviltwins attack NAME --help``
/ ``eviltwins detect NAME --help``. :func:`plain` renders it for a terminal:

* markup goes: ``:func:`~a.b.c``` -> ``c``, double-backquoted literals and ``*emphasis*`` /
  ``**strong**`` lose their marks, a Markdown link keeps its text, ``::`` before a literal
  block becomes ``:`` and the block keeps its lines;
* a literal naming a parameter of the estimator is spelled as its option (``poison_rate`` ->
  ``--poison-rate``, ``init="badnet"`` -> ``--init badnet``, ``inplace=True`` ->
  ``--inplace``);
* what only a Python reader can follow goes: a cross-reference that is only a pointer
  (``(see :func:`x`)``), an ``Example:`` of Python code;
* what the user does not have or need goes, wherever a docstring still holds it: a reference
  to a project file (``ALGORITHMS.md``, a ``docs/`` page), "the excerpt", an issue number, and
  a measurement of one machine (seconds, bytes, cores, speed-ups). The smallest part that holds it is removed: the
  part of a parenthesis (between ``;``), else the clause (between ``,`` / ``;``), else the
  sentence.

Lists (``1.``, ``-``, ``*``) become one paragraph per item, which :func:`wrap` indents under its
marker; literal blocks start with click's no-rewrap mark ``\\b``.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable, Mapping

#: A reference to something the user does not have: a project file, the paper excerpt the
#: project started from, an issue of its tracker.
FILE_REF = re.compile(
    r"\b[A-Z][A-Z0-9_]*\.md\b|\bdocs/[\w/.-]+\.md\b|\bthe excerpt\b|\bissues? #?\d+\b"
)
#: A measurement of one machine: a duration, a memory size, a core count, a speed-up.
MEASUREMENT = re.compile(
    r"\b\d+(?:[.,]\d+)?\s?(?:ms|us|µs|s|sec|seconds?|min|minutes?|h|hours?|[KMGT]i?B)\b"
    r"|\b\d+ (?:CPU )?cores?\b|\b\d+(?:\.\d+)?x (?:faster|slower)\b|\b[Ss]peed-?ups?\b"
)
#: A Sphinx cross-reference role: ``:func:`~mod.name```, ``:class:`text <target>```.
ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]*?)\s*(?:<([^>`]+)>)?`")
#: A role that is only a pointer (nothing else in its part of a parenthesis).
_POINTER = re.compile(rf"^(?:see\s+)?{ROLE.pattern}$")
_TRAILING_POINTER = re.compile(rf"\s*[,:;]?\s*(?:see\s+)?{ROLE.pattern}$")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*\\])\*(?=[^\s*])([^*\n]*?[^\s*\\])\*(?![\w*])")
_BACKQUOTED = re.compile(r"(?<![\w`])`([^`\n]+)`(?![\w`])")
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_ITEM = re.compile(r"^(\s*)([*-]|\d+\.|\(\w\))\s+")
_ABBREVIATIONS = ("al.", "e.g.", "i.e.", "Fig.", "Figs.", "Alg.", "Eqn.", "Sec.", "vs.", "cf.")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


def plain(doc: str, params: Mapping[str, bool] | None = None) -> str:
    """``doc`` (a docstring) as plain paragraphs separated by blank lines; ``params`` maps the
    estimator's parameter names to whether their option is an on/off flag."""
    out: list[str] = []
    literal = False
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        if literal and block.startswith((" ", "\t")):
            out.append("\b\n" + block.rstrip())
            continue
        literal = block.rstrip().endswith("::")
        for para in _paragraphs(block):
            item = _ITEM.match(para)
            marker = item.group(0) if item else ""
            text = para[len(marker) :].removesuffix("::").rstrip() + (":" if literal else "")
            text = _scrub(text, params)
            if text:
                out.append(marker + text)
    return "\n\n".join(out)


def summary_of(text: str) -> str:
    """The first paragraph of a :func:`plain` text, on one line."""
    return " ".join(text.split("\n\n", 1)[0].split())


def sentences(text: str) -> list[str]:
    """``text`` split after ``.``/``!``/``?`` followed by a capital or a quote, not after an
    abbreviation (``et al.``, ``e.g.``, ``Fig.``)."""
    out, start = [], 0
    for m in re.finditer(r"(?<=[.!?])\s+(?=[A-Z(\"'`:])", text):
        if not text[start : m.start()].endswith(_ABBREVIATIONS):
            out.append(text[start : m.start()])
            start = m.end()
    return [*out, text[start:]]


def wrap(text: str, width: int, indent: str = "") -> str:
    """A :func:`plain` text wrapped to ``width``: each list item hangs under its marker, a
    literal block (``\\b``) keeps its lines."""
    out = []
    for para in text.split("\n\n"):
        if para.startswith("\b"):
            out.append("\n".join(indent + line for line in para.split("\n")[1:]))
            continue
        item = _ITEM.match(para)
        hang = " " * (len(item.group(0)) if item else 0)
        out.append(
            textwrap.fill(
                para,
                max(width, 20),
                initial_indent=indent,
                subsequent_indent=indent + hang,
                break_on_hyphens=False,
            )
        )
    return "\n\n".join(out)


# --- blocks ---------------------------------------------------------------------------------------
def _paragraphs(block: str) -> list[str]:
    """One paragraph per list item of ``block`` (a list when its first line is an item), else
    the block; each on one line."""
    lines = block.split("\n")
    first = _ITEM.match(lines[0])
    if first is None:
        return [" ".join(block.split())]
    items: list[list[str]] = []
    for line in lines:
        m = _ITEM.match(line)
        if not items or (m is not None and len(m.group(1)) <= len(first.group(1))):
            items.append([])
        items[-1].append(line.strip())
    return [" ".join(" ".join(item).split()) for item in items]


# --- inline ---------------------------------------------------------------------------------------
def _scrub(para: str, params: Mapping[str, bool] | None) -> str:
    """One paragraph: unreachable parts removed, then its markup."""
    if re.match(r"Examples?:", para):
        return ""
    kept = []
    for sentence in sentences(para):
        if sentence.startswith(("Example:", "Examples:")):
            continue
        sentence = _remove(sentence, lambda s: bool(FILE_REF.search(s) or MEASUREMENT.search(s)))
        if sentence:
            kept.append(sentence)
    return _inline(" ".join(kept), params)


def _remove(sentence: str, bad: Callable[[str], bool]) -> str:
    """``sentence`` without the parts ``bad`` finds, nor the pointer-only cross-references:
    inside a parenthesis its ``;``-separated parts (the parenthesis goes when none is left),
    outside the ``,``/``;``-separated clauses; an empty string when nothing is left."""
    groups: list[str] = []
    changed = False

    def part(m: re.Match[str]) -> str:
        nonlocal changed
        kept = []
        for piece in m.group(1).split(";"):
            full = _restore(piece, groups).strip()
            if bad(full) or _POINTER.match(full):
                continue
            kept.append(_TRAILING_POINTER.sub("", piece.strip()))
        if kept != [p.strip() for p in m.group(1).split(";")]:
            changed = True
            groups.append(f"({'; '.join(kept)})" if kept else "")
        else:
            groups.append(m.group(0))
        return f"\x00{len(groups) - 1}\x00"

    text, n = sentence, 1
    while n:  # innermost parentheses first; an unbalanced one ("(0, 1]") is left as written
        text, n = re.subn(r"\(([^()]*)\)", part, text)
    if bad(_restore(text, groups)):  # clauses outside parentheses
        changed = True
        end = text.rstrip()[-1:] if text.rstrip()[-1:] in (".", ":") else ""
        kept: list[str] = []
        for clause in re.split(r"(?<=[,;])\s+", text):
            if not bad(_restore(clause, groups)):
                kept.append(clause)
            elif kept and clause[-1:] in (",", ";"):  # "A, B; C" without B: "A; C"
                kept[-1] = kept[-1][:-1] + clause[-1]
        text = " ".join(kept).rstrip(",;: ")
        text = text + end if text and not text.endswith((".", ":")) else text
    text = _restore(text, groups)
    return _tidy(text) if changed else text


def _restore(text: str, groups: list[str]) -> str:
    while _PLACEHOLDER.search(text):
        text = _PLACEHOLDER.sub(lambda m: groups[int(m.group(1))], text)
    return text


def _tidy(text: str) -> str:
    """Spacing and punctuation left over where a part was removed."""
    text = re.sub(r"\s+([,;)])", r"\1", text)
    text = re.sub(r"\s+([.:])(?=\s|$)", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"[,;]([.:])(?=\s|$)", r"\1", text)
    return " ".join(text.split())


def _inline(text: str, params: Mapping[str, bool] | None) -> str:
    """Markup as plain text; literals naming a parameter as its option."""
    text = ROLE.sub(_role, text)
    literals: list[str] = []

    def hold(m: re.Match[str]) -> str:
        literals.append(_as_option(m.group(1), params))
        return f"\x00{len(literals) - 1}\x00"

    text = _LITERAL.sub(hold, text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _BACKQUOTED.sub(r"\1", text)
    text = _MD_LINK.sub(
        lambda m: m.group(1) + (f" ({m.group(2)})" if "://" in m.group(2) else ""), text
    )
    return _restore(text, literals)


def _role(m: re.Match[str]) -> str:
    tilde, text, target = m.groups()
    if target:
        return text.strip()
    return text.rsplit(".", 1)[-1] if tilde else text


def _as_option(literal: str, params: Mapping[str, bool] | None) -> str:
    """``name`` -> ``--name``, ``name=value`` -> ``--name value`` (``--name`` / ``--no-name``
    for a flag, ``no --name`` for None) when ``name`` is a parameter; else ``literal``."""
    if not params:
        return literal
    name, eq, value = literal.partition("=")
    if name not in params:
        return literal
    option = "--" + name.replace("_", "-")
    if not eq:
        return option
    value = value.strip().strip("\"'")
    if value == "None":
        return f"no {option}"
    if params[name] and value in ("True", "False"):
        return option if value == "True" else f"--no-{option[2:]}"
    return f"{option} {value}"
