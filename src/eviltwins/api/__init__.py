"""High-level Python API mirroring the CLI: ``train`` a clean model, ``evaluate`` a saved one,
``import_model`` one trained elsewhere, ``attack`` / ``detect`` / ``scan`` it, run sweeps and
``calibrate`` a scan's p(trojan) on them.

>>> import eviltwins as et
>>> res = et.train(dataset="digits", model="cnn", epochs=30, out="runs/clean")
>>> res.metrics["test_acc"]
>>> et.evaluate("runs/clean").accuracy
"""

from eviltwins.api.calibration import CalibrationRun, calibrate
from eviltwins.api.estimators import attack, detect, scan
from eviltwins.api.models import (
    EvaluationResult,
    ImportResult,
    LayersResult,
    evaluate,
    import_model,
    layers,
    train,
)
from eviltwins.api.sweeps import demo, sweep, write_sweep_report
from eviltwins.experiments.clean import TrainResult
from eviltwins.training import get_dataset

__all__ = [
    "CalibrationRun",
    "EvaluationResult",
    "ImportResult",
    "LayersResult",
    "TrainResult",
    "attack",
    "calibrate",
    "demo",
    "detect",
    "evaluate",
    "get_dataset",
    "import_model",
    "layers",
    "scan",
    "sweep",
    "train",
    "write_sweep_report",
]
