"""One benchmark row in its own process: ``python -m benchmarks.row --json '{...}'``.

The configuration (JSON): ``model`` (architecture name), ``method`` (see
:data:`benchmarks.methods.METHODS`), ``device`` (cpu / cuda), ``dataset``, ``models_dir``
(holding ``clean/`` and ``badnet/``, see :mod:`benchmarks.harness`) and ``quick``.

Order: load the dataset (in memory) and the model; time the eager floor's passes (glibc's
allocator at its defaults: the toolkit's allocator settings, :mod:`eviltwins.allocator`, come
with the method); drop the floor's memory and reset the process's peak-RSS mark (Linux
``/proc/self/clear_refs``); run the method and read the peak (the whole process: interpreter,
torch, model, data and the method's work); time any pass whose batch the method decided (ABS's
candidates) in a fresh process (``--floor``), again at the allocator's defaults; then time the
floor's passes once more in this process, now under the method's allocator settings (the
``floor_tuned_s`` column: what plain eager PyTorch gets from the same settings). Prints one
JSON line (the row) on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks import floors, methods


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Free what can be freed and restart the peak-RSS mark at the current RSS (Linux);
    False where the mark cannot be reset (the peak then covers the whole run)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_rss_mb() -> float | None:
    """The process's resident set size now (MiB; VmRSS), None where it cannot be read."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    """The process's peak resident set size (MiB) since the last reset (VmHWM), else
    ``ru_maxrss``."""
    hwm = _status_kb("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return hwm / 1024


def _load(cfg: dict[str, Any]) -> tuple[Any, Any, Any, torch.device]:
    """The row's dataset spec, model (BadNet for a detector, else clean), the model's folder
    and device."""
    import eviltwins as et

    device = torch.device(cfg["device"])
    spec = et.load_dataset(cfg["dataset"])
    detector = cfg["method"] in methods.DETECTORS
    folder = Path(cfg["models_dir"]) / ("badnet" if detector else "clean")
    model, _ = et.load_model(folder, device)
    return spec, model, folder, device


def _floor_images(spec: Any) -> torch.Tensor:
    from eviltwins.data import load_all

    return load_all(spec.test, limit=2048)[0].clone()  # not a view of the whole split


def _timing_kw(quick: bool) -> dict[str, float]:
    """:func:`benchmarks.floors.time_phase` options: a few iterations only in a quick run."""
    return {"min_iters": 3, "min_seconds": 0.05} if quick else {}


def floor_in_child(cfg: dict[str, Any], phases: list[floors.Phase]) -> dict:
    """Time ``phases`` in a fresh process with the allocator at glibc's defaults; the
    timings dict of :func:`benchmarks.floors.time_phases`."""
    job = {**cfg, "phases": [asdict(ph) for ph in phases]}
    env = {**os.environ, "EVILTWINS_MALLOC_TUNING": "0"}
    cmd = [sys.executable, "-m", "benchmarks.row", "--floor", "--json", json.dumps(job)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    return {(kind, batch): floors.Timing(*t) for kind, batch, *t in rows}


def floor_only(cfg: dict[str, Any]) -> list[list[Any]]:
    """``--floor``: time the configuration's ``phases`` (no method run)."""
    spec, model, _, _ = _load(cfg)
    phases = [floors.Phase(**ph) for ph in cfg["phases"]]
    kw = _timing_kw(bool(cfg.get("quick", False)))
    timings = floors.time_phases(model, _floor_images(spec), phases, spec.num_classes, **kw)
    return [[kind, batch, *asdict(t).values()] for (kind, batch), t in timings.items()]


def run_row(cfg: dict[str, Any]) -> dict[str, Any]:
    """Floor, method, verdict for one (model, method, device): the row's dict (see
    ``benchmarks/__init__.py`` for the schema)."""
    from eviltwins import allocator
    from eviltwins.triggers import Trigger

    method, quick = cfg["method"], bool(cfg.get("quick", False))
    spec, model, folder, device = _load(cfg)
    trigger = Trigger.load(folder / "trigger.safetensors") if method.startswith("strip") else None
    ctx = methods.Context(model, spec, trigger, device, quick)
    est = methods.build(method, quick)
    timing_kw = _timing_kw(quick)
    x = _floor_images(spec)
    k = spec.num_classes
    before = methods.phases(method, est, ctx)
    timings = floors.time_phases(model, x, before, k, **timing_kw)
    reset = reset_peak_rss()
    rss_start = current_rss_mb() or 0.0
    result, wall = methods.run(method, est, ctx)
    peak = peak_rss_mb()
    tuned = allocator.reuse_freed_memory()
    after = methods.phases(method, est, ctx, result)
    missing = [ph for ph in after if (ph.kind, ph.batch) not in timings and ph.count > 0]
    if missing:
        timings.update(floor_in_child(cfg, missing))
    floor = floors.floor_of(after, timings)
    floor_tuned = floors.floor_of(after, floors.time_phases(model, x, after, k, **timing_kw))
    line, ok, details = methods.verdict(method, result)
    return {
        "model": cfg["model"],
        "method": method,
        "label": methods.LABELS[method],
        "device": str(device),
        "dataset": spec.name,
        "quick": quick,
        "wall_s": wall,
        "floor_s": floor["floor_s"],
        "speed_vs_floor": floor["floor_s"] / wall if wall > 0 else None,
        "allocator_tuned": tuned,
        "floor_tuned_s": floor_tuned["floor_s"],
        "speed_vs_tuned_floor": floor_tuned["floor_s"] / wall if wall > 0 else None,
        "flops": floor["flops"],
        "peak_rss_mb": peak,
        "rss_at_start_mb": rss_start,
        "rss_peak_reset": reset,
        "verdict": line,
        "ok": ok,
        "threads": torch.get_num_threads(),
        "floor_phases": floor["phases"],
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="One benchmark row (JSON in, one JSON line out).")
    ap.add_argument("--json", required=True, help="the row's configuration as a JSON object")
    ap.add_argument(
        "--floor", action="store_true", help="only time the configuration's 'phases' (no method)"
    )
    args = ap.parse_args(argv)
    cfg = json.loads(args.json)
    row: Any = floor_only(cfg) if args.floor else run_row(cfg)
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
