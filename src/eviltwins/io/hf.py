"""Hugging Face-style model folders: ``config.json`` + ``model.safetensors`` as
``save_pretrained`` writes them (timm, transformers), opened with the architecture named in the
invocation.

Only ``model.safetensors`` is read for weights (``pytorch_model.bin`` only through
``torch.load(weights_only=True)``, when no safetensors file is there); ``config.json`` only for
hints at the classes and input shape, each value type-checked and bounded before use. The
config never names the architecture that is built, and never sizes an allocation unchecked.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eviltwins.base import INPUT_LIMITS, MAX_CLASSES, input_fits
from eviltwins.errors import DataError
from eviltwins.io.cards import CARD_FILE, _jtype, _short
from eviltwins.io.jsonfile import read_json
from eviltwins.utils import is_int

HF_CONFIG = "config.json"
#: The weights files of a folder, in order of preference (safetensors first: no pickle at all).
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_SHARDED = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: The config keys that may say how many classes the model has.
CLASS_KEYS = ("num_classes", "num_labels", "id2label", "label_names")
_ARCH_NAME = re.compile(r"^[A-Za-z_]\w{0,99}$")


def _there(path: Path) -> bool:
    return os.path.lexists(path)


def is_hf_folder(path: Path) -> bool:
    """True for a folder without eviltwins' ``model.json`` that holds ``config.json`` or a
    Hugging Face weights file (``model.safetensors``, ``pytorch_model.bin``)."""
    if not path.is_dir() or _there(path / CARD_FILE):
        return False
    return any(_there(path / n) for n in (HF_CONFIG, *HF_WEIGHTS, *HF_SHARDED))


def hf_weights(folder: Path) -> Path:
    """The weights file of a Hugging Face folder: ``model.safetensors``, else
    ``pytorch_model.bin``; a sharded checkpoint or a folder with neither is one line."""
    for name in HF_WEIGHTS:
        if _there(folder / name):
            return folder / name
    for name in HF_SHARDED:
        if _there(folder / name):
            raise DataError(
                f"{folder} holds a sharded checkpoint ({name}); merge the shards into one "
                "model.safetensors (save_pretrained(..., max_shard_size='100GB'))"
            )
    raise DataError(
        f"{folder} holds no model.safetensors (nor pytorch_model.bin, nor eviltwins' "
        f"{CARD_FILE}); pass a model folder or a weights file"
    )


@dataclass(frozen=True)
class ConfigHints:
    """What a ``config.json`` says about the model's input and classes (checked values), and
    its ``architecture`` name when it is a plain name (only echoed in an error's hint)."""

    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    architecture: str | None = None


def config_hints(folder: Path) -> ConfigHints:
    """The hints in ``folder/config.json`` (none without one). A value of the wrong type or out
    of bounds, or class counts that disagree, is one :class:`DataError` line: the file is
    refused, not half-used. Other keys are ignored."""
    path = folder / HF_CONFIG
    if not _there(path):
        return ConfigHints()
    raw = read_json(path, "config.json")  # bounded size; NaN / Infinity refused
    if not isinstance(raw, dict):
        raise DataError(f"{path} must be a JSON object; got {_jtype(raw)}")

    def bad(key: str, value: Any, rule: str) -> DataError:
        return DataError(f"{path}: {key!r} must be {rule}; got {_short(value)}")

    counts = {key: _count(raw[key], key, bad) for key in CLASS_KEYS if key in raw}
    if len(set(counts.values())) > 1:
        said = ", ".join(f"{k} {n}" for k, n in counts.items())
        raise DataError(f"{path} disagrees about the number of classes ({said}); fix the file")
    shape = None
    cfg = raw.get("pretrained_cfg")
    if cfg is not None:
        if not isinstance(cfg, dict):
            raise bad("pretrained_cfg", cfg, "an object")
        size = cfg.get("input_size")
        if size is not None:
            if not (
                isinstance(size, list)
                and len(size) == 3
                and all(is_int(v) and v >= 1 for v in size)
                and input_fits(*size)
            ):
                raise bad("pretrained_cfg.input_size", size, f"[C, H, W] with {INPUT_LIMITS}")
            shape = (int(size[0]), int(size[1]), int(size[2]))
    arch = raw.get("architecture")
    name = arch if isinstance(arch, str) and _ARCH_NAME.match(arch) else None
    return ConfigHints(next(iter(counts.values()), None), shape, name)


def _count(value: Any, key: str, bad: Any) -> int:
    """The number of classes one config key gives, checked (its size before its items)."""
    rule = f"an integer in [2, {MAX_CLASSES:,}]"
    if key in ("num_classes", "num_labels"):
        if not (is_int(value) and 2 <= value <= MAX_CLASSES):
            raise bad(key, value, rule)
        return int(value)
    kind = dict if key == "id2label" else list
    if not (isinstance(value, kind) and 2 <= len(value) <= MAX_CLASSES):
        what = "an object" if kind is dict else "a list"
        raise bad(key, value, f"{what} of 2 to {MAX_CLASSES:,} class names")
    names = list(value.values()) if isinstance(value, dict) else value
    if not all(isinstance(v, str) for v in names):
        raise bad(key, value, "class names (strings)")
    if isinstance(value, dict) and set(value) != {str(i) for i in range(len(value))}:
        raise bad(key, value, f"keyed '0'..'{len(value) - 1}'")
    return len(value)
