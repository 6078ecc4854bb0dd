"""Models from elsewhere: a user's own weights file (``.pth`` / ``.pt`` / ``.bin`` state dict or
``.safetensors``), or a Hugging Face-style folder (``config.json`` + ``model.safetensors``, see
:mod:`eviltwins.io.hf`), with the architecture, input shape, classes and normalisation named
in this invocation (:class:`ModelSource`), checked to fit and to run before anything else uses it.

Trust lives in the invocation, never in a file: a ``package.module:ClassName`` architecture
is imported only when the caller names it here (``ModelSource.arch``, ``--arch``) or passes
``trust_arch``; a folder written by :func:`import_model` is a received folder like any other.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eviltwins.base import BOUNDED_REAL, INPUT_LIMITS, MAX_CLASSES, MAX_MAGNITUDE, input_fits
from eviltwins.data import DatasetSpec
from eviltwins.errors import DataError, ParamError
from eviltwins.io.cards import CARD_FILE, ModelCard, TrustArch
from eviltwins.io.hf import ConfigHints, config_hints, hf_weights, is_hf_folder
from eviltwins.io.state import load_model, read_card, save_model
from eviltwins.models import Classifier, is_architecture
from eviltwins.paths import why_unreadable
from eviltwins.utils import is_int, one_line

#: Flags that describe a bare weights file; a model folder's model.json sets them itself.
FILE_FLAGS = ("input_shape", "num_classes", "mean", "std", "arch_kwargs")


@dataclass(frozen=True)
class ModelSource:
    """A model as this invocation names it: ``path`` (a model folder, its ``model.json``, a
    bare weights file, or a Hugging Face-style folder: ``config.json`` + ``model.safetensors``)
    and, for a bare file or a Hugging Face folder, what its card would hold.

    ``arch``: a registered name, ``torchvision:NAME``, ``timm:NAME`` or
    ``package.module:ClassName``; naming it is what trusts a user architecture (for a model
    folder it must match the card's and trusts it). ``input_shape`` (C, H, W) and
    ``num_classes`` come from these fields, else from the dataset, else (a Hugging Face folder)
    from its checked ``config.json`` (:meth:`card`); ``mean`` / ``std`` per channel default to
    the identity (0, 1); ``arch_kwargs`` go to the architecture's constructor.
    """

    path: Path
    arch: str | None = None
    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.arch is not None and not (
            isinstance(self.arch, str) and is_architecture(self.arch)
        ):
            raise ParamError(
                f"--arch must be a registered model name ('eviltwins list models'), "
                f"torchvision:NAME, timm:NAME or package.module:ClassName; got {self.arch!r}"
            )
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if len(shape) != 3 or not all(is_int(v) and v >= 1 for v in shape):
                raise ParamError(
                    f"--input-shape must be C,H,W (three positive integers); got {self.input_shape!r}"
                )
            if not input_fits(*shape):
                raise ParamError(f"--input-shape must have {INPUT_LIMITS}; got {shape!r}"[:300])
            object.__setattr__(self, "input_shape", shape)
        if self.num_classes is not None and not (
            is_int(self.num_classes) and 2 <= self.num_classes <= MAX_CLASSES
        ):
            raise ParamError(
                f"--num-classes must be an integer in [2, {MAX_CLASSES}]; got {self.num_classes!r}"
            )
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, list | tuple) or not all(BOUNDED_REAL.ok(x) for x in v):
                    raise ParamError(
                        f"--{name} must be numbers in [-{MAX_MAGNITUDE}, {MAX_MAGNITUDE}], one "
                        f"per channel; got {v!r}"[:300]
                    )
                object.__setattr__(self, name, tuple(float(x) for x in v))
        if not isinstance(self.arch_kwargs, dict):
            raise ParamError(f"--arch-kwargs must be a mapping; got {self.arch_kwargs!r}")

    @classmethod
    def of(cls, model: str | os.PathLike[str] | ModelSource) -> ModelSource:
        """``model`` as a source (a path becomes a source with no flags)."""
        return model if isinstance(model, ModelSource) else cls(Path(model))

    @property
    def is_folder(self) -> bool:
        """True for an eviltwins model folder (or its ``model.json``), false for a bare weights
        file or a Hugging Face folder (:attr:`is_hf_folder`)."""
        return (self.path.is_dir() and not self.is_hf_folder) or self.path.name == CARD_FILE

    @property
    def is_hf_folder(self) -> bool:
        """True for a Hugging Face-style folder (``config.json`` / ``model.safetensors``, no
        ``model.json``): used like a bare weights file, with its config's hints."""
        return is_hf_folder(self.path)

    def weights_file(self) -> Path:
        """The file the weights are read from: the path itself, or a Hugging Face folder's
        ``model.safetensors`` (else ``pytorch_model.bin``)."""
        return hf_weights(self.path) if self.is_hf_folder else self.path

    def given(self) -> list[str]:
        """The bare-file flags this source sets."""
        return [n for n in FILE_FLAGS if getattr(self, n) not in (None, {})]

    def card(self, data: DatasetSpec | None = None, hints: ConfigHints | None = None) -> ModelCard:
        """The card of a bare weights file or a Hugging Face folder: the architecture, the
        input shape and classes (from the flags, else from ``data``, else from ``hints``, a
        checked ``config.json``), the normalisation (identity unless given), all checked as a
        received card's fields are (:meth:`ModelCard.from_dict`)."""
        hints = hints or ConfigHints()
        if self.arch is None:
            hf = self.is_hf_folder
            named = (
                f"its config.json names {hints.architecture!r}: --arch timm:"
                f"{hints.architecture} if it is a timm model; else "
                if hints.architecture
                else ""
            )
            raise ParamError(
                f"{self.path} is {'a Hugging Face model folder' if hf else 'a bare weights file'}"
                f": name its architecture with --arch ({named}a registered name, "
                "torchvision:NAME, timm:NAME or package.module:ClassName) and"
                f"{', unless its config.json gives it,' if hf else ''} its input with --dataset "
                "or --input-shape C,H,W --num-classes N (Python: ModelSource(path, arch=...))"
            )
        shape = self.input_shape or (data.shape if data is not None else hints.input_shape)
        n = self.num_classes or (data.num_classes if data is not None else hints.num_classes)
        if shape is None or n is None:
            raise ParamError(
                f"the input of {self.path} is unknown: pass --dataset (its shape and classes "
                "are used) or --input-shape C,H,W --num-classes N"
            )
        if data is not None and (tuple(data.shape) != tuple(shape) or data.num_classes != n):
            raise ParamError(
                f"dataset {data.name} has images of shape {tuple(data.shape)} and "
                f"{data.num_classes} classes, but the flags say {tuple(shape)} and {n}"
            )
        c = shape[0]
        raw: dict[str, Any] = {
            "architecture": self.arch,
            "input_shape": list(shape),
            "num_classes": n,
            "mean": list(self.mean) if self.mean is not None else [0.0] * c,
            "std": list(self.std) if self.std is not None else [1.0] * c,
            "arch_kwargs": dict(self.arch_kwargs),
        }
        if data is not None:
            raw["dataset"] = data.name
            raw["classes"] = list(data.classes)
            raw["dataset_options"] = dict(data.options)
        return ModelCard.from_dict(raw, "the model flags (--arch, --input-shape, --mean, ...)")


def check_runs(model: Classifier, card: ModelCard) -> None:
    """Run ``model`` on one zero image of the card's input shape: it must return finite
    logits of shape (1, num_classes). Any failure is one :class:`DataError` line."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    shape = tuple(card.input_shape)
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, device=device))
    except Exception as err:  # noqa: BLE001 - the user's own (named) model code: report, one line
        raise DataError(
            f"the model {card.architecture!r} does not run on one input of shape {shape} "
            f"(C, H, W): {one_line(err)[:200]}; check --input-shape and --arch-kwargs"
        ) from None
    want = (1, card.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(
            f"the model {card.architecture!r} returns {got} for one input of shape {shape}, "
            f"not logits of shape {want}; check --num-classes"
        )
    if not bool(torch.isfinite(out).all()):
        raise DataError(f"the model {card.architecture!r} returns NaN or inf on a zero image")


def open_model(
    source: str | os.PathLike[str] | ModelSource,
    device: str | torch.device = "cpu",
    *,
    trust_arch: TrustArch = (),
    data: DatasetSpec | None = None,
) -> tuple[Classifier, ModelCard]:
    """Load the model ``source`` names: a model folder (checked as received, see
    :func:`~eviltwins.io.load_model`; ``source.arch`` must match its card and trusts that
    architecture), or a bare weights file with the card :meth:`ModelSource.card` builds
    (from the flags, else ``data``'s shape and classes), checked to fit and to run."""
    src = ModelSource.of(source)
    trust: TrustArch = trust_arch
    if src.arch is not None and trust is not True:
        named = (trust,) if isinstance(trust, str) else tuple(trust or ())
        trust = (*named, src.arch)
    if src.is_folder:
        if src.given():
            flags = ", ".join("--" + n.replace("_", "-") for n in src.given())
            raise ParamError(
                f"{flags} describe a bare weights file; {src.path} is a model folder whose "
                f"{CARD_FILE} sets them (pass only --arch, to trust its architecture)"
            )
        card = read_card(src.path)
        if src.arch is not None and src.arch != card.architecture:
            raise ParamError(
                f"--arch {src.arch} does not match the model folder {src.path}, whose card "
                f"names {card.architecture!r}"
            )
        return load_model(src.path, device, card, trust_arch=trust)
    if src.is_hf_folder:
        weights = src.weights_file()
        card = src.card(data, config_hints(src.path))
    else:
        reason = why_unreadable(src.path)
        if reason is not None:
            raise DataError(
                f"model {src.path} {reason}; pass a model folder (written by 'eviltwins train', "
                "'attack' or 'import-model') or a weights file with --arch"
            )
        weights, card = src.path, src.card(data)
    model, card = load_model(weights, device, card=card, trust_arch=trust)
    check_runs(model, card)
    return model, card


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_model(
    source: ModelSource,
    out: str | os.PathLike[str],
    *,
    data: DatasetSpec | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Classifier, ModelCard]:
    """Check the bare weights file (or Hugging Face folder) ``source`` (fits its architecture,
    runs on one input) and write it as a model folder ``out`` (``model.safetensors`` +
    ``model.json``, the weights' SHA-256 recorded in the card's ``training``). Returns the
    model and its card."""
    if source.is_folder:
        raise ParamError(f"{source.path} is already a model folder; pass a weights file")
    model, card = open_model(source, device, data=data)
    weights = source.weights_file()
    name = f"{source.path.name}/{weights.name}" if weights != source.path else weights.name
    record = {"imported_from": name, "sha256": file_digest(weights)}
    card = ModelCard.from_dict({**card.to_dict(), "training": record}, "the imported card")
    save_model(model, card, out)
    return model, card
