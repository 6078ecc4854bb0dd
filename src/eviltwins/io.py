"""Safe persistence of models and results.

A backdoor scanner loads untrusted models, so nothing here unpickles arbitrary objects:
weights are written with safetensors; ``.pt`` / ``.pth`` / ``.bin`` files are read only through
``torch.load(weights_only=True)``, which refuses any pickle that would build objects beyond
tensors and plain containers (such a file raises :class:`~eviltwins.errors.UnsafeFileError`).

A saved model is a folder with ``model.safetensors`` and ``model.json`` (its :class:`ModelCard`).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from eviltwins.errors import DataError, ParamError, UnsafeFileError
from eviltwins.models import Classifier, build_model

CARD_SCHEMA = "eviltwins.model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"], d["classes"] = list(self.mean), list(self.std), list(self.classes)
        return {"schema": CARD_SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        d = dict(d)
        schema = d.pop("schema", CARD_SCHEMA)
        if schema != CARD_SCHEMA:
            raise DataError(f"model card schema {schema!r} is not {CARD_SCHEMA!r}")
        try:
            return cls(
                **{
                    **d,
                    "input_shape": tuple(d["input_shape"]),
                    "mean": tuple(d["mean"]),
                    "std": tuple(d["std"]),
                    "classes": tuple(d.get("classes", ())),
                }
            )
        except (KeyError, TypeError) as err:
            raise DataError(f"model card is missing or has unknown fields: {err}") from None

    def build(self) -> Classifier:
        """An untrained model of this card's architecture."""
        return build_model(
            self.architecture,
            self.input_shape,
            self.num_classes,
            self.mean,
            self.std,
            **self.arch_kwargs,
        )


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} is not valid JSON: {err}") from None


def save_model(model: nn.Module, card: ModelCard, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (created); returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"schema": CARD_SCHEMA})
        os.replace(tmp, out / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json(out / CARD_FILE, card.to_dict())
    return out


def load_state_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict safely: safetensors, or ``torch.load(weights_only=True)`` for .pt/.pth.

    A pickle that would build arbitrary objects (and so could run code) is refused with
    :class:`UnsafeFileError`; nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise DataError(f"{path} is not a readable safetensors file: {err}") from None
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "unsafe pickle"
            raise UnsafeFileError(
                f"refused to load {path}: it holds pickled objects beyond tensors, which could run "
                f"code ({first[:160]}); re-save its state_dict as safetensors in a trusted "
                "environment"
            ) from None
        except (RuntimeError, OSError, EOFError) as err:
            raise DataError(f"{path} is not a readable PyTorch weights file: {err}") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise DataError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
        return obj
    raise ParamError(
        f"unsupported weights file {path.name!r}; use .safetensors (or .pt/.pth state_dicts)"
    )


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    # Accept both wrapped (normalize./net.) and bare network state dicts.
    target = model
    if isinstance(model, Classifier) and not any(k.startswith("net.") for k in state):
        target = model.net
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = " ".join(str(err).split())
        raise DataError(f"weights in {source} do not fit the architecture: {msg[:300]}") from None


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    card: ModelCard | None = None,
) -> tuple[Classifier, ModelCard]:
    """Load a saved model: a folder (or its ``model.json``) written by :func:`save_model`, or a
    weights file (.safetensors / .pt state_dict) together with an explicit ``card``.

    Returns the model in eval mode on ``device``, and its card.
    """
    path = Path(path)
    if path.is_dir() or path.name == CARD_FILE:
        folder = path if path.is_dir() else path.parent
        if not (folder / CARD_FILE).is_file():
            raise DataError(
                f"{folder} holds no {CARD_FILE}; pass a folder written by 'eviltwins train' "
                "or a weights file with --arch"
            )
        card = card or ModelCard.from_dict(read_json(folder / CARD_FILE, "model card"))
        weights = folder / WEIGHTS_FILE
    else:
        if not path.exists():
            raise DataError(
                f"model {path} does not exist; pass a folder written by 'eviltwins train'"
            )
        if card is None:
            raise ParamError(
                f"{path} is a bare weights file; also give its architecture (--arch) and dataset"
            )
        weights = path
    return _built(card, load_state_file(weights), weights, device), card


def _built(
    card: ModelCard, state: dict[str, torch.Tensor], source: Path, device: str | torch.device
) -> Classifier:
    """The card's architecture with ``state`` loaded, on ``device``, in eval mode."""
    model = card.build()
    _load_into(model, state, source)
    model.to(device)
    model.eval()
    return model


def model_to_bytes(model: nn.Module, card: ModelCard) -> bytes:
    """One safetensors blob holding the weights and (as metadata) the card: how models travel
    between the sweep driver and its workers (processes or Ray nodes) without pickle."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"schema": CARD_SCHEMA, "card": json.dumps(card.to_dict())})


def model_from_bytes(
    blob: bytes, device: str | torch.device = "cpu"
) -> tuple[Classifier, ModelCard]:
    """Inverse of :func:`model_to_bytes` (safetensors only: nothing is unpickled)."""
    from safetensors.torch import load

    state = load(blob)
    # safetensors layout: 8-byte little-endian header length, then the JSON header
    header_len = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})
    if "card" not in meta:
        raise DataError("the model blob carries no model card")
    card = ModelCard.from_dict(json.loads(meta["card"]))
    return _built(card, state, Path("<bytes>"), device), card
