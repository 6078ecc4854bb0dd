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
    is_architecture,
    is_keyword_mapping,
    is_torchvision_model,
    is_user_model,
    layer_names,
    torchvision_models,
)
from eviltwins.models.layers import (
    LayerInfo,
    auto_feature_layer,
    default_feature_layer,
    layer_or_feature_layer,
    trace_layers,
)

__all__ = [
    "MODELS",
    "LayerInfo",
    "auto_feature_layer",
    "default_feature_layer",
    "is_architecture",
    "is_torchvision_model",
    "torchvision_models",
    "trace_layers",
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
