"""The paper's experiments: ``sweep``, ``write_sweep_report`` and the ``demo``."""

from __future__ import annotations

import os
from typing import Any

from eviltwins.experiments.options import RunOptions


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
