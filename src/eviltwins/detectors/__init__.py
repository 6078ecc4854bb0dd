"""Detectors: model inspection (NeuralCleanse, ABS) and input filtering (STRIP, the
NeuralCleanse + STRIP ensemble)."""

from eviltwins.detectors import abs_evasion  # noqa: F401  (registers IMC's ABS evasion term)
from eviltwins.detectors.abs import ABS
from eviltwins.detectors.base import (
    DETECTORS,
    FilterReport,
    InputFilter,
    InspectionReport,
    ModelInspector,
)
from eviltwins.detectors.ensemble import NCStripEnsemble
from eviltwins.detectors.evaluation import evaluate_filter, run_detector
from eviltwins.detectors.neural_cleanse import NeuralCleanse
from eviltwins.detectors.strip import STRIP

__all__ = [
    "ABS",
    "DETECTORS",
    "STRIP",
    "FilterReport",
    "InputFilter",
    "InspectionReport",
    "ModelInspector",
    "NCStripEnsemble",
    "NeuralCleanse",
    "evaluate_filter",
    "run_detector",
]
