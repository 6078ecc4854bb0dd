"""The sweep report (CSV, the paper's figures, the claims in Markdown and HTML), built from a
sweep's cells taken as objects (:class:`~eviltwins.report.cells.CellLike`): table, figures
(a registry), claims (each with a stable id) and documents. Reading a run folder is
``eviltwins.experiments.reporting``'s job (the layer above)."""

from eviltwins.report.build import Report, build_report
from eviltwins.report.cells import CellLike, detector_labels, shown_detectors
from eviltwins.report.claims import Claim, claim_by_id, claims
from eviltwins.report.figures import FIGURES, PaperFigure
from eviltwins.report.table import flatten, pairs, write_csv

REPORT_SCHEMA = Report.SCHEMA

__all__ = [
    "FIGURES",
    "REPORT_SCHEMA",
    "CellLike",
    "Claim",
    "PaperFigure",
    "Report",
    "build_report",
    "claim_by_id",
    "claims",
    "detector_labels",
    "flatten",
    "pairs",
    "shown_detectors",
    "write_csv",
]
