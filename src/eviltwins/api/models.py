"""Clean models and models from elsewhere: ``train``, ``evaluate``, ``import_model``, ``layers``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from eviltwins.api.common import (
    checked_arch_kwargs,
    given_trigger,
    matching_dataset,
    open_source,
)
from eviltwins.base import CLASS_INDEX
from eviltwins.config import validate
from eviltwins.data import DatasetSpec, check_dataset_options, dataset_location
from eviltwins.errors import ParamError
from eviltwins.experiments.clean import TrainResult, train_clean
from eviltwins.io import ModelSource, TrustArch, save_model
from eviltwins.metrics import attack_metrics
from eviltwins.paths import prepare_out
from eviltwins.results import Result
from eviltwins.training import TrainConfig, get_dataset
from eviltwins.training import evaluate as _evaluate
from eviltwins.triggers import refuse_without_trigger
from eviltwins.utils import resolve_device


@dataclasses.dataclass(frozen=True)
class EvaluationResult(Result):
    """Clean accuracy and mean cross-entropy of a saved ``model`` on ``n`` test images of
    ``dataset`` (:func:`evaluate`); with a given backdoor (``trigger`` and ``target``), its
    attack success rate ``asr`` over the ``n_attack`` non-target test inputs and its
    ``efficacy`` (mean target probability on them), else those are None."""

    model: str
    dataset: str
    accuracy: float
    loss: float
    n: int
    trigger: str | None = None
    target: int | None = None
    asr: float | None = None
    efficacy: float | None = None
    n_attack: int | None = None


def train(
    dataset: str | DatasetSpec = "digits",
    model: str = "cnn",
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 0.05,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    augment: bool | None = None,
    seed: int = 0,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    quiet: bool | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a clean ``model`` on ``dataset`` and (with ``out``) save it safely.

    ``epochs=None`` uses the dataset's default (2 for MNIST/Fashion-MNIST, 30 for digits).
    ``out`` is checked before training (see :func:`eviltwins.paths.prepare_out`): a folder
    holding an attack, a report or foreign files is refused unless ``overwrite``. Training
    that diverges (NaN or inf) raises :class:`~eviltwins.errors.OptimisationError` and saves
    nothing. ``dataset`` is a registered name, a ``.npz`` file or an image folder;
    ``dataset_options`` (``image_size``, ``channels``, ``normalize``; see
    :mod:`eviltwins.data.files`) are recorded on the model card, so later commands reload the
    same dataset.
    """
    cfg = validate(
        TrainConfig,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        augment=augment,
        seed=seed,
    )
    if not isinstance(model, str):
        raise ParamError(f"model must be an architecture name; got {type(model).__name__}")
    arch_kwargs = checked_arch_kwargs(arch_kwargs)
    if out is not None:
        reads = {"the dataset": dataset_location(dataset, data_root)}
        out = prepare_out(out, "model", inputs=reads, overwrite=overwrite)
    dev = resolve_device(device)
    options = check_dataset_options(dataset_options)
    spec = get_dataset(dataset, data_root, download, train_limit, test_limit, seed, **options)
    limits = (train_limit, test_limit)
    res = train_clean(
        spec, model, cfg, arch_kwargs=arch_kwargs, device=dev, limits=limits, quiet=quiet
    )
    if out is None:
        return res
    return dataclasses.replace(res, out=str(save_model(res.model, res.card, out)))


def evaluate(
    model: str | os.PathLike[str] | ModelSource,
    dataset: str | DatasetSpec | None = None,
    *,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    test_limit: int | None = None,
    trust_arch: TrustArch = (),
    quiet: bool | None = True,
    trigger: str | os.PathLike[str] | None = None,
    target: int | None = None,
    trigger_mask: str | os.PathLike[str] | None = None,
    trigger_alpha: float | None = None,
    trigger_position: str | tuple[int, int] | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Clean accuracy of a saved model on the test split of its own (or another) dataset.

    ``trust_arch`` names the user architectures (``package.module:ClassName``) the model card
    may import (see :func:`eviltwins.io.load_model`); registered ones need none. ``quiet``
    hides the progress bar (default; ``None``: shown on a terminal, as the CLI does).
    With ``trigger`` (a given backdoor: a ``.safetensors`` trigger, or a pattern image with
    ``trigger_mask`` / ``trigger_alpha`` / ``trigger_position``, see
    :func:`eviltwins.triggers.load_trigger`) and ``target`` (default: the model card's), the
    result also holds the attack success rate over the non-target test inputs and the efficacy.
    Without ``dataset``, the card's dataset is reloaded with its ``dataset_options``;
    ``dataset_options`` (``image_size``, ``channels``, ``normalize``) apply to a dataset named
    by path (a ``.npz`` file or an image folder; see :mod:`eviltwins.data.files`) and override the card's.
    """
    if trigger is None:
        refuse_without_trigger(
            target=target,
            trigger_mask=trigger_mask,
            trigger_alpha=trigger_alpha,
            trigger_position=trigger_position,
        )
    elif target is not None:
        CLASS_INDEX.check("evaluate", "target", target)
    net, card, data = open_source(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    given = None  # the trigger is checked before the dataset is loaded
    if trigger is not None:
        given = given_trigger(
            card, model, trigger, target, trigger_mask, trigger_alpha, trigger_position, None
        )
    spec = matching_dataset(
        card, dataset, data_root, download, None, test_limit, 0, dataset_options, loaded=data
    )
    res = _evaluate(net, spec.test, quiet=quiet)
    out = EvaluationResult(
        str(ModelSource.of(model).path), spec.name, res["accuracy"], res["loss"], int(res["n"])
    )
    if given is None:
        return out
    trig, tgt = given
    m = attack_metrics(net, spec.test, trig, tgt)
    return dataclasses.replace(
        out,
        trigger=str(trigger),
        target=tgt,
        asr=m["asr"],
        efficacy=m["efficacy"],
        n_attack=int(m["n_attack"]),
    )


@dataclasses.dataclass(frozen=True)
class ImportResult(Result):
    """A weights file imported as a model folder (:func:`import_model`): where it went, the
    architecture and its input, the layer TrojanNN/ABS will use (``feature_layer_picked``:
    chosen by the rule, not declared), and the clean accuracy on up to 500 test images when a
    dataset was given (a wrong ``mean``/``std`` shows as chance accuracy)."""

    out: str
    architecture: str
    input_shape: list[int]
    num_classes: int
    parameters: int
    feature_layer: str | None
    feature_layer_picked: bool
    sha256: str
    dataset: str = ""
    accuracy: float | None = None
    n: int | None = None


def import_model(
    arch: str,
    weights: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset: str | DatasetSpec | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    dataset_options: dict[str, Any] | None = None,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    overwrite: bool = False,
    quiet: bool | None = True,
) -> ImportResult:
    """Import a model trained elsewhere: ``weights`` (a ``.safetensors`` file or a
    ``.pt``/``.pth``/``.bin`` state dict, read only through safetensors or
    ``torch.load(weights_only=True)``; ``{"state_dict": ...}`` wrappers and DataParallel's
    ``module.`` prefix are unwrapped; or a Hugging Face-style folder, ``config.json`` +
    ``model.safetensors``) of architecture ``arch`` (a registered name, ``torchvision:NAME``,
    ``timm:NAME`` or ``package.module:ClassName``), for the input of ``dataset`` or
    ``input_shape`` / ``num_classes`` (else a folder's ``config.json`` hints), with
    normalisation ``mean`` / ``std`` (default identity). The weights must fit the
    architecture and the model must run on one input; then ``out`` gets the usual model
    folder, whose card records the dataset (and its ``dataset_options``) for later commands.
    Using that folder later with a user architecture needs ``arch`` named again (trust is
    never read from a file)."""
    from eviltwins.io import import_model as write_imported
    from eviltwins.models import default_feature_layer

    src = ModelSource(
        Path(weights), arch, input_shape, num_classes, mean, std, checked_arch_kwargs(arch_kwargs)
    )
    reads = {"the weights file": src.path, "the dataset": dataset_location(dataset, data_root)}
    out = prepare_out(out, "model", inputs=reads, overwrite=overwrite)
    options = check_dataset_options(dataset_options)
    spec = get_dataset(dataset, data_root, download, **options) if dataset is not None else None
    net, card = write_imported(src, out, data=spec, device=resolve_device(device))
    layer, picked = default_feature_layer(net)
    acc, n = None, None
    if spec is not None:
        res = _evaluate(net, spec.subset(None, 500).test, quiet=quiet)
        acc, n = float(res["accuracy"]), int(res["n"])
    return ImportResult(
        str(out),
        card.architecture,
        list(card.input_shape),
        card.num_classes,
        sum(p.numel() for p in net.parameters()),
        layer,
        picked,
        str(card.training.get("sha256", "")),
        card.dataset,
        acc,
        n,
    )


@dataclasses.dataclass(frozen=True)
class LayersResult(Result):
    """The layers a forward pass of ``model`` goes through, in order (:func:`layers`): each a
    dict of ``name``, ``type``, ``output_shape`` (C, H, W for feature maps) and ``parameters``;
    and the layer TrojanNN / TrojanNN* / ABS use by default (``feature_layer_picked``: chosen
    by :func:`eviltwins.models.auto_feature_layer`'s rule, not declared by the model)."""

    model: str
    feature_layer: str | None
    feature_layer_picked: bool
    layers: list[dict[str, Any]]


def layers(
    model: str | os.PathLike[str] | ModelSource,
    dataset: str | DatasetSpec | None = None,
    *,
    device: str = "cpu",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    trust_arch: TrustArch = (),
    dataset_options: dict[str, Any] | None = None,
) -> LayersResult:
    """List the candidate layers of a model (for ``layer=`` / ``--layer``) with their output
    shapes, traced on one input; ``dataset`` is needed only for a bare weights file without
    ``input_shape``."""
    from eviltwins.errors import EviltwinsError
    from eviltwins.models import default_feature_layer, trace_layers

    net, _, _ = open_source(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    try:
        default, picked = default_feature_layer(net)
    except EviltwinsError:
        default, picked = None, False
    found = [info.to_dict() for info in trace_layers(net)]
    return LayersResult(str(ModelSource.of(model).path), default, picked, found)
