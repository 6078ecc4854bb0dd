"""The report's documents: ``report.md`` and ``report.html`` (the claims next to the measured
values, the figures, the results table, failed cells and unreadable cell files)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eviltwins.report.population import POPULATION_HEAD

POPULATION_TITLE = "## The model inspectors over these models"
POPULATION_RULE = (
    "Each model inspector's largest anomaly over the labels (ABS with no candidate neuron: 0) "
    "ranks the backdoored models of each attack against all the clean models: ROC AUC, the "
    "share of clean models flagged at the threshold that catches 95% of the backdoored ones, "
    "the share of backdoored models caught while flagging at most 5% of the clean ones; then "
    "the inspector's own verdict (a label flagged) on each kind of model, and how often the "
    "flagged labels include the attack's target. One seed's models are few: read the counts."
)


def unreadable_line(unreadable: dict[str, str]) -> str:
    """``N cell file(s) unreadable: cells/x.json (why), ...; re-run the sweep ...``."""
    n = len(unreadable)
    shown = ", ".join(f"{k} ({v})" for k, v in list(unreadable.items())[:3])
    more = f", and {n - 3} more" if n > 3 else ""
    noun = "file" if n == 1 else "files"
    it = "it" if n == 1 else "them"
    line = f"{n} cell {noun} unreadable: {shown}{more}; re-run the sweep to recompute {it}"
    return " ".join(line.split())


def md_table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines (``|`` in a cell escaped)."""

    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|")

    return [
        "| " + " | ".join(esc(h) for h in head) + " |",
        "|" + "---|" * len(head),
        *["| " + " | ".join(esc(x) for x in r) + " |" for r in body],
    ]


def html_table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """An HTML table (every cell escaped)."""
    th = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in body
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CLAIM_HEAD = ["claim", "paper", "measured here", "verdict"]
#: How the claims are read (eviltwins.report.claims), under their heading.
CLAIM_RULE = (
    "Each claim is read over seeds: one number per seed (a TrojanNN* cell minus its baseline's "
    "at the same setting and seed, averaged over the settings the claim covers), its mean and "
    "95% t interval; it holds only when the interval lies on the claimed side, and needs at "
    "least 3 seeds."
)
STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
    "padding:3px 6px;font-size:13px}img{max-width:100%}</style></head><body>"
)


def write_documents(
    out: Path,
    *,
    name: str,
    description: str,
    n_cells: int,
    claim_rows: Sequence[Sequence[str]],
    figures: Sequence[Path],
    table: tuple[Sequence[str], Sequence[Sequence[str]]],
    failed: Sequence[tuple[str, str]],
    unreadable: dict[str, str],
    population: Sequence[Sequence[str]] = (),
) -> None:
    """Write ``report.md`` and ``report.html`` into ``out``: the sweep's ``name`` and
    ``description``, the claims (claim, paper, measured, verdict), the figures, the summary
    ``table`` (head, body), the scanner over the sweep's models (``population``: rows under
    :data:`~eviltwins.report.population.POPULATION_HEAD`; no section when empty), the failed
    cells (key, error) and the unreadable cell files."""
    title = f"eviltwins report: {name}"
    head, body = table
    fail_rows = [list(f) for f in failed]
    bad_rows = [[k, v] for k, v in unreadable.items()]
    n_bad = len(bad_rows)
    bad = f", {n_bad} cell file{'' if n_bad == 1 else 's'} unreadable" if n_bad else ""
    counts = f"{n_cells} finished cells, {len(failed)} failed"

    md = [f"# {title}", ""]
    if description:
        md += [description, ""]
    md += [
        f"{counts}{bad}. All cells: `cells.csv`.",
        "",
        "## The paper's claims, measured",
        "",
        CLAIM_RULE,
        "",
        *md_table(CLAIM_HEAD, claim_rows),
        "",
        "## Figures",
        "",
    ]
    for p in figures:
        md += [f"![{p.stem}]({p.name})", ""]
    md += ["## Results (mean ± std over seeds)", "", *md_table(head, body), ""]
    if population:
        md += [
            POPULATION_TITLE,
            "",
            POPULATION_RULE,
            "",
            *md_table(POPULATION_HEAD, population),
            "",
        ]
    if fail_rows:
        md += ["## Failed cells", "", *md_table(["cell", "error"], fail_rows), ""]
    if bad_rows:
        md += [
            "## Unreadable cell files",
            "",
            unreadable_line(unreadable),
            "",
            *md_table(["file", "problem"], bad_rows),
            "",
        ]
    (out / "report.md").write_text("\n".join(md))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        STYLE,
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(description)}</p>",
        f"<p>{counts}{html.escape(bad)}. All cells: <a href='cells.csv'>cells.csv</a>.</p>",
        "<h2>The paper's claims, measured</h2>",
        f"<p>{html.escape(CLAIM_RULE)}</p>",
        html_table(CLAIM_HEAD, claim_rows),
        "<h2>Figures</h2>",
        *[f"<p><img src='{p.name}' alt='{p.stem}'></p>" for p in figures],
        "<h2>Results (mean ± std over seeds)</h2>",
        html_table(head, body),
    ]
    if population:
        parts += [
            f"<h2>{html.escape(POPULATION_TITLE[3:])}</h2>",
            f"<p>{html.escape(POPULATION_RULE)}</p>",
            html_table(POPULATION_HEAD, population),
        ]
    if fail_rows:
        parts += ["<h2>Failed cells</h2>", html_table(["cell", "error"], fail_rows)]
    if bad_rows:
        parts += [
            "<h2>Unreadable cell files</h2>",
            f"<p>{html.escape(unreadable_line(unreadable))}</p>",
            html_table(["file", "problem"], bad_rows),
        ]
    parts.append("</body></html>")
    (out / "report.html").write_text("\n".join(parts))
