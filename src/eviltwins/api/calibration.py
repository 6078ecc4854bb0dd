"""``calibrate``: fit a scan's p(trojan) on the models of finished sweeps
(:mod:`eviltwins.detectors.calibration`)."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eviltwins.base import SEED_RANGE
from eviltwins.detectors.calibration import (
    FOLDS,
    MAX_DETECTORS,
    Calibration,
    fit_calibration,
    load_calibration,
    model_statistic,
    param_difference,
    recorded_params,
    shape_text,
)
from eviltwins.detectors.scan import DEFAULT_DETECTORS, inspector_key, inspector_names
from eviltwins.errors import DataError, EviltwinsError, ParamError
from eviltwins.experiments.store import CellResult, scan_cells
from eviltwins.io import read_json, write_json
from eviltwins.paths import check_apart, shown_path
from eviltwins.results import Result

#: The attack of a sweep's clean cells (detectors run on the clean model).
CLEAN_ATTACK = "none"


@dataclasses.dataclass(frozen=True)
class CalibrationRun(Result):
    """A calibration fitted by :func:`calibrate`: the ``calibration``, the file it was written
    to (``out``; None when not written), the sweeps read (``runs``), the models used and the
    cells left out, counted by reason (``skipped``)."""

    calibration: Calibration
    out: str | None
    runs: list[str]
    n_models: int
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        cal, cv = self.calibration, self.calibration.cv
        left = "; ".join(f"{n} {why}" for why, n in self.skipped.items())
        where = f"{self.out}: " if self.out else ""
        return (
            f"{where}p(trojan) of {', '.join(cal.detectors)} for {shape_text(cal.input_shape)} "
            f"inputs, {self.n_models} models ({cal.n_trojaned} backdoored): out-of-fold AUC "
            f"{_fmt(cv.get('auc'))}, cross-entropy {_fmt(cv.get('cross_entropy'))} "
            f"({cv.get('folds')} folds)" + (f"; skipped {left}" if left else "")
        )


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) else "undefined"


def _detector_keys(detectors: str | Sequence[str]) -> list[str]:
    if isinstance(detectors, str):
        detectors = [d for d in detectors.split(",") if d.strip()]
    try:
        keys = list(dict.fromkeys(inspector_key(str(d).strip()) for d in detectors))
    except ParamError as err:  # an input filter: it scores inputs, not models
        name = str(err).split(" ", 1)[0]
        raise ParamError(
            f"{name} is an input filter: it scores inputs, not models; calibrate combines the "
            f"model inspectors' statistics ({', '.join(inspector_names())})"
        ) from None
    if not 1 <= len(keys) <= MAX_DETECTORS:
        raise ParamError(f"detectors must name 1 to {MAX_DETECTORS} model inspectors")
    return keys


def _check_out(out: Path, runs: Sequence[Path], overwrite: bool) -> None:
    """A calibration file may replace only a calibration file, and only with ``overwrite``;
    it never goes into a sweep folder it reads."""
    check_apart(out, {f"the sweep run {r}": r for r in runs})
    if out.is_dir():
        raise ParamError(f"--out {out} is a folder; give a file name (e.g. calibration.json)")
    if not out.exists():
        return
    try:
        load_calibration(out)
    except DataError:
        raise ParamError(
            f"--out {out} exists and is not an eviltwins calibration; eviltwins never replaces "
            "files it did not write: choose another --out"
        ) from None
    if not overwrite:
        raise ParamError(
            f"--out {out} already holds a calibration; pass --overwrite (API: overwrite=True) "
            "to replace it, or choose another --out"
        )


def _card_shapes(run: Path) -> dict[tuple[str, str], tuple[int, ...]]:
    """(dataset, architecture) -> input shape, from the cards of the sweep's clean models
    (``RUN/clean/*/model.json``: the shape a cell's models take is recorded only there)."""
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    for card in sorted((run / "clean").glob("*/model.json")):
        try:
            d = read_json(card, "model card")
        except DataError:
            continue
        shape = d.get("input_shape") if isinstance(d, dict) else None
        if isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) for s in shape):
            key = (str(d.get("dataset")), str(d.get("architecture")))
            shapes.setdefault(key, tuple(shape))
    return shapes


def _label_of(cell: CellResult, key: str, run: Path) -> str:
    """The label under which ``cell`` stores detector ``key``'s result."""
    labels = []
    for entry in cell.cell.detectors:
        try:
            if inspector_key(entry.name) == key:
                labels.append(entry.label or entry.name)
        except EviltwinsError:  # an input filter, or a detector this eviltwins lacks
            continue
    if len(labels) != 1:
        ran = ", ".join(e.name for e in cell.cell.detectors) or "none"
        how = "no" if not labels else f"{len(labels)} runs of"
        raise ParamError(
            f"sweep {run} has {how} {key} (cell {cell.key} ran: {ran}); calibrate the detectors "
            "each sweep ran once (--detectors)"[:300]
        )
    return labels[0]


def _source(runs: Sequence[Path], cells: Sequence[CellResult], n_bad: int) -> str:
    names = []
    for run in runs:
        try:
            spec = read_json(run / "sweep.json", "sweep spec")
        except DataError:
            spec = {}
        name = spec.get("name") if isinstance(spec, dict) else None
        names.append(name if isinstance(name, str) else run.name)
    datasets = sorted({c.cell.dataset for c in cells})
    archs = sorted({c.cell.model for c in cells})
    attacks = sorted({c.cell.label or c.cell.attack for c in cells if c.cell.attack != "none"})
    return (
        f"sweep {', '.join(names)}: {len(cells)} models on {', '.join(datasets)} "
        f"({', '.join(archs)}), {len(cells) - n_bad} clean, {n_bad} backdoored "
        f"({', '.join(attacks)})"
    )[:2000]


def calibrate(
    run_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    detectors: str | Sequence[str] = DEFAULT_DETECTORS,
    folds: int = 5,
    seed: int = 0,
    source: str | None = None,
    overwrite: bool = False,
) -> CalibrationRun:
    """Fit a scan's p(trojan) (:func:`~eviltwins.detectors.calibration.fit_calibration`) on
    the finished cells of the sweep folders ``run_dirs``: a clean cell (attack ``none``) is a
    clean model, any other a backdoored one; failed cells and cells without a statistic are
    skipped and counted. Every model must have the same input shape (read from the sweep's
    clean model cards) and each detector the same settings; ``source`` names the population
    (default: from the sweeps' names, datasets, architectures and attacks). With ``out``,
    writes the calibration there as JSON (an existing calibration is replaced only with
    ``overwrite``); ``eviltwins scan --calibration FILE`` uses it."""
    keys = _detector_keys(detectors)
    FOLDS.check("calibrate", "folds", folds)
    SEED_RANGE.check("calibrate", "seed", seed)
    given = [run_dirs] if isinstance(run_dirs, str | os.PathLike) else list(run_dirs)
    runs = [Path(r) for r in given]
    if not runs:
        raise ParamError("calibrate needs at least one sweep folder")
    if out is not None:
        out = Path(out)
        _check_out(out, runs, overwrite)
    skipped: Counter[str] = Counter()
    used: list[CellResult] = []
    stats: list[dict[str, float]] = []
    shapes: dict[tuple[int, ...], str] = {}
    params: dict[str, tuple[str, dict[str, Any]]] = {}
    for run in runs:
        cells, unreadable = scan_cells(run)
        skipped["unreadable cell files"] += len(unreadable)
        cards = _card_shapes(run)
        for cell in cells:
            if not cell.ok:
                skipped["failed cells"] += 1
                continue
            row = {}
            for key in keys:
                rec = (cell.detectors or {}).get(_label_of(cell, key, run))
                if rec is None or rec.skipped is not None:
                    break
                ran = rec.details.get("params")
                if not isinstance(ran, dict):
                    raise DataError(
                        f"cell {run}/cells/{cell.key}.json records no parameters of {key}; "
                        "re-run that sweep with this eviltwins"
                    )
                first = params.setdefault(key, (f"{run}/cells/{cell.key}", recorded_params(ran)))
                diff = param_difference(first[1], ran)
                if diff is not None:
                    raise ParamError(
                        f"the models were scanned with different {key} settings ({first[0]} "
                        f"and {run}/cells/{cell.key}: {diff}); calibrate each setting apart"
                    )
                row[key] = model_statistic(rec)
            if len(row) < len(keys) or any(v != v for v in row.values()):
                skipped["cells without a statistic"] += 1
                continue
            shape = cards.get((cell.cell.dataset, cell.cell.model))
            if shape is None:
                raise DataError(
                    f"{run}/clean holds no model card of {cell.cell.model} on "
                    f"{cell.cell.dataset}, so the input shape of cell {cell.key} is unknown"
                )
            shapes.setdefault(shape, f"{cell.cell.model} on {cell.cell.dataset}")
            used.append(cell)
            stats.append(row)
    if len(shapes) > 1:
        (a, wa), (b, wb) = list(shapes.items())[:2]
        raise ParamError(
            f"the models take different inputs ({shape_text(a)}: {wa}; {shape_text(b)}: {wb}); "
            "a calibration holds for one input shape: calibrate each apart"
        )
    truth = [c.cell.attack != CLEAN_ATTACK for c in used]
    cal = fit_calibration(
        stats,
        truth,
        keys,
        next(iter(shapes), (0, 0, 0)),
        {k: params[k][1] for k in keys if k in params},
        folds=folds,
        seed=seed,
        source=source if source is not None else _source(runs, used, sum(truth)),
    )
    if out is not None:
        try:
            write_json(out, cal.to_dict())
        except OSError as err:
            raise DataError(f"--out {out} cannot be written ({err.strerror or err})") from None
    return CalibrationRun(
        cal,
        None if out is None else str(shown_path(out.resolve())),
        [str(r) for r in runs],
        len(used),
        {why: n for why, n in skipped.items() if n},
    )


__all__ = ["CLEAN_ATTACK", "CalibrationRun", "calibrate"]
