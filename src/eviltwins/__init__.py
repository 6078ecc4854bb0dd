"""eviltwins: backdoor attacks on image classifiers (BadNet, Blended, TrojanNN, TrojanNN* = IMC)
and the detectors they are measured against (NeuralCleanse, TABOR, STRIP, SCALE-UP, ABS, the
NC+STRIP ensemble).

Implements the IMC framework of Pang et al., "A Tale of Evil Twins: Adversarial Inputs versus
Poisoned Models", CCS 2020. Images are float NCHW tensors in [0, 1]; normalisation is the model's
first layer.
"""

from eviltwins import detectors, metrics
from eviltwins.api import (
    TrainResult,
    attack,
    calibrate,
    demo,
    detect,
    evaluate,
    get_dataset,
    import_model,
    layers,
    scan,
    sweep,
    train,
    write_sweep_report,
)
from eviltwins.data import DATASETS, DatasetSpec, load_dataset
from eviltwins.errors import EviltwinsError
from eviltwins.io import ModelCard, ModelSource, load_model, save_model
from eviltwins.models import MODELS, activations, build_model, feature_tap
from eviltwins.version import __version__

__all__ = [
    "DATASETS",
    "MODELS",
    "DatasetSpec",
    "EviltwinsError",
    "ModelCard",
    "ModelSource",
    "TrainResult",
    "__version__",
    "activations",
    "attack",
    "calibrate",
    "demo",
    "detect",
    "metrics",
    "build_model",
    "detectors",
    "evaluate",
    "feature_tap",
    "get_dataset",
    "import_model",
    "layers",
    "load_dataset",
    "load_model",
    "save_model",
    "scan",
    "sweep",
    "train",
    "write_sweep_report",
]
