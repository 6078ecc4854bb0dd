"""High-level Python API mirroring the CLI: ``train`` a clean model, ``evaluate`` a saved one.

>>> import eviltwins as et
>>> res = et.train(dataset="digits", model="cnn", epochs=30, out="runs/clean")
>>> res.metrics["test_acc"]
>>> et.evaluate("runs/clean").accuracy
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from eviltwins.attacks.base import BackdoorResult
from eviltwins.base import Interval
from eviltwins.config import validate
from eviltwins.data import DatasetSpec, load_all
from eviltwins.errors import ParamError
from eviltwins.experiments.clean import TrainResult, train_clean
from eviltwins.experiments.options import RunOptions
from eviltwins.io import ModelCard, TrustArch, load_model, save_model
from eviltwins.models import is_keyword_mapping
from eviltwins.paths import prepare_out
from eviltwins.results import Result
from eviltwins.training import TrainConfig, get_dataset
from eviltwins.training import evaluate as _evaluate
from eviltwins.utils import is_int, resolve_device


@dataclasses.dataclass(frozen=True)
class EvaluationResult(Result):
    """Clean accuracy and mean cross-entropy of a saved ``model`` on ``n`` test images of
    ``dataset`` (:func:`evaluate`)."""

    model: str
    dataset: str
    accuracy: float
    loss: float
    n: int


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
) -> TrainResult:
    """Train a clean ``model`` on ``dataset`` and (with ``out``) save it safely.

    ``epochs=None`` uses the dataset's default (2 for MNIST/Fashion-MNIST, 30 for digits).
    ``out`` is checked before training (see :func:`eviltwins.paths.prepare_out`): a folder
    holding an attack, a report or foreign files is refused unless ``overwrite``. Training
    that diverges (NaN or inf) raises :class:`~eviltwins.errors.OptimisationError` and saves
    nothing.
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
    spec = get_dataset(dataset, data_root, download, train_limit, test_limit, seed)
    limits = (train_limit, test_limit)
    res = train_clean(
        spec, model, cfg, arch_kwargs=arch_kwargs, device=dev, limits=limits, quiet=quiet
    )
    if out is None:
        return res
    return dataclasses.replace(res, out=str(save_model(res.model, res.card, out)))


def evaluate(
    model: str | os.PathLike[str],
    dataset: str | DatasetSpec | None = None,
    *,
    device: str = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    test_limit: int | None = None,
    trust_arch: TrustArch = (),
    quiet: bool | None = True,
) -> EvaluationResult:
    """Clean accuracy of a saved model on the test split of its own (or another) dataset.

    ``trust_arch`` names the user architectures (``package.module:ClassName``) the model card
    may import (see :func:`eviltwins.io.load_model`); registered ones need none. ``quiet``
    hides the progress bar (default; ``None``: shown on a terminal, as the CLI does).
    """
    net, card = load_model(Path(model), resolve_device(device), trust_arch=trust_arch)
    spec = _matching_dataset(card, dataset, data_root, download, None, test_limit)
    res = _evaluate(net, spec.test, quiet=quiet)
    return EvaluationResult(str(model), spec.name, res["accuracy"], res["loss"], int(res["n"]))


def attack(
    name: str,
    model: str | os.PathLike[str],
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
) -> BackdoorResult:
    """Run attack ``name`` (``eviltwins list attacks``) on a saved benign model.

    ``params`` are the attack's parameters (unknown names are refused with a suggestion). With
    ``out``, writes the poisoned model, its trigger, ``metrics.json`` and ``examples.png``;
    ``out`` is checked first and may not be the input model's folder (the input is never
    modified) or hold a model, report or foreign files (unless ``overwrite``).
    ``trust_arch``: see :func:`evaluate`.
    """
    from eviltwins.attacks import ATTACKS

    atk = ATTACKS.build(name, params, quiet)
    if out is not None:
        prepare_out(out, "attack", inputs=[model], overwrite=overwrite)
    net, card = load_model(Path(model), resolve_device(device), trust_arch=trust_arch)
    spec = _matching_dataset(card, dataset, data_root, download, train_limit, test_limit)
    res = atk.fit(net, spec)
    if out is not None:
        x, y = load_all(spec.test, limit=512)
        res.save(out, card, examples=x[y != res.target][:8])
    return res


def detect(
    name: str,
    model: str | os.PathLike[str],
    dataset: str | DatasetSpec | None = None,
    *,
    params: dict[str, Any] | None = None,
    trigger: str | os.PathLike[str] | None = None,
    target: int | None = None,
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
) -> Any:
    """Run detector ``name`` (``eviltwins list detectors``) on a saved model.

    Model inspectors (neural-cleanse, abs) return an
    :class:`~eviltwins.detectors.InspectionReport`. Input filters (strip, ensemble) are fitted on
    the first ``n_clean`` held-out test images and evaluated on the next ``n_clean`` images
    (ALGORITHMS.md, input-filter protocol): with ``protocol="effective"`` (the authors') the
    clean set is those the model classifies correctly and the triggered set those of them
    (true label != target) that, stamped with ``trigger`` (default: the model folder's
    ``trigger.safetensors``), the model sends to the target; ``"all-stamped"`` counts every
    clean and every stamped non-target input. Both variants are in the returned
    :class:`~eviltwins.detectors.FilterReport`, with the size of each set. With ``out``, the
    report (and reversed-trigger images for inspectors) are written there; ``out`` is checked
    first and may not be the model's folder. ``trust_arch``: see :func:`evaluate`.
    """
    from eviltwins.detectors import DETECTORS, InputFilter, run_detector
    from eviltwins.triggers import Trigger

    det = DETECTORS.build(name, params, quiet)
    is_filter = isinstance(det, InputFilter)
    if is_filter:
        Interval(int, 1, MAX_N_CLEAN).check("detect", "n_clean", n_clean)
        if protocol not in ("effective", "all-stamped"):
            raise ParamError(f"protocol must be 'effective' or 'all-stamped'; got {protocol!r}")
        if target is not None:
            Interval(int, 0, None).check("detect", "target", target)
    if out is not None:
        prepare_out(out, "report", inputs=[model], overwrite=overwrite)
    net, card = load_model(Path(model), resolve_device(device), trust_arch=trust_arch)
    if is_filter:  # the trigger is checked before the dataset is loaded
        folder = Path(model) if Path(model).is_dir() else Path(model).parent
        trig_path = Path(trigger) if trigger is not None else folder / "trigger.safetensors"
        if trigger is None and not trig_path.exists():
            raise ParamError(
                f"{name} is evaluated on stamped inputs, and {folder} holds no "
                "trigger.safetensors: pass --trigger"
            )
        trig = Trigger.load(trig_path)  # exactly this path; a hostile file is one line
        trig.check_shape(card.input_shape, f"model {model}")
        tgt = target if target is not None else card.extra.get("target", 0)
        if not (is_int(tgt) and 0 <= tgt < card.num_classes):
            raise ParamError(
                f"target class {tgt!r} is not a class of the model (0..{card.num_classes - 1}); "
                "pass --target"
            )
    spec = _matching_dataset(card, dataset, data_root, download, None, test_limit)
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


def _matching_dataset(
    card: ModelCard,
    dataset: str | DatasetSpec | None,
    data_root: Any,
    download: bool,
    train_limit: int | None,
    test_limit: int | None,
    seed: int = 0,
) -> DatasetSpec:
    """The model's own dataset (or ``dataset``), checked against the model's input and classes."""
    name = dataset if dataset is not None else card.dataset
    if not name:
        raise ParamError("the model card names no dataset; pass --dataset")
    spec = get_dataset(name, data_root, download, train_limit, test_limit, seed)
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
    "TrainResult",
    "attack",
    "demo",
    "detect",
    "evaluate",
    "get_dataset",
    "sweep",
    "train",
    "write_sweep_report",
]
