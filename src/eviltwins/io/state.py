"""Safe persistence of model weights: safetensors (or ``torch.load(weights_only=True)`` for
``.pt`` state dicts), with every received header, card and tensor checked before anything is
built or allocated."""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from eviltwins.errors import DataError, ParamError
from eviltwins.io.cards import (
    CARD_FILE,
    CARD_SCHEMA,
    WEIGHTS_FILE,
    ModelCard,
    TrustArch,
    _short,
    check_trust,
)
from eviltwins.io.jsonfile import read_json, refuse_constant, write_json
from eviltwins.io.pickles import refusal
from eviltwins.models import Classifier
from eviltwins.paths import publish_mode, readable_file, why_unreadable
from eviltwins.safetensors_header import DTYPE_SIZES, HeaderProblem, read_header
from eviltwins.utils import first_nonfinite, is_int

#: Largest safetensors JSON header read (the format's own reference limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


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
    if size == 0:
        raise DataError(f"{name} is empty (0 bytes); pass a safetensors file")
    try:
        header, n = read_header(head, read, size, MAX_HEADER_BYTES)
    except HeaderProblem as err:
        raise DataError(
            f"{name} is not a safetensors file, or is corrupt or truncated ({err})"
        ) from None
    shapes: dict[str, tuple[int, ...]] = {}
    body = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            width = DTYPE_SIZES[info["dtype"]]
            ok = all(is_int(v) and v >= 0 for v in (*shape, begin, end))
            ok = ok and 0 <= begin <= end and end - begin == width * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{name} is not a valid safetensors file (tensor {_short(key)})")
        if end > body:  # a well-formed entry whose bytes lie past the end of the file
            raise DataError(
                f"{name} is not a valid safetensors file: truncated or corrupt (tensor "
                f"{_short(key)} ends at byte {8 + n + end:,} but the file holds {size:,} "
                "bytes); replace the file"
            )
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
    shapes first: for safetensors, from the header, before any tensor is read. When the keys
    as stored do not pass it but do once a prefix every key shares is removed (``model.``,
    ``timm_model.``, as Hugging Face wrappers save them), that prefix is removed.
    """
    path = readable_file(path, "weights file")
    if path.suffix == ".safetensors":
        shapes, _ = safetensors_header(path)  # header and byte ranges checked first
        shapes = _strip_prefix(shapes)
        prefix = _fitting_prefix(shapes, check_shapes)
        try:
            return _without(_strip_prefix(load_file(str(path))), prefix)
        except (SafetensorError, OSError) as err:
            raise DataError(f"{path} is not a readable safetensors file: {err}") from None
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        obj = _torch_load(path)
        obj = unwrap_state_dict(obj, path)
        prefix = _fitting_prefix({k: tuple(v.shape) for k, v in obj.items()}, check_shapes)
        return _without(obj, prefix)
    raise ParamError(
        f"unsupported weights file {path.name!r}; use .safetensors (or .pt/.pth state_dicts)"
    )


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; a refused file is one line naming the
    real cause (:func:`~eviltwins.io.pickles.refusal`, which reads it without running it), and
    the warnings torch gives while refusing it are dropped (those of a file it accepts are
    passed on)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - weights_only parsing runs no code; any failure
            # of the restricted unpickler (UnpicklingError, EOFError, RuntimeError, ...) is a
            # refusal whose cause is read from the file itself
            refused: BaseException | None = err
        else:
            refused = None
    if refused is not None:
        raise refusal(path, refused) from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return obj


#: Keys under which training scripts commonly save the state dict inside a checkpoint.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "state")
#: The prefix ``nn.DataParallel`` / ``DistributedDataParallel`` put on every key.
PARALLEL_PREFIX = "module."


def _is_state(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the ``module.`` prefix DataParallel puts on every key (when every
    key has it)."""
    if state and all(k.startswith(PARALLEL_PREFIX) for k in state):
        return {k[len(PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


#: How many leading dotted names a state dict's common prefix may hold (``model.timm_model.``).
MAX_PREFIX_DEPTH = 3


def _common_prefixes(keys: list[str]) -> list[str]:
    """``""``, then each longer dotted prefix that every key has (and goes on past)."""
    found = [""]
    while keys and len(found) <= MAX_PREFIX_DEPTH:
        head = keys[0][len(found[-1]) :].split(".", 1)[0]
        cand = f"{found[-1]}{head}."
        if not all(k.startswith(cand) and len(k) > len(cand) for k in keys):
            break
        found.append(cand)
    return found


def _fitting_prefix(
    shapes: dict[str, tuple[int, ...]],
    check_shapes: Callable[[dict[str, tuple[int, ...]]], None] | None,
) -> str:
    """The common key prefix to remove: none when the keys pass ``check_shapes`` as they are,
    else the shortest whose removal makes them pass; when none does, the check's error for
    the keys as stored."""
    if check_shapes is None:
        return ""
    refused: DataError | None = None
    for prefix in _common_prefixes(list(shapes)):
        try:
            check_shapes(_without(shapes, prefix))
        except DataError as err:
            refused = refused or err
        else:
            return prefix
    assert refused is not None
    raise refused


def _without(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items()} if prefix else state


def unwrap_state_dict(obj: Any, source: Any) -> dict[str, torch.Tensor]:
    """The state dict in what ``torch.load(weights_only=True)`` returned: the mapping itself,
    or the one under a checkpoint's ``state_dict`` / ``model_state_dict`` / ``model`` /
    ``net`` / ``state`` key; without DataParallel's ``module.`` prefix. Anything else is one
    :class:`DataError` line."""
    if isinstance(obj, dict) and not _is_state(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if _is_state(obj.get(k))), None)
        if inner is not None:
            obj = inner
    if not _is_state(obj):
        keys = ", ".join(repr(k) for k in list(obj)[:5]) if isinstance(obj, dict) else ""
        held = f" (a mapping with keys {keys})" if keys else f" (a {type(obj).__name__})"
        raise DataError(
            f"{source} does not hold a state_dict (a mapping of names to tensors){held}; save "
            "it with torch.save(model.state_dict(), path)"
        )
    return _strip_prefix(obj)


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


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """The checked :class:`ModelCard` of a model folder (or its ``model.json``); nothing is
    imported or built."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    source = folder / CARD_FILE
    if not source.exists() and not source.is_symlink():
        raise DataError(
            f"{folder} holds no {CARD_FILE}; pass a folder written by 'eviltwins train' "
            "or 'eviltwins attack'"
        )
    return ModelCard.from_dict(read_json(source, "model card"), f"model card {source}")


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
        source = folder / CARD_FILE
        card = card or read_card(folder)
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
        raw = json.loads(meta["card"], parse_constant=refuse_constant)
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
