"""Model cards: what is needed to rebuild a saved model (architecture, input shape, classes,
normalisation), checked field by field when a card is received, and which user architectures
a caller trusts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from eviltwins.base import INPUT_LIMITS, MAX_CLASSES, input_fits
from eviltwins.errors import DataError, UnsafeFileError
from eviltwins.models import (
    MODELS,
    Classifier,
    build_model,
    is_architecture,
    is_keyword_mapping,
    is_user_model,
)
from eviltwins.utils import is_int, is_real

CARD_SCHEMA = "eviltwins.model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"

# A received model card may ask for at most MAX_CHANNELS, MAX_SIDE, MAX_INPUT_VALUES and
# MAX_CLASSES (eviltwins.base, their one home; far above any image classifier's needs).

#: How a caller says which user architectures (``package.module:ClassName``) a received model
#: card may name: one spec, several, or ``True`` for whatever the card names.
TrustArch = bool | str | Sequence[str]


def _is_finite_number(v: Any) -> bool:
    try:
        return is_real(v) and math.isfinite(v)
    except OverflowError:  # an int past any float
        return False


def _jtype(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(v), "a number"
    )


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


@dataclass(frozen=True)
class ModelCard:
    """What is needed to rebuild a saved model, plus how it was made and how well it does."""

    architecture: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str = ""
    classes: tuple[str, ...] = ()
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the options that rebuild ``dataset`` (``image_size``, ``channels``, ``normalize``)
    dataset_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"], d["classes"] = list(self.mean), list(self.std), list(self.classes)
        return {"schema": CARD_SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = "model card") -> ModelCard:
        """A card from its JSON form, every field checked for type and range first.

        A card arrives with a model from anyone: a wrong type, an unknown field or an absurd
        size (``input_shape``, ``num_classes``) is one :class:`DataError` line, and nothing is
        imported or allocated here (:func:`load_model` checks the card against the weights'
        tensor shapes before it builds anything).
        """
        if not isinstance(d, dict):
            raise DataError(f"{source} must be a JSON object; got {_jtype(d)}")
        d = dict(d)
        schema = d.pop("schema", CARD_SCHEMA)
        if schema != CARD_SCHEMA:
            raise DataError(f"{source} has schema {_short(schema)}, not {CARD_SCHEMA!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise DataError(f"{source} has unknown field {_short(unknown[0])}")
        for name in ("architecture", "input_shape", "num_classes", "mean", "std"):
            if name not in d:
                raise DataError(f"{source} is missing the field {name!r}")

        def bad(name: str, rule: str) -> DataError:
            return DataError(f"{source}: {name!r} must be {rule}; got {_short(d[name])}")

        arch = d["architecture"]
        if not isinstance(arch, str) or not arch or len(arch) > 200:
            raise bad(
                "architecture",
                "a registered model name, torchvision:NAME, timm:NAME or package.module:ClassName",
            )
        if not is_architecture(arch):
            raise DataError(
                f"{source} names the unknown architecture {_short(arch)}; registered: "
                f"{', '.join(MODELS.names())} (or torchvision:NAME, timm:NAME, package.module:ClassName)"
            )
        shape = d["input_shape"]
        if not (
            isinstance(shape, list | tuple)
            and len(shape) == 3
            and all(is_int(v) and v >= 1 for v in shape)
        ):
            raise bad("input_shape", "[channels, height, width] of positive integers")
        c, h, w = shape
        if not input_fits(c, h, w):
            raise bad("input_shape", INPUT_LIMITS)
        n = d["num_classes"]
        if not (is_int(n) and 2 <= n <= MAX_CLASSES):
            raise bad("num_classes", f"an integer in [2, {MAX_CLASSES:,}]")
        for name in ("mean", "std"):
            v = d[name]
            if not (
                isinstance(v, list | tuple) and len(v) == c and all(_is_finite_number(x) for x in v)
            ):
                raise bad(name, f"a list of {c} finite numbers (one per channel)")
        if any(x <= 0 for x in d["std"]):
            raise bad("std", "positive")
        if not isinstance(d.get("dataset", ""), str):
            raise bad("dataset", "a string")
        classes = d.get("classes", [])
        if not (
            isinstance(classes, list | tuple)
            and len(classes) in (0, n)
            and all(isinstance(x, str) for x in classes)
        ):
            raise bad("classes", f"a list of {n} class names")
        for name in ("arch_kwargs", "metrics", "training", "versions", "extra", "dataset_options"):
            if not isinstance(d.get(name, {}), dict):
                raise bad(name, "a JSON object")
        if not is_keyword_mapping(d.get("arch_kwargs", {})):
            raise bad("arch_kwargs", "an object whose keys are parameter names")
        options = d.get("dataset_options", {})
        if not is_keyword_mapping(options) or not all(
            v is None or isinstance(v, str | bool) or _is_finite_number(v) for v in options.values()
        ):
            raise bad("dataset_options", "an object of option names and scalar values")
        seed = d.get("seed")
        if seed is not None and not is_int(seed):
            raise bad("seed", "an integer or null")
        return cls(
            **{
                **d,
                "input_shape": (int(c), int(h), int(w)),
                "num_classes": int(n),
                "mean": tuple(float(x) for x in d["mean"]),
                "std": tuple(float(x) for x in d["std"]),
                "classes": tuple(classes),
            }
        )

    def build(self, *, download: bool = True) -> Classifier:
        """An untrained model of this card's architecture.

        ``download=False`` builds it without pretrained weights even where ``arch_kwargs`` ask
        for them (``pretrained: true``): the architecture is the same, and when a weights file
        supplies every parameter (:func:`load_model`) a received card must not make eviltwins
        reach the network or write a download cache.
        """
        kwargs = dict(self.arch_kwargs)
        if not download and "pretrained" in kwargs:
            kwargs["pretrained"] = False
        return build_model(
            self.architecture, self.input_shape, self.num_classes, self.mean, self.std, **kwargs
        )


def _trusted(spec: str, trust_arch: TrustArch) -> bool:
    if trust_arch is True:
        return True
    if not trust_arch:
        return False
    allowed = {trust_arch} if isinstance(trust_arch, str) else set(trust_arch)
    return spec in allowed


def check_trust(card: ModelCard, trust_arch: TrustArch, source: Any) -> None:
    """Refuse a card naming a user architecture (``package.module:ClassName``) that the caller
    did not name: building it would import that module and run its code. Registered
    architectures need no trust. Nothing is imported here."""
    arch = card.architecture
    if is_user_model(arch) and not _trusted(arch, trust_arch):
        module = arch.split(":")[0]
        raise UnsafeFileError(
            f"{source} names the user architecture {arch!r}: building it would import and run "
            f"the module {module!r}, so nothing was imported. If you trust this model's source, "
            f"name it again in this command (trust is never read from a file): --arch {arch} "
            f"or --trust-arch {arch} (API: ModelSource(path, arch={arch!r}))"
        )
