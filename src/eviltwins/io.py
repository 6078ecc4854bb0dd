"""Safe persistence of models and results.

A backdoor scanner loads untrusted models, so nothing here unpickles arbitrary objects:
weights are written with safetensors; ``.pt`` / ``.pth`` / ``.bin`` files are read only through
``torch.load(weights_only=True)``, which refuses any pickle that would build objects beyond
tensors and plain containers (such a file raises :class:`~eviltwins.errors.UnsafeFileError`).

A saved model is a folder with ``model.safetensors`` and ``model.json`` (its :class:`ModelCard`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from eviltwins.errors import DataError, ParamError, UnsafeFileError
from eviltwins.models import MODELS, Classifier, build_model, is_keyword_mapping, is_user_model
from eviltwins.paths import publish_mode, readable_file, why_unreadable
from eviltwins.utils import first_nonfinite

CARD_SCHEMA = "eviltwins.model/1"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"

#: Limits on what a received model card may ask for (far above any image classifier's needs).
MAX_CHANNELS = 64
MAX_SIDE = 8192
MAX_INPUT_VALUES = 2**24
MAX_CLASSES = 100_000
#: Largest safetensors JSON header read (the format's own reference limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000

#: How a caller says which user architectures (``package.module:ClassName``) a received model
#: card may name: one spec, several, or ``True`` for whatever the card names.
TrustArch = bool | str | Sequence[str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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
            raise bad("architecture", "a registered model name or package.module:ClassName")
        if not (is_user_model(arch) or arch in MODELS):
            raise DataError(
                f"{source} names the unknown architecture {_short(arch)}; registered: "
                f"{', '.join(MODELS.names())}"
            )
        shape = d["input_shape"]
        if not (
            isinstance(shape, list | tuple)
            and len(shape) == 3
            and all(_is_int(v) and v >= 1 for v in shape)
        ):
            raise bad("input_shape", "[channels, height, width] of positive integers")
        c, h, w = shape
        if c > MAX_CHANNELS or max(h, w) > MAX_SIDE or c * h * w > MAX_INPUT_VALUES:
            raise bad(
                "input_shape",
                f"at most {MAX_CHANNELS} channels, {MAX_SIDE} pixels a side and "
                f"{MAX_INPUT_VALUES:,} values",
            )
        n = d["num_classes"]
        if not (_is_int(n) and 2 <= n <= MAX_CLASSES):
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
        for name in ("arch_kwargs", "metrics", "training", "versions", "extra"):
            if not isinstance(d.get(name, {}), dict):
                raise bad(name, "a JSON object")
        if not is_keyword_mapping(d.get("arch_kwargs", {})):
            raise bad("arch_kwargs", "an object whose keys are parameter names")
        seed = d.get("seed")
        if seed is not None and not _is_int(seed):
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


def jsonable(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None``: JSON has no NaN or inf, and a
    file holding a bare ``NaN`` is not valid JSON for other readers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(v) for v in data]
    return data


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write valid JSON atomically (temp file + rename): a crash never leaves half a file.
    Non-finite floats are written as ``null`` (see :func:`jsonable`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(jsonable(data), fh, indent=2, sort_keys=False, allow_nan=False)
            fh.write("\n")
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Largest JSON file read (model cards, reports, cells are a few kB).
MAX_JSON_BYTES = 64_000_000


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable, oversized or malformed file is one
    :class:`DataError` line. ``NaN``/``Infinity`` literals are refused (not JSON)."""
    path = readable_file(path, what)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{what} {path} is over {MAX_JSON_BYTES // 10**6} MB; not a {what}")
        return json.loads(path.read_bytes(), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as err:
        msg = " ".join(str(err).split())[:120]
        raise DataError(f"{what} {path} is not valid JSON: {msg}") from None
    except OSError as err:
        raise DataError(f"{what} {path} cannot be read ({err.strerror or err})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def save_model(model: nn.Module, card: ModelCard, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (created); returns it.

    A model with non-finite weights is refused (:class:`DataError`): it is broken, and saving
    it would hand a NaN model on as if it were trained.
    """
    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _check_finite(state, "the model to save")
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"schema": CARD_SCHEMA})
        publish_mode(tmp)
        os.replace(tmp, out / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json(out / CARD_FILE, card.to_dict())
    return out


def _check_finite(state: dict[str, torch.Tensor], source: Any) -> None:
    name = first_nonfinite(state.items())
    if name is not None:
        raise DataError(
            f"{source} holds NaN or inf values (tensor {name!r}): the model is broken "
            "(training diverged?); retrain it"
        )


_SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def safetensors_header(
    data: str | os.PathLike[str] | bytes,
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Tensor names and shapes, and the metadata, from a safetensors file's (or blob's) JSON
    header, with every tensor's byte range checked against the data's real size: nothing is
    allocated from what the header declares. Raises :class:`DataError` for anything that is
    not safetensors."""
    if isinstance(data, bytes):
        return _parse_header("the model blob", len(data), data[:8], lambda n: data[8 : 8 + n])
    with open(data, "rb") as fh:
        return _parse_header(str(data), os.path.getsize(data), fh.read(8), fh.read)


def _parse_header(
    name: str, size: int, head: bytes, read: Callable[[int], bytes]
) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """:func:`safetensors_header` on ``size`` bytes whose first 8 are ``head`` (``read(n)``
    gives the next ``n``)."""
    if len(head) < 8:
        raise DataError(f"{name} is not a safetensors file (shorter than its header)")
    (n,) = struct.unpack("<Q", head)
    if n > min(MAX_HEADER_BYTES, size - 8):
        raise DataError(f"{name} is not a safetensors file (header length {n} out of range)")
    raw = read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise DataError(f"{name} is not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise DataError(f"{name} is not a safetensors file (header is not an object)")
    shapes: dict[str, tuple[int, ...]] = {}
    body = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            width = _SAFETENSORS_DTYPES[info["dtype"]]
            ok = all(_is_int(v) and v >= 0 for v in (*shape, begin, end))
            ok = ok and 0 <= begin <= end <= body and end - begin == width * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{name} is not a valid safetensors file (tensor {_short(key)})")
        shapes[key] = shape
    meta = header.get("__metadata__") or {}
    return shapes, meta if isinstance(meta, dict) else {}


def load_state_file(
    path: str | os.PathLike[str],
    check_shapes: Callable[[dict[str, tuple[int, ...]]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Read a state dict safely: safetensors, or ``torch.load(weights_only=True)`` for .pt/.pth.

    A pickle that would build arbitrary objects (and so could run code) is refused with
    :class:`UnsafeFileError`; nothing in it is executed. ``check_shapes`` sees the tensor
    shapes first: for safetensors, from the header, before any tensor is read.
    """
    path = readable_file(path, "weights file")
    if path.suffix == ".safetensors":
        shapes, _ = safetensors_header(path)  # header and byte ranges checked first
        if check_shapes is not None:
            check_shapes(shapes)
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
        except Exception as err:  # noqa: BLE001 - weights_only parsing ran no code; any failure
            # of the restricted unpickler (IndexError, KeyError, ...) means an unreadable file
            msg = " ".join(str(err).split())[:160] or type(err).__name__
            raise DataError(f"{path} is not a readable PyTorch weights file: {msg}") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise DataError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
        if check_shapes is not None:
            check_shapes({k: tuple(v.shape) for k, v in obj.items()})
        return obj
    raise ParamError(
        f"unsupported weights file {path.name!r}; use .safetensors (or .pt/.pth state_dicts)"
    )


def _target_of(model: nn.Module, names: Any) -> nn.Module:
    """The module a state dict with these keys belongs to: the :class:`Classifier` itself, or
    its bare network when no key carries the wrapper's ``net.`` prefix."""
    if isinstance(model, Classifier) and not any(str(k).startswith("net.") for k in names):
        return model.net
    return model


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        _target_of(model, state).load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = " ".join(str(err).split())
        raise DataError(f"weights in {source} do not fit the architecture: {msg[:300]}") from None


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
            f"name it: --trust-arch {arch} (API: trust_arch={arch!r})"
        )


def _check_fit(card: ModelCard, shapes: dict[str, tuple[int, ...]], source: Any) -> None:
    """Compare the card's architecture, built on the ``meta`` device (no memory), with the
    weights' tensor shapes: a card whose sizes do not match its weights is refused before any
    real allocation."""
    try:
        with torch.device("meta"):
            skeleton = card.build(download=False)
    except (ParamError, DataError) as err:
        raise DataError(f"{source}: the card's architecture cannot be built: {err}") from None
    expected = {k: tuple(v.shape) for k, v in _target_of(skeleton, shapes).state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        which = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise DataError(
            f"weights in {source} do not fit the card's {card.architecture!r} "
            f"({len(missing)} missing, {len(extra)} unexpected tensors; {which})"
        )
    for k, shape in expected.items():
        if shapes[k] != shape:
            raise DataError(
                f"weights in {source} do not fit the card ({card.architecture!r}, input "
                f"{list(card.input_shape)}, {card.num_classes} classes): {k!r} is "
                f"{list(shapes[k])} in the weights but {list(shape)} in the card's model"
            )


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    card: ModelCard | None = None,
    *,
    trust_arch: TrustArch = (),
) -> tuple[Classifier, ModelCard]:
    """Load a saved model: a folder (or its ``model.json``) written by :func:`save_model`, or a
    weights file (.safetensors / .pt state_dict) together with an explicit ``card``.

    A received folder is checked before anything is built: the card's fields (types and
    limits), then its architecture against ``trust_arch`` (a ``package.module:ClassName``
    architecture is imported only when the caller names it here, or passes ``True``), then
    the card's sizes against the weights' tensor shapes (from the safetensors header), then
    the weights for NaN/inf. Returns the model in eval mode on ``device``, and its card.
    """
    path = Path(path)
    if path.is_dir() or path.name == CARD_FILE:
        folder = path if path.is_dir() else path.parent
        if not (folder / CARD_FILE).exists() and not (folder / CARD_FILE).is_symlink():
            raise DataError(
                f"{folder} holds no {CARD_FILE}; pass a folder written by 'eviltwins train' "
                "or 'eviltwins attack'"
            )
        source = folder / CARD_FILE
        card = card or ModelCard.from_dict(read_json(source, "model card"), f"model card {source}")
        weights = folder / WEIGHTS_FILE
    else:
        reason = why_unreadable(path)
        if reason is not None:
            raise DataError(
                f"model {path} {reason}; pass a folder written by 'eviltwins train' or "
                "'eviltwins attack'"
            )
        if card is None:
            raise ParamError(
                f"{path} is a bare weights file; load it from Python with "
                "load_model(path, card=ModelCard(...)) or save it as a model folder"
            )
        source = path
        weights = path
    check_trust(card, trust_arch, f"model card {source}")
    state = load_state_file(weights, lambda shapes: _check_fit(card, shapes, weights))
    return _built(card, state, weights, device), card


def _built(
    card: ModelCard, state: dict[str, torch.Tensor], source: Path, device: str | torch.device
) -> Classifier:
    """The card's architecture with ``state`` loaded, on ``device``, in eval mode (weights
    with NaN or inf are refused)."""
    _check_finite(state, f"weights in {source}")
    model = card.build(download=False)
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
    blob: bytes, device: str | torch.device = "cpu", *, trust_arch: TrustArch = ()
) -> tuple[Classifier, ModelCard]:
    """Inverse of :func:`model_to_bytes` (safetensors only: nothing is unpickled), with the
    checks of :func:`load_model` (card fields, ``trust_arch``, sizes, finite weights)."""
    from safetensors.torch import load

    shapes, meta = safetensors_header(blob)
    if not isinstance(meta.get("card"), str):
        raise DataError("the model blob carries no model card")
    try:
        raw = json.loads(meta["card"], parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError, RecursionError):
        raise DataError("the model blob's card is not valid JSON") from None
    card = ModelCard.from_dict(raw, "the model blob's card")
    check_trust(card, trust_arch, "the model blob's card")
    _check_fit(card, shapes, "<bytes>")
    try:
        state = load(blob)
    except SafetensorError as err:
        raise DataError(f"the model blob is not readable safetensors: {err}") from None
    return _built(card, state, Path("<bytes>"), device), card
