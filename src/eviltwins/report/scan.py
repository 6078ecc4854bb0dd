"""A scan's files (``eviltwins scan``): ``scan.json``, each inspector's report and reversed
triggers in a sub-folder named after it, and ``scan.html``, one self-contained page (images
embedded as PNG data URIs) with the verdict, what p(trojan) means (or why there is none), a
per-label bar chart per inspector and the reversed triggers. Everything read from a file (class names, paths) is HTML-escaped, and
only label numbers are drawn in the charts (no text of the model's is given to matplotlib)."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from eviltwins.detectors import InspectionReport
from eviltwins.detectors.scan import ScanReport, display_name, measure_name
from eviltwins.io import write_json
from eviltwins.paths import make_folder
from eviltwins.report.documents import STYLE, html_table

SCAN_FILE = "scan.json"
PAGE_FILE = "scan.html"
#: The file of each inspector's sub-folder that holds its reversed triggers (its ``save``).
TRIGGERS_FILE = "reversed.png"


def anomaly_chart(report: InspectionReport, measure: str) -> bytes:
    """A PNG bar chart of ``report``'s per-label anomaly measure (flagged labels in red) with
    its decision threshold as a dashed line."""
    from eviltwins.io.images import new_figure  # matplotlib is loaded only when drawing

    fig, axes = new_figure(1, 1, (max(4.0, 0.35 * len(report.labels) + 1.5), 2.6))
    ax = axes[0, 0]
    colors = ["#c0392b" if lab in report.flagged else "#7f8c8d" for lab in report.labels]
    ax.bar(range(len(report.labels)), report.anomaly, color=colors)
    ax.axhline(report.threshold, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(report.labels)))
    ax.set_xticklabels([str(int(lab)) for lab in report.labels], fontsize=7)
    ax.set_xlabel("label", fontsize=8)
    ax.set_ylabel(measure, fontsize=8)
    ax.set_title(f"{measure} per label (threshold {report.threshold:g})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _img(data: bytes, alt: str) -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="{src}">'


def _section(scan: ScanReport, name: str, folder: Path | None) -> str:
    rep = scan.reports[name]
    measure = measure_name(name)
    title = f"{display_name(name)} ({name})"
    parts = [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(rep.summary())}</p>"]
    parts.append(_img(anomaly_chart(rep, measure), f"{name}: {measure} per label"))
    if folder is not None and (folder / TRIGGERS_FILE).is_file():
        rel = f"{name}/{TRIGGERS_FILE}"
        parts.append(
            f"<p>Reversed triggers (masks, then mask x pattern; "
            f'<a href="{html.escape(rel)}">{html.escape(rel)}</a>):</p>'
        )
        parts.append(_img((folder / TRIGGERS_FILE).read_bytes(), f"{name}: reversed triggers"))
    classes = scan.classes
    rows = [
        [
            lab,
            classes[lab] if 0 <= lab < len(classes) else "",
            f"{score:.4g}",
            scan.figure(name, lab),
            "yes" if lab in rep.flagged else "",
        ]
        for lab, score in zip(rep.labels, rep.scores, strict=False)
    ]
    parts.append(html_table(["label", "class", "score", measure, "flagged"], rows))
    return "\n".join(parts)


def _number(value: object, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "undefined"


def calibration_text(scan: ScanReport) -> str:
    """What the scan's p(trojan) is, or why it has none, in a few sentences (plain text)."""
    cal = scan.calibration or {}
    if scan.p_trojan is None:
        why = cal.get("reason") or "this report was written without one"
        return (
            f"No p(trojan): {why}. The verdict is the inspectors' own: backdoor suspected when "
            "any inspector flags a label."
        )
    cv = cal.get("cv") if isinstance(cal.get("cv"), dict) else {}
    terms = " + ".join(
        f"{_number(c, '.3g')} x {measure_name(str(d))}"
        for d, c in zip(cal.get("detectors", []), cal.get("coef", []), strict=False)
    )
    text = (
        f"p(trojan) = {scan.p_trojan:.3f}: the probability that the model is backdoored, from a "
        "logistic model on each inspector's largest statistic over the labels, "
        f"logistic({_number(cal.get('intercept'), '.3g')} + {terms}), fitted on "
        f"{cal.get('source') or 'an unnamed population'} ({cal.get('n_models')} models, "
        f"{cal.get('n_trojaned')} backdoored); out of fold ({cv.get('folds')} folds) its AUC "
        f"is {_number(cv.get('auc'))} and its cross-entropy {_number(cv.get('cross_entropy'))}"
        " (answering 0.5 for every model scores ln 2 = 0.693). The model is called backdoored "
        "when p(trojan) is at least 0.5."
    )
    if cal.get("note"):
        text += f" Note: {cal['note']}; the calibration may not fit this scan's settings."
    return text


def scan_page(scan: ScanReport, out: Path | None = None) -> str:
    """``scan.html``'s text; the reversed triggers are taken from ``out``'s sub-folders."""
    title = f"eviltwins scan: {scan.model}"
    meta = (
        f"model {scan.model}; dataset {scan.dataset}; inspectors "
        f"{', '.join(scan.reports)}; {scan.seconds:.1f} s"
    )
    body = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        STYLE,
        f"<h1>{html.escape(title)}</h1>",
        f"<p><b>verdict: {html.escape(scan.verdict)}</b></p>",
        f"<p>{html.escape(calibration_text(scan))}</p>",
        f'<p>{html.escape(meta)}. The report: <a href="{SCAN_FILE}">{SCAN_FILE}</a>.</p>',
    ]
    for name in scan.reports:
        body.append(_section(scan, name, out / name if out is not None else None))
    body.append("</body></html>")
    return "\n".join(body) + "\n"


def write_scan(scan: ScanReport, out: str | os.PathLike[str]) -> Path:
    """Write ``scan.json``, each inspector's :meth:`~eviltwins.detectors.InspectionReport.save`
    output (``report.json``, ``reversed.safetensors``, ``reversed.png``) into ``out/<name>/``
    (a report read back from a file has no reversed triggers: none are written) and
    ``scan.html``; returns ``out``. Check ``out`` first (:func:`eviltwins.paths.prepare_out`,
    kind ``scan``)."""
    out = make_folder(out)
    write_json(out / SCAN_FILE, scan.to_dict())
    for name, rep in scan.reports.items():
        if rep.masks.numel():
            rep.save(out / name)
    (out / PAGE_FILE).write_text(scan_page(scan, out), encoding="utf-8")
    return out


__all__ = [
    "PAGE_FILE",
    "SCAN_FILE",
    "anomaly_chart",
    "calibration_text",
    "scan_page",
    "write_scan",
]
