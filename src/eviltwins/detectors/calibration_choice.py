"""Which calibration gives a scan its p(trojan): the ones shipped with eviltwins
(``calibrations/*.json`` beside this module) matched to the scan's input shape, inspectors and
their settings, or the user's own file, checked against the scan
(:mod:`eviltwins.detectors.calibration` defines and fits a calibration)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from eviltwins.detectors.calibration import (
    Calibration,
    param_difference,
    parse_calibration,
    shape_text,
)
from eviltwins.errors import ParamError


@functools.lru_cache(maxsize=1)
def shipped_calibrations() -> tuple[Calibration, ...]:
    """The calibrations shipped with eviltwins (``calibrations/*.json`` beside this module)."""
    from importlib.resources import files

    folder = files("eviltwins.detectors").joinpath("calibrations")
    found = sorted((p for p in folder.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)
    return tuple(parse_calibration(p.read_bytes(), f"shipped {p.name}") for p in found)


def matching_calibration(
    input_shape: Sequence[int],
    detectors: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    candidates: Sequence[Calibration] | None = None,
) -> tuple[Calibration | None, str]:
    """The calibration among ``candidates`` (default: the shipped ones) that applies to a scan
    of inputs ``input_shape`` by ``detectors`` with ``params`` (detector -> resolved
    parameters): same input shape, its detectors all scanned, each run with the parameters it
    was fitted with (:data:`NEUTRAL_PARAMS` aside); the one with most detectors wins. Returns
    it and an empty reason, or None and why none applies."""
    shape = tuple(int(s) for s in input_shape)
    pool = shipped_calibrations() if candidates is None else tuple(candidates)
    near = [c for c in pool if c.input_shape == shape and set(c.detectors) <= set(detectors)]
    near.sort(key=lambda c: -len(c.detectors))
    why = ""
    for cal in near:
        diffs = [
            f"{d} {diff}"
            for d in cal.detectors
            if (diff := param_difference(cal.params[d], params.get(d, {}))) is not None
        ]
        if not diffs:
            return cal, ""
        why = why or f" (one was fitted with {diffs[0]})"
    settings = " with these settings" if near else ""
    on = f"{', '.join(detectors)} on {shape_text(shape)} inputs"
    return None, f"no calibration for {on}{settings}{why}"[:300]


def shipped_calibration(
    input_shape: Sequence[int],
    detectors: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
) -> Calibration | None:
    """The shipped calibration that applies to such a scan (:func:`matching_calibration`),
    else None: one fitted with other inspector settings does not apply."""
    return matching_calibration(input_shape, detectors, params)[0]


def check_calibration(cal: Calibration, detectors: Sequence[str], input_shape: Any = None) -> None:
    """Refuse (one :class:`~eviltwins.errors.ParamError` line) a calibration that cannot give
    this scan's p(trojan): one of its detectors not scanned, or fitted for other inputs."""
    missing = [d for d in cal.detectors if d not in detectors]
    if missing:
        raise ParamError(
            f"the calibration combines {', '.join(cal.detectors)}, but the scan does not run "
            f"{', '.join(missing)}: add it to --detectors, or use another calibration"
        )
    if input_shape is not None and tuple(input_shape) != tuple(cal.input_shape):
        raise ParamError(
            f"the calibration was fitted for {shape_text(cal.input_shape)} inputs, but the model "
            f"takes {shape_text(input_shape)}: use a calibration fitted for its inputs"
        )


def scan_calibration(
    calibration: Calibration | str | None,
    detectors: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    input_shape: Sequence[int],
) -> tuple[Calibration | None, dict[str, Any]]:
    """The calibration a scan uses and what its report records of it: ``"auto"``, the shipped
    one that applies (same inputs, detectors and settings), if any; ``"none"`` or None, none;
    a :class:`~eviltwins.detectors.calibration.Calibration`, that one (checked by
    :func:`check_calibration`; settings other than the scan's are noted, not refused)."""
    if isinstance(calibration, Calibration):
        check_calibration(calibration, detectors, input_shape)
        about = {**calibration.describe(), "origin": "given"}
        notes = [
            f"{d} was fitted with {diff}"
            for d in calibration.detectors
            if (diff := param_difference(calibration.params[d], params.get(d, {}))) is not None
        ]
        if notes:
            about["note"] = "; ".join(notes)
        return calibration, about
    if calibration in (None, "none"):
        return None, {"reason": "calibration turned off (calibration none)"}
    if calibration != "auto":
        raise ParamError(
            f"calibration must be 'auto', 'none' or a calibration file; got {calibration!r}"[:200]
        )
    cal, reason = matching_calibration(input_shape, detectors, params)
    if cal is None:
        return None, {"reason": reason}
    return cal, {**cal.describe(), "origin": "shipped"}


__all__ = [
    "check_calibration",
    "matching_calibration",
    "scan_calibration",
    "shipped_calibration",
    "shipped_calibrations",
]
