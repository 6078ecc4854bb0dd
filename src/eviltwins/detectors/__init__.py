"""Detectors: model inspection (NeuralCleanse, TABOR, ABS) and input filtering (STRIP,
SCALE-UP, the NeuralCleanse + STRIP ensemble); each module registers its IMC evasion term."""

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
from eviltwins.detectors.scale_up import ScaleUp
from eviltwins.detectors.strip import STRIP
from eviltwins.detectors.tabor import TABOR

__all__ = [
    "ABS",
    "DETECTORS",
    "STRIP",
    "TABOR",
    "FilterReport",
    "InputFilter",
    "InspectionReport",
    "ModelInspector",
    "NCStripEnsemble",
    "NeuralCleanse",
    "ScaleUp",
    "evaluate_filter",
    "run_detector",
]
