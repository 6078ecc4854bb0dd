"""Safe persistence of models and results.

A backdoor scanner loads untrusted models, so nothing here unpickles arbitrary objects:
weights are written with safetensors; ``.pt`` / ``.pth`` / ``.bin`` files are read only through
``torch.load(weights_only=True)``, which refuses any pickle that would build objects beyond
tensors and plain containers (such a file raises :class:`~eviltwins.errors.UnsafeFileError`).

A saved model is a folder with ``model.safetensors`` and ``model.json`` (its :class:`ModelCard`).
"""

from eviltwins.base import MAX_CHANNELS, MAX_CLASSES, MAX_INPUT_VALUES, MAX_SIDE
from eviltwins.io.cards import (
    CARD_FILE,
    CARD_SCHEMA,
    WEIGHTS_FILE,
    ModelCard,
    TrustArch,
    check_trust,
)
from eviltwins.io.imports import ModelSource, check_runs, import_model, open_model
from eviltwins.io.jsonfile import MAX_JSON_BYTES, jsonable, read_json, write_json
from eviltwins.io.state import (
    MAX_HEADER_BYTES,
    load_model,
    load_state_file,
    model_from_bytes,
    model_to_bytes,
    safetensors_header,
    save_model,
    unwrap_state_dict,
)

__all__ = [
    "CARD_FILE",
    "CARD_SCHEMA",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_HEADER_BYTES",
    "MAX_INPUT_VALUES",
    "MAX_JSON_BYTES",
    "MAX_SIDE",
    "WEIGHTS_FILE",
    "ModelCard",
    "ModelSource",
    "TrustArch",
    "check_runs",
    "check_trust",
    "import_model",
    "jsonable",
    "load_model",
    "load_state_file",
    "model_from_bytes",
    "model_to_bytes",
    "open_model",
    "read_json",
    "safetensors_header",
    "save_model",
    "unwrap_state_dict",
    "write_json",
]
