"""Sweeps: spec validation, the resumable runner, executors (local processes vs Ray give the
same numbers), interruption, and the report (CSV, figures, claims)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from eviltwins.cli import main
from eviltwins.errors import DataError, ParamError, UnknownNameError
from eviltwins.experiments import cells, load_cells, load_spec, run_sweep
from eviltwins.experiments.demo import DEMO_SPEC
from eviltwins.experiments.reporting import write_sweep_report as write_report
from eviltwins.report import pairs

REPO = Path(__file__).resolve().parents[1]

# A tiny but real sweep: digits subset, a few steps per attack (a couple of seconds per cell).
TINY = {
    "name": "tiny",
    "datasets": ["digits"],
    "train_limit": 400,
    "test_limit": 200,
    "clean": {"epochs": 2},
    "attacks": [
        {
            "name": "trojannn",
            "label": "TrojanNN",
            "params": {"epochs": 1000, "max_steps": 6, "trigger_steps": 3},
        },
        {
            "name": "imc",
            "label": "TrojanNN*",
            "params": {"max_steps": 6, "retrain_steps": 3, "outer_iters": 2, "trigger_steps": 3},
        },
    ],
    "sizes": [0.2, 0.3],
    "transparencies": [0.0],
    "detectors": [{"name": "strip"}],
    "n_clean": 50,
}


def tiny(**overrides):
    spec = copy.deepcopy(TINY)
    spec.update(overrides)
    return spec


def _comparable(cell: dict) -> dict:
    """A cell result without timings and environment facts."""
    d = json.loads(json.dumps(cell))
    for k in ("seconds", "versions", "threads", "key"):
        d.pop(k, None)
    d["attack"].pop("seconds", None)
    for rep in d["detectors"].values():
        rep.pop("seconds", None)
        rep.pop("peak_mb", None)  # the worker process's memory, not the result
    return d


# --- spec validation -------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    spec = load_spec(path)
    assert len(cells(spec)) >= 2
    assert spec.name.endswith(("-quick", "-full"))


def test_demo_spec_validates_and_has_both_attacks():
    spec = load_spec(DEMO_SPEC)
    names = {c.attack.name for c in cells(spec)}
    assert {"trojannn", "imc", "none"} <= names
    assert {d.name for d in spec.detectors} == {"neural-cleanse", "strip"}


@pytest.mark.parametrize(
    ("change", "error", "needle"),
    [
        ({"datasets": ["mnits"]}, UnknownNameError, "did you mean 'mnist'"),
        ({"sizes": [0.2, 1.5]}, ParamError, "sizes"),
        ({"transparencies": [1.0]}, ParamError, "transparencies"),
        ({"detectors": [{"name": "strp"}]}, UnknownNameError, "strip"),
        ({"colour": "red"}, ParamError, "colour"),
        ({"clean": {"epoch": 3}}, ParamError, "epoch"),
        ({"name": "a b"}, ParamError, "name"),
        (
            {"attacks": [{"name": "trojannn", "params": {"neurns": 2}}]},
            ParamError,
            "neurns",
        ),
        (
            {"attacks": [{"name": "imc", "params": {"evade": ["neural-cleanse"]}}]},
            ParamError,
            "mode",
        ),
        (
            {"attacks": [{"name": "badnet"}, {"name": "badnet"}]},
            ParamError,
            "unique",
        ),
    ],
)
def test_bad_specs_fail_up_front_with_one_line(change, error, needle):
    with pytest.raises(error) as info:
        load_spec(tiny(**change))
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_cell_keys_track_everything_that_changes_a_result():
    a, b = load_spec(tiny()), load_spec(tiny(n_clean=60))
    assert [c.key(a) for c in cells(a)] == [c.key(a) for c in cells(load_spec(tiny()))]
    assert not {c.key(a) for c in cells(a)} & {c.key(b) for c in cells(b)}
    assert len({c.key(a) for c in cells(a)}) == len(cells(a)) == 4


def test_demo_cell_keys_are_pinned():
    """Cell keys name existing run folders' results: a refactor must not change them (these
    are the keys of the demo as re-planned in issue 15: NeuralCleanse at 120 steps per label,
    STRIP's paper variant only; commit 1550877's keys changed then, on purpose)."""
    spec = load_spec(DEMO_SPEC)
    assert [c.key(spec) for c in cells(spec)] == [
        "digits__cnn__clean__seed0__40b39c348d",
        "digits__cnn__TrojanNN__size0.2__tr0.7__seed0__39fdfee263",
        "digits__cnn__TrojanNN__size0.3__tr0.7__seed0__4d17de49a9",
        "digits__cnn__TrojanNN-star__size0.2__tr0.7__seed0__81f2f1bfde",
        "digits__cnn__TrojanNN-star__size0.3__tr0.7__seed0__f51787504e",
    ]


# --- the runner --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    summary = run_sweep(tiny(), out, threads=1, quiet=True)
    return out, summary


def test_sweep_writes_one_result_per_cell_and_resumes(tiny_run):
    out, summary = tiny_run
    assert summary.total == 4 and len(summary.ran) == 4 and not summary.failed
    assert len(summary.clean_trained) == 1
    results = load_cells(out)
    assert {r.status for r in results} == {"ok"}
    for r in results:
        assert 0 <= r.attack.metrics["asr"] <= 1
        assert "f1" in r.detectors["strip"].metrics
        assert (out / "cells" / r.key / "trigger.png").is_file()
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    again = run_sweep(tiny(), out, threads=1, quiet=True)
    assert again.ran == [] and len(again.skipped) == 4 and again.clean_trained == []
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")} == before


def test_a_failing_cell_is_recorded_and_the_others_finish(tmp_path):
    # mnist is absent from an empty data root: its cells fail, the digits cells still run.
    spec = tiny(datasets=["digits", "mnist"], attacks=TINY["attacks"][:1], sizes=[0.2])
    summary = run_sweep(spec, tmp_path / "run", data_root=tmp_path / "empty", quiet=True)
    assert len(summary.ran) == 1 and len(summary.failed) == 1
    (failed,) = summary.failed.values()
    assert "mnist not found" in failed
    bad = [r for r in load_cells(tmp_path / "run") if r.status == "error"]
    assert len(bad) == 1 and "mnist not found" in bad[0].error
    rep = write_report(tmp_path / "run")
    assert len(rep.failed) == 1
    assert "Failed cells" in (rep.out / "report.md").read_text()


def test_interrupted_sweep_keeps_finished_cells_and_resumes_the_rest(tmp_path):
    spec_file = tmp_path / "sweep.yaml"
    spec = tiny(sizes=[0.1, 0.2, 0.3, 0.4])  # 8 cells
    spec_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "eviltwins", "sweep", str(spec_file), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--threads", "1", "--quiet", "--no-report"],
        env=env,
        # a shell's background job inherits SIGINT ignored; give the sweep a normal Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while len(list((out / "cells").glob("*.json"))) < 2 and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    finished = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    assert 2 <= len(finished) < 8
    resumed = run_sweep(spec, out, threads=1, quiet=True)
    assert len(resumed.skipped) == len(finished)
    assert len(resumed.ran) == 8 - len(finished)
    assert resumed.clean_trained == []  # the clean model was cached before the interrupt
    for name, blob in finished.items():
        assert (out / "cells" / name).read_bytes() == blob


def test_local_processes_and_ray_give_identical_cells(tmp_path):
    pytest.importorskip("ray")
    spec = tiny(sizes=[0.2])
    local = run_sweep(spec, tmp_path / "local", jobs=2, threads=1, quiet=True)
    ray = run_sweep(spec, tmp_path / "ray", executor="ray", threads=1, quiet=True)
    assert len(local.ran) == len(ray.ran) == 2
    a, b = load_cells(tmp_path / "local"), load_cells(tmp_path / "ray")
    assert [c.key for c in a] == [c.key for c in b]
    assert [_comparable(c.to_dict()) for c in a] == [_comparable(c.to_dict()) for c in b]


# --- the report ------------------------------------------------------------------------------
def test_report_writes_csv_figures_and_claims(tiny_run):
    out, _ = tiny_run
    rep = write_report(out)
    names = {p.name for p in rep.figures}
    assert {"fig11_triggers.png", "fig12_asr_vs_size.png"} <= names
    for p in rep.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    csv_lines = (rep.out / "cells.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + 4 and "strip.f1" in csv_lines[0]
    md = (rep.out / "report.md").read_text()
    assert "TrojanNN* >= TrojanNN" in md and "fig12_asr_vs_size.png" in md
    assert "<table>" in (rep.out / "report.html").read_text()
    assert len(pairs(rep.rows)) == 2


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_sweep_check_and_report(tiny_run, tmp_path, capsys):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(tiny()))
    assert main(["sweep", str(spec_file), "--check"]) == 0
    assert "tiny: 4 cells, valid" in capsys.readouterr().out
    out, _ = tiny_run
    assert main(["report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cells"] == 4
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eviltwins: error:") and "\n" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny(sizes=[2.0])))
    assert main(["sweep", str(bad)]) == 2
    assert "sizes" in capsys.readouterr().err


def test_report_refuses_a_folder_without_cells(tmp_path):
    with pytest.raises(DataError, match="eviltwins sweep"):
        write_report(tmp_path)


def test_a_finished_pool_lets_its_workers_exit_instead_of_terminating_them(monkeypatch):
    """When every task is done the idle workers exit on their own (exit code 0); terminating
    them (SIGTERM) left their queues' semaphores to a resource-tracker warning after a
    ``--jobs 2`` sweep."""
    import operator

    from eviltwins.experiments import executors

    pools = []

    class Recorded(executors.ProcessPoolExecutor):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            pools.append(self)

        def shutdown(self, *a, **kw):
            self.seen = list(self._processes.values())
            super().shutdown(*a, **kw)

    monkeypatch.setattr(executors, "ProcessPoolExecutor", Recorded)
    args = [(1, 2), (3, 4), (5, 6)]
    assert sorted(executors.LocalExecutor(jobs=2).imap(operator.add, args)) == [
        (0, 3), (1, 7), (2, 11)
    ]  # fmt: skip
    (pool,) = pools
    for proc in pool.seen:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in pool.seen] == [0, 0]
