"""One benchmark row in its own process: ``python -m benchmarks.row --json '{...}'``.

The configuration (JSON): ``model`` (architecture name), ``method`` (see
:data:`benchmarks.methods.METHODS`), ``device`` (cpu / cuda), ``dataset``, ``models_dir``
(holding ``clean/`` and ``badnet/``, see :mod:`benchmarks.harness`) and ``quick``.

Order: load the dataset (in memory) and the model; time the eager floor's passes; drop the
floor's memory and reset the process's peak-RSS mark (Linux ``/proc/self/clear_refs``); run the
method and read the peak (the whole process: interpreter, torch, model, data and the method's
work); then time any pass whose batch the method decided (ABS's candidates). Prints one JSON
line (the row) on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import resource
import sys
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


def peak_rss_mb() -> float:
    """The process's peak resident set size (MiB) since the last reset (VmHWM), else
    ``ru_maxrss``."""
    hwm = _status_kb("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return hwm / 1024


def run_row(cfg: dict[str, Any]) -> dict[str, Any]:
    """Floor, method, verdict for one (model, method, device): the row's dict (see
    ``benchmarks/__init__.py`` for the schema)."""
    import eviltwins as et
    from eviltwins.data import load_all
    from eviltwins.triggers import Trigger

    method, quick = cfg["method"], bool(cfg.get("quick", False))
    device = torch.device(cfg["device"])
    spec = et.load_dataset(cfg["dataset"])
    folder = Path(cfg["models_dir"]) / ("badnet" if method in methods.DETECTORS else "clean")
    model, _ = et.load_model(folder, device)
    trigger = Trigger.load(folder / "trigger.safetensors") if method.startswith("strip") else None
    ctx = methods.Context(model, spec, trigger, device, quick)
    est = methods.build(method, quick)
    timing_kw = {"min_iters": 3, "min_seconds": 0.05} if quick else {}
    x = load_all(spec.test, limit=2048)[0].clone()  # not a view of the whole split
    k = spec.num_classes
    before = methods.phases(method, est, ctx)
    timings = floors.time_phases(model, x, before, k, **timing_kw)
    reset = reset_peak_rss()
    rss_start = (_status_kb("VmRSS") or 0) / 1024
    result, wall = methods.run(method, est, ctx)
    peak = peak_rss_mb()
    after = methods.phases(method, est, ctx, result)
    timings = floors.time_phases(model, x, after, k, timings, **timing_kw)
    floor = floors.floor_of(after, timings)
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
    args = ap.parse_args(argv)
    row = run_row(json.loads(args.json))
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
