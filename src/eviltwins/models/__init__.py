"""Models: registry, normalising wrapper, user models and feature taps (inputs in [0, 1])."""

from eviltwins.models import zoo  # noqa: F401  (fills the registry)
from eviltwins.models.base import (
    MODELS,
    Classifier,
    Normalize,
    activations,
    build_model,
    consumer_of,
    feature_tap,
    get_layer,
    import_user_model,
    is_keyword_mapping,
    is_user_model,
    layer_names,
    layer_or_feature_layer,
)

__all__ = [
    "MODELS",
    "Classifier",
    "Normalize",
    "activations",
    "build_model",
    "consumer_of",
    "feature_tap",
    "get_layer",
    "import_user_model",
    "is_keyword_mapping",
    "is_user_model",
    "layer_names",
    "layer_or_feature_layer",
]
