"""The estimators on a saved model: ``attack``, ``detect`` and ``scan``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from eviltwins.api.common import (
    apart_from_card,
    given_trigger,
    matching_dataset,
    open_source,
    reads,
)
from eviltwins.attacks.base import BackdoorResult
from eviltwins.base import CLASS_INDEX, N_CLEAN
from eviltwins.data import DatasetSpec
from eviltwins.detectors.calibration import Calibration
from eviltwins.detectors.scan import DEFAULT_DETECTORS, ScanReport
from eviltwins.errors import ParamError
from eviltwins.io import ModelSource, TrustArch
from eviltwins.paths import prepare_out
from eviltwins.triggers import refuse_without_trigger


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
    ``out`` is checked first (:func:`~eviltwins.paths.prepare_out`): it may not be, contain or
    lie inside the input model's folder or the dataset's (inputs are never modified), or hold
    a model, report or foreign files (unless ``overwrite``).
    ``trust_arch``, ``dataset_options``: see :func:`evaluate`.
    """
    from eviltwins.attacks import ATTACKS

    atk = ATTACKS.build(name, params, quiet)
    if out is not None:
        out = prepare_out(
            out, "attack", inputs=reads(model, dataset, data_root), overwrite=overwrite
        )
    net, card, data = open_source(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    apart_from_card(out, card, dataset, data_root)
    spec = matching_dataset(
        card, dataset, data_root, download, train_limit, test_limit, 0, dataset_options, loaded=data
    )
    res = atk.fit(net, spec)
    if out is not None:
        from eviltwins.detectors.evaluation import non_target_examples

        examples = non_target_examples(spec, res.target, 8, getattr(atk, "seed", 0))
        res.save(out, card, examples=examples)
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
    ``n_clean`` random held-out test images and evaluated on ``n_clean`` other random ones (a
    split seeded by the detector's ``seed`` parameter; the input-filter protocol of the Methods pages
    and "Subsets and seeds"): with ``protocol="effective"`` (the authors') the
    clean set is those the model classifies correctly and the triggered set those of them
    (true label != target) that, stamped with ``trigger`` (default: the model folder's
    ``trigger.safetensors``; or a pattern image with ``trigger_mask`` / ``trigger_alpha`` /
    ``trigger_position``, see :func:`eviltwins.triggers.load_trigger`), the model sends to the
    target; ``"all-stamped"`` counts every
    clean and every stamped non-target input. Both variants are in the returned
    :class:`~eviltwins.detectors.FilterReport`, with the size of each set. With ``out``, the
    report (and reversed-trigger images for inspectors) are written there; ``out`` is checked
    first and may not be, contain or lie inside what the detector reads (the model's folder,
    the dataset, the trigger's folder). ``trust_arch``, ``dataset_options``: see
    :func:`evaluate`.
    """
    from eviltwins.detectors import DETECTORS, run_detector

    det = DETECTORS.build(name, params, quiet)
    is_filter = det.family == "filter"
    if is_filter:
        N_CLEAN.check("detect", "n_clean", n_clean)
        if protocol not in ("effective", "all-stamped"):
            raise ParamError(f"protocol must be 'effective' or 'all-stamped'; got {protocol!r}")
        if target is not None:
            CLASS_INDEX.check("detect", "target", target)
    if out is not None:
        given = {"the trigger": trigger, "the trigger mask": trigger_mask}
        out = prepare_out(
            out, "report", inputs={**reads(model, dataset, data_root), **given}, overwrite=overwrite
        )
    net, card, data = open_source(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    apart_from_card(out, card, dataset, data_root)
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
        trig, tgt = given_trigger(
            card, model, trigger, target, trigger_mask, trigger_alpha, trigger_position, 0
        )
    spec = matching_dataset(
        card, dataset, data_root, download, None, test_limit, 0, dataset_options, loaded=data
    )
    if not is_filter:
        report = run_detector(det, net, spec)
        if out is not None:
            report.save(out)
        return report
    seed = getattr(det, "seed", 0)  # the filter's seed also draws its calibration split
    report = run_detector(
        det, net, spec, trigger=trig, target=tgt, n_clean=n_clean, protocol=protocol, seed=seed
    )
    if out is not None:
        from eviltwins.io import write_json

        write_json(out / "report.json", report.to_dict())
    return report


def scan(
    model: str | os.PathLike[str] | ModelSource,
    dataset: str | DatasetSpec | None = None,
    *,
    detectors: str | Sequence[str] = DEFAULT_DETECTORS,
    params: dict[str, dict[str, Any]] | None = None,
    calibration: str | os.PathLike[str] | Calibration | None = "auto",
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
    <eviltwins.detectors.scan.ScanReport.verdict>`). Parameters not given take each inspector's
    ``scan_params`` (label scheduling, bfloat16 where native) over its class defaults, unless
    a shipped calibration fitted without them applies
    (:func:`~eviltwins.detectors.scan.scan_settings`). ``calibration`` gives the report its
    p(trojan) (:mod:`eviltwins.detectors.calibration`): ``"auto"``, the shipped calibration
    fitted for the model's input shape with these detectors and settings, if there is one;
    ``"none"`` (or None), none; a calibration file (from :func:`calibrate`) or a
    :class:`~eviltwins.detectors.calibration.Calibration`, that one (its detectors must be
    scanned and its input shape the model's). With ``out`` (checked first, like
    :func:`detect`'s): ``scan.json``, each inspector's report and reversed triggers in
    ``out/<detector>/`` and ``scan.html``. Other arguments: see :func:`detect`."""
    from eviltwins.detectors.calibration import load_calibration
    from eviltwins.detectors.calibration_choice import check_calibration
    from eviltwins.detectors.scan import inspectors, run_scan
    from eviltwins.report.scan import write_scan

    dets = inspectors(detectors, params, quiet)
    cal_file = None
    if calibration is not None and not isinstance(calibration, Calibration | str):
        calibration = os.fspath(calibration)  # a path
    if isinstance(calibration, str) and calibration not in ("auto", "none"):
        cal_file, calibration = calibration, load_calibration(calibration)
    if isinstance(calibration, Calibration):
        check_calibration(calibration, list(dets))
    where = ModelSource.of(model).path
    if out is not None:
        inputs = reads(model, dataset, data_root)
        out = prepare_out(out, "scan", inputs=inputs, overwrite=overwrite)
        for name in dets:  # each inspector's folder, as `detect NAME --out` would write it
            prepare_out(out / name, "report", inputs=inputs, overwrite=overwrite)
    net, card, data = open_source(
        model, device, trust_arch, dataset, data_root, download, dataset_options
    )
    apart_from_card(out, card, dataset, data_root)
    spec = matching_dataset(
        card, dataset, data_root, download, None, test_limit, 0, dataset_options, loaded=data
    )
    named = card.classes if len(card.classes) == card.num_classes else spec.classes
    report = run_scan(dets, net, spec, source=str(where), classes=named, calibration=calibration)
    if cal_file is not None and report.calibration is not None:
        about = {**report.calibration, "origin": f"file {cal_file}"}
        report = dataclasses.replace(report, calibration=about)
    if out is not None:
        write_scan(report, out)
    return report
