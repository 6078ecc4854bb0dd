"""High-level Python API mirroring the CLI: ``train`` a clean model, ``evaluate`` a saved one.

>>> import eviltwins as et
>>> res = et.train(dataset="digits", model="cnn", epochs=30, out="runs/clean")
>>> res.metrics["test_acc"]
>>> et.evaluate("runs/clean").accuracy
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eviltwins.attacks.base import BackdoorResult
from eviltwins.base import Interval
from eviltwins.config import validate
from eviltwins.data import DatasetSpec, check_dataset_options, load_all
from eviltwins.detectors.scan import DEFAULT_DETECTORS, ScanReport
from eviltwins.errors import ParamError
from eviltwins.experiments.clean import TrainResult, train_clean
from eviltwins.experiments.options import RunOptions
from eviltwins.io import ModelCard, ModelSource, TrustArch, open_model, save_model
from eviltwins.metrics import attack_metrics
from eviltwins.models import Classifier, is_keyword_mapping
from eviltwins.paths import prepare_out
from eviltwins.results import Result
from eviltwins.training import TrainConfig, get_dataset
from eviltwins.training import evaluate as _evaluate
from eviltwins.triggers import load_trigger, refuse_without_trigger
from eviltwins.utils import is_int, resolve_device


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
    arch_kwargs = _checked_arch_kwargs(arch_kwargs)
    if out is not None:
        prepare_out(out, "model", overwrite=overwrite)
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
        Interval(int, 0, None).check("evaluate", "target", target)
    net, card, data = _open(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    given = None  # the trigger is checked before the dataset is loaded
    if trigger is not None:
        given = _given_trigger(
            card, model, trigger, target, trigger_mask, trigger_alpha, trigger_position, None
        )
    spec = _matching_dataset(
        card, data or dataset, data_root, download, None, test_limit, 0, dataset_options
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
    ``module.`` prefix are unwrapped) of architecture ``arch`` (a registered name,
    ``torchvision:NAME`` or ``package.module:ClassName``), for the input of ``dataset`` or
    ``input_shape`` / ``num_classes``, with normalisation ``mean`` / ``std`` (default
    identity). The weights must fit the architecture and the model must run on one input;
    then ``out`` gets the usual model folder, whose card records the dataset (and its
    ``dataset_options``) for later commands. Using that folder later with a user
    architecture needs ``arch`` named again (trust is never read from a file)."""
    from eviltwins.io import import_model as write_imported
    from eviltwins.models import default_feature_layer

    src = ModelSource(
        Path(weights), arch, input_shape, num_classes, mean, std, _checked_arch_kwargs(arch_kwargs)
    )
    prepare_out(out, "model", inputs=[src.path], overwrite=overwrite)
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

    net, _, _ = _open(model, device, trust_arch, dataset, data_root, download, dataset_options)
    try:
        default, picked = default_feature_layer(net)
    except EviltwinsError:
        default, picked = None, False
    found = [info.to_dict() for info in trace_layers(net)]
    return LayersResult(str(ModelSource.of(model).path), default, picked, found)


def attack(
    name: str,
    model: str | os.PathLike[str] | ModelSource,
    dataset: str | DatasetSpec | None = None,
    *,
    params: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    trust_arch: TrustArch = (),
    overwrite: bool = False,
    quiet: bool | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> BackdoorResult:
    """Run attack ``name`` (``eviltwins list attacks``) on a saved benign model.

    ``params`` are the attack's parameters (unknown names are refused with a suggestion). With
    ``out``, writes the poisoned model, its trigger, ``metrics.json`` and ``examples.png``;
    ``out`` is checked first and may not be the input model's folder (the input is never
    modified) or hold a model, report or foreign files (unless ``overwrite``).
    ``trust_arch``, ``dataset_options``: see :func:`evaluate`.
    """
    from eviltwins.attacks import ATTACKS

    atk = ATTACKS.build(name, params, quiet)
    if out is not None:
        prepare_out(out, "attack", inputs=[ModelSource.of(model).path], overwrite=overwrite)
    net, card, data = _open(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    spec = _matching_dataset(
        card, data or dataset, data_root, download, train_limit, test_limit, 0, dataset_options
    )
    res = atk.fit(net, spec)
    if out is not None:
        x, y = load_all(spec.test, limit=512)
        res.save(out, card, examples=x[y != res.target][:8])
    return res


def detect(
    name: str,
    model: str | os.PathLike[str] | ModelSource,
    dataset: str | DatasetSpec | None = None,
    *,
    params: dict[str, Any] | None = None,
    trigger: str | os.PathLike[str] | None = None,
    target: int | None = None,
    trigger_mask: str | os.PathLike[str] | None = None,
    trigger_alpha: float | None = None,
    trigger_position: str | tuple[int, int] | None = None,
    n_clean: int = 1000,
    protocol: str = "effective",
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    test_limit: int | None = None,
    trust_arch: TrustArch = (),
    overwrite: bool = False,
    quiet: bool | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> Any:
    """Run detector ``name`` (``eviltwins list detectors``) on a saved model.

    Model inspectors (neural-cleanse, abs) return an
    :class:`~eviltwins.detectors.InspectionReport`. Input filters (strip, ensemble) are fitted on
    the first ``n_clean`` held-out test images and evaluated on the next ``n_clean`` images
    (ALGORITHMS.md, input-filter protocol): with ``protocol="effective"`` (the authors') the
    clean set is those the model classifies correctly and the triggered set those of them
    (true label != target) that, stamped with ``trigger`` (default: the model folder's
    ``trigger.safetensors``; or a pattern image with ``trigger_mask`` / ``trigger_alpha`` /
    ``trigger_position``, see :func:`eviltwins.triggers.load_trigger`), the model sends to the
    target; ``"all-stamped"`` counts every
    clean and every stamped non-target input. Both variants are in the returned
    :class:`~eviltwins.detectors.FilterReport`, with the size of each set. With ``out``, the
    report (and reversed-trigger images for inspectors) are written there; ``out`` is checked
    first and may not be the model's folder. ``trust_arch``, ``dataset_options``: see
    :func:`evaluate`.
    """
    from eviltwins.detectors import DETECTORS, InputFilter, run_detector

    det = DETECTORS.build(name, params, quiet)
    is_filter = isinstance(det, InputFilter)
    if is_filter:
        Interval(int, 1, MAX_N_CLEAN).check("detect", "n_clean", n_clean)
        if protocol not in ("effective", "all-stamped"):
            raise ParamError(f"protocol must be 'effective' or 'all-stamped'; got {protocol!r}")
        if target is not None:
            Interval(int, 0, None).check("detect", "target", target)
    if out is not None:
        prepare_out(out, "report", inputs=[ModelSource.of(model).path], overwrite=overwrite)
    net, card, data = _open(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    if is_filter:  # the trigger is checked before the dataset is loaded
        if trigger is None:
            refuse_without_trigger(
                trigger_mask=trigger_mask,
                trigger_alpha=trigger_alpha,
                trigger_position=trigger_position,
            )
            where = ModelSource.of(model).path
            folder = where if where.is_dir() else where.parent
            trigger = folder / "trigger.safetensors"
            if not trigger.exists():
                raise ParamError(
                    f"{name} is evaluated on stamped inputs, and {folder} holds no "
                    "trigger.safetensors: pass --trigger"
                )
        trig, tgt = _given_trigger(
            card, model, trigger, target, trigger_mask, trigger_alpha, trigger_position, 0
        )
    spec = _matching_dataset(
        card, data or dataset, data_root, download, None, test_limit, 0, dataset_options
    )
    if not is_filter:
        report = run_detector(det, net, spec)
        if out is not None:
            report.save(out)
        return report
    report = run_detector(
        det, net, spec, trigger=trig, target=tgt, n_clean=n_clean, protocol=protocol
    )
    if out is not None:
        from eviltwins.io import write_json

        write_json(Path(out) / "report.json", report.to_dict())
    return report


def scan(
    model: str | os.PathLike[str] | ModelSource,
    dataset: str | DatasetSpec | None = None,
    *,
    detectors: str | Sequence[str] = DEFAULT_DETECTORS,
    params: dict[str, dict[str, Any]] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    test_limit: int | None = None,
    trust_arch: TrustArch = (),
    overwrite: bool = False,
    quiet: bool | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> ScanReport:
    """Scan a model with model inspectors (NeuralCleanse and ABS by default; ``detectors``:
    any of ``eviltwins list detectors`` that inspects a model), each with its ``params``
    (``{"neural-cleanse": {"steps": 100}}``), for one verdict (:attr:`ScanReport.verdict
    <eviltwins.detectors.scan.ScanReport.verdict>`). With ``out`` (checked first, like
    :func:`detect`'s): ``scan.json``, each inspector's report and reversed triggers in
    ``out/<detector>/`` and ``scan.html``. Other arguments: see :func:`detect`."""
    from eviltwins.detectors.scan import inspectors, run_scan
    from eviltwins.report.scan import write_scan

    dets = inspectors(detectors, params, quiet)
    where = ModelSource.of(model).path
    if out is not None:
        prepare_out(out, "scan", inputs=[where], overwrite=overwrite)
        for name in dets:  # each inspector's folder, as `detect NAME --out` would write it
            prepare_out(Path(out) / name, "report", inputs=[where], overwrite=overwrite)
    net, card, data = _open(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    spec = _matching_dataset(
        card, data or dataset, data_root, download, None, test_limit, 0, dataset_options
    )
    named = card.classes if len(card.classes) == card.num_classes else spec.classes
    report = run_scan(dets, net, spec, source=str(where), classes=named)
    if out is not None:
        write_scan(report, out)
    return report


def sweep(
    spec: str | os.PathLike[str] | dict[str, Any] | Any,
    out: str | os.PathLike[str] | None = None,
    options: RunOptions | None = None,
    *,
    report: bool = True,
    **changes: Any,
) -> Any:
    """Run (or resume) a sweep: a YAML path, a mapping or a
    :class:`~eviltwins.experiments.SweepSpec`, into ``out`` (default ``runs/<name>``).

    ``options`` is a :class:`~eviltwins.experiments.RunOptions` (executor, jobs, ray_address,
    threads, device, data_root, quiet); its fields may also be given as keywords
    (``sweep(spec, jobs=4)``). Finished cells are skipped, failed ones retried; see
    :func:`eviltwins.experiments.run_sweep`. With ``report`` (default) the report is
    (re)written afterwards. Returns the :class:`~eviltwins.experiments.SweepSummary`.
    """
    from eviltwins.experiments import run_sweep

    summary = run_sweep(spec, out, RunOptions.of(options, **changes))
    if report and (summary.ran or summary.skipped):
        write_sweep_report(summary.out)
    return summary


def write_sweep_report(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Any:
    """Write a sweep folder's report (CSV, figures, claims in Markdown and HTML) into
    ``run_dir/report`` (or ``out``); returns the :class:`~eviltwins.report.Report`."""
    from eviltwins.experiments.reporting import write_sweep_report as write

    return write(run_dir, out)


def demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    seed: int = 0,
    device: str = "auto",
    jobs: int = 1,
    quiet: bool | None = None,
) -> tuple[Any, Any]:
    """The main job on the embedded digits dataset (see :mod:`eviltwins.experiments.demo`):
    the demo sweep and its report. Returns ``(summary, report)``."""
    from eviltwins.experiments.demo import demo_spec

    summary = sweep(
        demo_spec(seeds=[seed]), out, jobs=jobs, device=device, report=False, quiet=quiet
    )
    return summary, write_sweep_report(summary.out)


#: Largest ``n_clean`` (held-out images to fit an input filter on, and as many to test).
MAX_N_CLEAN = 1_000_000


def _checked_arch_kwargs(arch_kwargs: Any) -> dict[str, Any]:
    """``arch_kwargs`` as a dict of keyword arguments (None is empty), else one line."""
    if arch_kwargs is None:
        return {}
    if not is_keyword_mapping(arch_kwargs):
        raise ParamError(
            "arch_kwargs must be a mapping of architecture options (name: value); got "
            f"{arch_kwargs!r}"[:200]
        )
    return dict(arch_kwargs)


def _open(
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


def _given_trigger(
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


def _matching_dataset(
    card: ModelCard,
    dataset: str | DatasetSpec | None,
    data_root: Any,
    download: bool,
    train_limit: int | None,
    test_limit: int | None,
    seed: int = 0,
    dataset_options: dict[str, Any] | None = None,
) -> DatasetSpec:
    """The model's own dataset (or ``dataset``), checked against the model's input and classes.

    The card's dataset is reloaded with the card's ``dataset_options`` (``dataset_options``
    override them); a path there (a received card may name any) is read only through the safe
    readers of :mod:`eviltwins.data.files`, like a path the user names."""
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


__all__ = [
    "EvaluationResult",
    "ImportResult",
    "LayersResult",
    "TrainResult",
    "attack",
    "demo",
    "detect",
    "evaluate",
    "get_dataset",
    "import_model",
    "layers",
    "scan",
    "sweep",
    "train",
    "write_sweep_report",
]
