"""The benchmark's parent process: the prepared models (cached), the hardware and its measured
peak, one subprocess per row, the table (printed, and written as JSON and Markdown)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.floors import measure_peak

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (
    ("model", "model"),
    ("method", "method"),
    ("device", "device"),
    ("wall_s", "wall (s)"),
    ("floor_s", "eager floor (s)"),
    ("speed_vs_floor", "speed vs floor"),
    ("speed_vs_tuned_floor", "vs floor, tuned allocator"),
    ("gflop", "GFLOP"),
    ("hw_floor_s", "hardware floor (s)"),
    ("share_of_peak", "share of peak"),
    ("peak_rss_mb", "peak RSS (MB)"),
    ("verdict", "verdict"),
)


def log(msg: str, quiet: bool = False) -> None:
    """A progress line on stderr (none with ``quiet``)."""
    if not quiet:
        print(f"[benchmarks] {msg}", file=sys.stderr, flush=True)


def _has_model(folder: Path, dataset: str) -> bool:
    from eviltwins.errors import EviltwinsError
    from eviltwins.io.state import read_card

    if not (folder / "model.json").is_file():
        return False
    try:
        return read_card(folder).dataset == dataset
    except EviltwinsError:
        return False


def prepare(
    arch: str, dataset: str, out: Path, device: str, quick: bool, fresh: bool, quiet: bool
) -> Path:
    """``out/<arch>/clean`` (a clean model, the dataset's default epochs; 3 with ``quick``) and
    ``out/<arch>/badnet`` (BadNet 0.15 opaque white, target 0, fine-tuned from it for 1 epoch;
    3 on digits with ``quick``), reused when present for the same dataset unless ``fresh``."""
    import eviltwins as et

    folder = out / arch
    clean, bad = folder / "clean", folder / "badnet"
    rebuilt = False
    if fresh or not _has_model(clean, dataset):
        log(f"training a clean {arch} on {dataset} -> {clean}", quiet)
        t = time.perf_counter()
        epochs = 3 if quick else None
        et.train(dataset, arch, epochs=epochs, device=device, out=clean, overwrite=True, quiet=True)
        log(f"  done in {time.perf_counter() - t:.1f} s", quiet)
        rebuilt = True
    if rebuilt or not _has_model(bad, dataset) or not (bad / "trigger.safetensors").is_file():
        log(f"BadNet (size 0.15, opaque, target 0) from {clean} -> {bad}", quiet)
        t = time.perf_counter()
        params = {"size": 0.15, "epochs": 3 if quick else 1}
        et.attack(
            "badnet",
            clean,
            dataset,
            params=params,
            out=bad,
            device=device,
            overwrite=True,
            quiet=True,
        )
        log(f"  done in {time.perf_counter() - t:.1f} s", quiet)
    return folder


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(devices: Sequence[str]) -> dict[str, Any]:
    """CPU name, cores, torch threads, torch and Python versions, and the GPU's name."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "devices": list(devices),
    }
    if "cuda" in devices:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peaks(devices: Sequence[str], quick: bool) -> dict[str, dict[str, Any]]:
    """The measured fp32 peak of each device (:func:`benchmarks.floors.measure_peak`)."""
    out = {}
    for dev in devices:
        n = (1024 if dev == "cpu" else 4096) if quick else None
        out[dev] = measure_peak(torch.device(dev), n, repeats=3 if quick else 5)
    return out


def run_row(cfg: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Run one row in a fresh ``python -m benchmarks.row`` process; its JSON line, or a row
    with ``error`` when it failed."""
    cmd = [sys.executable, "-m", "benchmarks.row", "--json", json.dumps(cfg)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    log(f"  row failed (exit {proc.returncode}): {tail}", quiet=False)
    return {**cfg, "error": tail, "verdict": f"error: {tail}"}


def finish(row: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
    """Add the hardware columns: the peak used, the hardware floor and the share of it."""
    flops, wall, fps = row.get("flops"), row.get("wall_s"), peak["flops_per_s"]
    row["peak_flops_per_s"] = fps
    row["hw_floor_s"] = flops / fps if flops is not None else None
    row["share_of_peak"] = flops / wall / fps if flops is not None and wall else None
    return row


def _cell(key: str, row: dict[str, Any]) -> str:
    v = row.get("flops") / 1e9 if key == "gflop" and row.get("flops") is not None else row.get(key)
    if v is None:
        return ""
    if key == "method":
        return str(row.get("label", v))
    if key in ("speed_vs_floor", "speed_vs_tuned_floor"):
        return f"{v:.2f}x"
    if key == "share_of_peak":
        return f"{100 * v:.1f}%"
    if key in ("wall_s", "floor_s", "hw_floor_s"):
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    if key in ("gflop", "peak_rss_mb"):
        return f"{v:,.0f}" if v >= 10 else f"{v:.2f}"
    return str(v).replace("|", "/")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as one Markdown table (the columns of :data:`COLUMNS`)."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_cell(k, r) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def serial_speedups(rows: Sequence[dict[str, Any]]) -> list[str]:
    """NeuralCleanse batched vs one label at a time (``nc`` and ``nc-serial`` rows of the same
    model and device): one line each, the serial wall time over the batched one."""
    wall = {(r["model"], r["device"], r["method"]): r.get("wall_s") for r in rows}
    lines = []
    for (model, device, method), t in wall.items():
        serial = wall.get((model, device, "nc-serial"))
        if method == "nc" and t and serial:
            lines.append(
                f"NeuralCleanse on {model} ({device}): batched {t:.2f} s, one label at a time "
                f"{serial:.2f} s: {serial / t:.2f}x"
            )
    return lines


def format_hardware(hw: dict[str, Any], peak: dict[str, dict[str, Any]]) -> str:
    """One line on the machine and the measured peak of each device."""
    parts = [
        f"CPU: {hw['cpu']} ({hw['cpu_count']} cores, {hw['threads']} torch threads)",
        f"torch {hw['torch']}, Python {hw['python']}",
    ]
    if hw.get("gpu"):
        parts.append(f"GPU: {hw['gpu']}")
    for dev, p in peak.items():
        parts.append(f"{dev} fp32 peak {p['flops_per_s'] / 1e9:,.1f} GFLOP/s ({p['n']}^3 matmul)")
    return "; ".join(parts)


def write_results(
    out: Path, hw: dict[str, Any], peak: dict[str, Any], rows: list[dict[str, Any]], argv: list[str]
) -> tuple[Path, Path]:
    """``results.json`` (hardware, peaks, rows, command) and ``results.md`` under ``out``."""
    from eviltwins.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks " + " ".join(argv)
    doc = {"command": command.strip(), "hardware": hw, "peaks": peak, "rows": rows}
    js, md = out / "results.json", out / "results.md"
    write_json(js, doc)
    extra = "".join(f"\n{line}\n" for line in serial_speedups(rows))
    md.write_text(
        f"`{command.strip()}`\n\n{format_hardware(hw, peak)}\n\n{format_table(rows)}\n{extra}"
    )
    return js, md
