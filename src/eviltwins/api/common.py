"""What the API verbs share: opening the model an invocation names, the dataset that matches it,
and a given trigger."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eviltwins.base import check_numbers
from eviltwins.data import DatasetSpec, check_dataset_options, dataset_location
from eviltwins.errors import ParamError
from eviltwins.io import ModelCard, ModelSource, TrustArch, open_model
from eviltwins.models import Classifier, is_keyword_mapping
from eviltwins.paths import check_apart
from eviltwins.training import get_dataset
from eviltwins.triggers import load_trigger
from eviltwins.utils import is_int, resolve_device


def checked_arch_kwargs(arch_kwargs: Any) -> dict[str, Any]:
    """``arch_kwargs`` as a dict of keyword arguments (None is empty), else one line."""
    if arch_kwargs is None:
        return {}
    if not is_keyword_mapping(arch_kwargs):
        raise ParamError(
            "arch_kwargs must be a mapping of architecture options (name: value); got "
            f"{arch_kwargs!r}"[:200]
        )
    check_numbers(arch_kwargs, "arch_kwargs")
    return dict(arch_kwargs)


def reads(
    model: str | os.PathLike[str] | ModelSource, dataset: Any, data_root: Any
) -> dict[str, Any]:
    """What a verb on ``model`` and ``dataset`` reads from disk, for
    :func:`~eviltwins.paths.prepare_out` / :func:`~eviltwins.paths.check_apart` to keep its
    output apart from: the model (a folder, or a weights file) and the dataset's file or folder."""
    return {
        "the input model": ModelSource.of(model).path,
        "the dataset": dataset_location(dataset, data_root),
    }


def apart_from_card(out: Path | None, card: ModelCard, dataset: Any, data_root: Any) -> None:
    """Keep ``out`` (resolved by :func:`~eviltwins.paths.prepare_out`) apart from the dataset
    the model's card names, when no ``dataset`` was given: a received card may name any path,
    and it is known only once the card is read (before any data is loaded)."""
    if out is not None and dataset is None:
        check_apart(out, {"the dataset": dataset_location(card.dataset, data_root)})


def open_source(
    model: str | os.PathLike[str] | ModelSource,
    device: str,
    trust_arch: TrustArch,
    dataset: str | DatasetSpec | None,
    data_root: Any,
    download: bool,
    dataset_options: dict[str, Any] | None = None,
) -> tuple[Classifier, ModelCard, DatasetSpec | None]:
    """The model ``model`` names (a folder, or a bare weights file with its
    :class:`~eviltwins.io.ModelSource` flags), and the dataset when one had to be loaded first
    to give a bare file its input shape and classes."""
    src = ModelSource.of(model)
    data = None
    if not src.is_folder and src.input_shape is None and dataset is not None:
        options = check_dataset_options(dataset_options)
        data = get_dataset(dataset, data_root, download, **options)
    net, card = open_model(src, resolve_device(device), trust_arch=trust_arch, data=data)
    return net, card, data


def given_trigger(
    card: ModelCard,
    model: Any,
    trigger: str | os.PathLike[str],
    target: Any,
    mask: Any,
    alpha: Any,
    position: Any,
    default_target: int | None,
) -> tuple[Any, int]:
    """The trigger (:func:`~eviltwins.triggers.load_trigger`: a ``.safetensors`` file, read
    at exactly that path, or a pattern image) for ``card``'s input shape, and the target class
    (``target``, else the card's, else ``default_target``), checked against the model."""
    what = f"model {model}"
    trig = load_trigger(
        trigger, card.input_shape, mask=mask, alpha=alpha, position=position, what=what
    )
    tgt = target if target is not None else card.extra.get("target", default_target)
    if tgt is None:
        raise ParamError(f"{what} records no backdoor target class; pass --target")
    if not (is_int(tgt) and 0 <= tgt < card.num_classes):
        raise ParamError(
            f"target class {tgt!r} is not a class of the model (0..{card.num_classes - 1}); "
            "pass --target"
        )
    return trig, tgt


def matching_dataset(
    card: ModelCard,
    dataset: str | DatasetSpec | None,
    data_root: Any,
    download: bool,
    train_limit: int | None,
    test_limit: int | None,
    seed: int = 0,
    dataset_options: dict[str, Any] | None = None,
    loaded: DatasetSpec | None = None,
) -> DatasetSpec:
    """The model's own dataset (or ``dataset``), checked against the model's input and classes.

    The card's dataset is reloaded with the card's ``dataset_options`` (``dataset_options``
    override them); a path there (a received card may name any) is read only through the safe
    readers of :mod:`eviltwins.data.files`, like a path the user names. ``loaded``: the
    dataset :func:`open_source` already loaded (with the options) for a bare weights file;
    it is only sub-sampled here, not read again."""
    if loaded is not None:
        spec = get_dataset(loaded, None, False, train_limit, test_limit, seed)
    else:
        options = check_dataset_options(dataset_options)
        if dataset is None:
            options = {**check_dataset_options(card.dataset_options), **options}
        name = dataset if dataset is not None else card.dataset
        if not name:
            raise ParamError("the model card names no dataset; pass --dataset")
        spec = get_dataset(name, data_root, download, train_limit, test_limit, seed, **options)
    if tuple(spec.shape) != tuple(card.input_shape):
        raise ParamError(
            f"dataset {spec.name} has images of shape {spec.shape} but the model expects "
            f"{tuple(card.input_shape)}; use a dataset of the model's input shape"
        )
    if spec.num_classes != card.num_classes:
        raise ParamError(
            f"dataset {spec.name} has {spec.num_classes} classes but the model has "
            f"{card.num_classes}"
        )
    return spec
