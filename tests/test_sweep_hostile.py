"""Sweeps and reports against failures, hostile inputs and misuse (issue 12): failed cells exit
non-zero, user models are checked without importing them, one sweep per run folder, workers die
with the driver, unusable cell files are named and recomputed, flags and --out are refused up
front."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from eviltwins.cli import main
from eviltwins.errors import EviltwinsError, ParamError
from eviltwins.experiments import is_finished, load_cells, run_sweep
from eviltwins.experiments.reporting import write_sweep_report as write_report
from eviltwins.experiments.store import CellFileError, read_cell, scan_cells

REPO = Path(__file__).resolve().parents[1]

# One real cell: digits subset, a few TrojanNN steps, STRIP (about 5 s).
ONE = {
    "name": "one",
    "datasets": ["digits"],
    "train_limit": 400,
    "test_limit": 200,
    "clean": {"epochs": 2},
    "attacks": [
        {"name": "trojannn", "label": "TrojanNN", "params": {"max_steps": 6, "trigger_steps": 3}}
    ],
    "sizes": [0.2],
    "transparencies": [0.0],
    "detectors": [{"name": "strip"}],
    "n_clean": 50,
}


def spec(**overrides):
    s = copy.deepcopy(ONE)
    s.update(overrides)
    return s


def write_spec(tmp_path: Path, **overrides) -> Path:
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(spec(**overrides)))
    return f


@pytest.fixture
def failing(tmp_path):
    """A spec whose only cell fails at once (mnist is absent from an empty data root), and the
    flags that point the sweep at that root."""
    empty = tmp_path / "empty"
    empty.mkdir()
    return write_spec(tmp_path, datasets=["mnist"]), ["--data-root", str(empty)]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("eviltwins: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_run") / "run"
    summary = run_sweep(spec(), out, threads=1, quiet=True)
    assert len(summary.ran) == 1
    return out


@pytest.fixture
def run_copy(one_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_run, out)
    (cell,) = (out / "cells").glob("*.json")
    return out, cell


# --- 1. failed cells exit non-zero ---------------------------------------------------------------
def test_cli_sweep_with_a_failed_cell_exits_2_with_one_summary_line(failing, tmp_path, capsys):
    spec_file, flags = failing
    out = tmp_path / "run"
    code = main(["sweep", str(spec_file), "--out", str(out), "--quiet", *flags])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "1 failed" in captured.out  # the summary is still printed
    err = captured.err.strip()
    assert (
        err.startswith("eviltwins: error: 1 of 1 cells failed (first: mnist__") and "\n" not in err
    )
    assert "mnist not found" in err and "finished cells are kept, re-run to retry" in err
    # the Python API still returns the summary; the caller decides
    summary = run_sweep(spec_file, out, data_root=flags[1], quiet=True)
    assert len(summary.failed) == 1 and summary.failure_line() is not None


def test_cli_demo_with_failed_cells_exits_2(tmp_path, monkeypatch, capsys):
    import eviltwins.experiments.demo as demo

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("EVILTWINS_DATA", str(empty))
    monkeypatch.setattr(demo, "demo_spec", lambda **kw: spec(datasets=["mnist"], **kw))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quiet"]) == 2
    assert "1 of 1 cells failed" in one_line_error(capsys)


# --- 2. user models checked without importing them -----------------------------------------------
def test_sweep_check_never_imports_a_user_model_and_says_it_will(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "lib" / "evil_twins_probe_pkg"
    pkg.mkdir(parents=True)
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "nets.py").write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    f = write_spec(tmp_path, models=["cnn", "evil_twins_probe_pkg.nets:Net"])
    assert main(["sweep", str(f), "--check"]) == 0
    out = capsys.readouterr().out
    assert "one: 2 cells, valid" in out
    assert "note: model 'evil_twins_probe_pkg.nets:Net' is user code" in out
    assert "'evil_twins_probe_pkg.nets' is imported when the sweep runs" in out
    assert not marker.exists() and "evil_twins_probe_pkg" not in sys.modules
    assert main(["sweep", str(f), "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["user_models"] == ["evil_twins_probe_pkg.nets:Net"]


def test_a_sweep_of_a_user_model_runs_and_resumes(tmp_path, monkeypatch):
    pkg = tmp_path / "lib" / "evil_twins_user_nets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(32 * 32, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    user = spec(
        models=["evil_twins_user_nets:Net"],
        attacks=[{"name": "badnet", "params": {"epochs": 1}}],
        clean={"epochs": 1},
    )
    summary = run_sweep(user, tmp_path / "run", threads=1, quiet=True)
    assert summary.failed == {} and len(summary.ran) == 1
    again = run_sweep(user, tmp_path / "run", threads=1, quiet=True)  # cached clean model
    assert len(again.skipped) == 1


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"models": ["pkg..mod:Net"]}, "package.module:ClassName"),
        ({"models": ["a.b:C:D"]}, "package.module:ClassName"),
        ({"models": ["class.nets:Net"]}, "package.module:ClassName"),
        ({"models": ["nets:Net\n"]}, "package.module:ClassName"),
        ({"models": ["/etc/passwd:X"]}, "package.module:ClassName"),
        ({"models": ["cnnn"]}, "did you mean 'cnn'"),
        ({"models": ["cnn", "CNN"]}, "unique"),
        ({"clean": {"arch_kwargs": {"widht": 16}}}, "takes no option 'widht'"),
        ({"clean": {"arch_kwargs": {"width": "wide"}}}, "must be int"),
        ({"clean": {"arch_kwargs": {"in_channels": 3}}}, "set from the dataset"),
        ({"clean": {"arch_kwargs": [16]}}, "must be a mapping"),
    ],
)
def test_bad_architecture_names_and_options_are_one_line(tmp_path, capsys, change, needle):
    f = write_spec(tmp_path, **change)
    assert main(["sweep", str(f), "--check"]) == 2
    assert needle in one_line_error(capsys)


def _star(dataset_params) -> dict:
    """A TrojanNN* entry (STRIP evasion) with ``dataset_params``."""
    params = {"evade": ["strip"], "outer_iters": 2, "retrain_steps": 3, "max_steps": 6}
    return {"name": "imc", "label": "TrojanNN*", "params": params, "dataset_params": dataset_params}


@pytest.mark.parametrize(
    ("dataset_params", "needle"),
    [
        ("gtsrb", "'dataset_params' parameter (in attacks.1)"),
        ({"digits": 0.2}, "mappings of parameter names to values"),
        ({1: {"evade": {"strip": 0.2}}}, "a mapping of dataset names"),
        ({"gtsrb": {"evade": {"strip": 0.2}}}, "names 'gtsrb', not a dataset of the sweep"),
        ({"digits": {"size": 0.5}}, "cannot set 'size'"),
        ({"digits": {"evade": {"strip": -1}}}, "attack 'TrojanNN*' on digits: The 'evade'"),
        ({"digits": {"evade": {"strip": 10**400}}}, "'evade'"),
        ({"digits": {"evade": {"strp": 0.2}}}, "did you mean 'strip'"),  # the registry's hint
        ({"digits": {"trigger_rl": 0.2}}, "trigger_lr"),  # the registry's typo hint
        ({"digits": {"max_steps": 5}}, "different budgets"),  # its pair re-trains 6 steps
    ],
)
def test_bad_dataset_params_are_one_line_before_any_work(tmp_path, capsys, dataset_params, needle):
    """Per-dataset attack parameters are as strict and bounded as the rest of the spec: keys
    name datasets of the sweep, values go through the attack's own constraints there."""
    trojannn = {"name": "trojannn", "label": "TrojanNN", "params": {"epochs": 1000, "max_steps": 6}}
    f = write_spec(tmp_path, attacks=[trojannn, _star(dataset_params)])
    assert main(["sweep", str(f), "--check"]) == 2
    assert needle in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


def test_dataset_params_name_a_path_dataset_as_the_datasets_do(tmp_path, monkeypatch):
    from eviltwins.experiments import cells, load_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.npz").write_bytes(b"")  # validation only checks that it exists
    raw = spec(
        datasets=["digits", "mine.npz"], attacks=[_star({"./mine.npz": {"trigger_lr": 0.2}})]
    )
    loaded = load_spec(raw)
    lrs = {c.dataset: c.attack_params(loaded).get("trigger_lr") for c in cells(loaded)}
    assert lrs == {"digits": None, str((tmp_path / "mine.npz").resolve()): 0.2}
    twice = _star({"mine.npz": {"trigger_lr": 0.2}, "./mine.npz": {"trigger_lr": 0.3}})
    with pytest.raises(ParamError, match="names a dataset twice"):
        load_spec(spec(datasets=["digits", "mine.npz"], attacks=[twice]))
    with pytest.raises(ParamError, match="takes no params"):
        load_spec(spec(attacks=[{"name": "none", "dataset_params": {"digits": {"epochs": 1}}}]))


# --- 3. one sweep per run folder -----------------------------------------------------------------
def test_a_second_sweep_into_a_folder_in_use_is_refused(failing, tmp_path, capsys):
    spec_file, flags = failing
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # another sweep (any process) holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        assert main(["sweep", str(spec_file), "--out", str(out), "--quiet", *flags]) == 2
        assert one_line_error(capsys).endswith(
            f"another sweep is running in {out} (pid 4242); wait for it or use another --out"
        )
        assert not list((out / "cells").glob("*.json"))  # it computed nothing
    # the lock dies with its holder: a stale .lock file blocks nothing
    assert main(["sweep", str(spec_file), "--out", str(out), "--quiet", *flags]) == 2
    assert "cells failed" in one_line_error(capsys)
    assert len(list((out / "cells").glob("*.json"))) == 1


# --- 4. workers die with the driver --------------------------------------------------------------
def _children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` (from /proc): pid -> command line."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(d.name)] = cmd
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _threads(pid: int) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(x.split()[1]) for x in lines if x.startswith("Threads:")), 0)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")
def test_sigkill_of_the_driver_ends_its_worker_processes(tmp_path):
    # two clean models (two seeds) that train for minutes: both go to the 2 worker processes
    f = write_spec(tmp_path, seeds=[0, 1], clean={"epochs": 500})
    cmd = [sys.executable, "-m", "eviltwins", "sweep", str(f), "--out", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [*cmd, "--jobs", "2", "--threads", "1", "--quiet", "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: dict[int, str] = {}
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            assert driver.poll() is None, "the sweep ended early"
            workers = {p: c for p, c in _children(driver.pid).items() if "spawn_main" in c}
            # past their imports (a single thread until then), on to the task
            if len(workers) == 2 and all(_threads(p) >= 2 for p in workers):
                break
            time.sleep(0.2)
        time.sleep(1)
        assert workers, "no worker process started"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.time() + 5
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "workers outlived the driver"
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# --- 5/6. unusable cell files --------------------------------------------------------------------
def test_report_names_a_truncated_cell_file_and_the_sweep_recomputes_it(run_copy, capsys):
    out, cell = run_copy
    text = cell.read_text()
    cell.write_text(text[: len(text) // 2])
    name = f"cells/{cell.name}"
    assert main(["report", str(out)]) == 2  # its only cell is unreadable: nothing to report
    assert "1 unreadable" in one_line_error(capsys)
    (out / "cells" / "other.json").write_text(text)  # a second, intact cell
    rep = write_report(out)
    assert len(rep.rows) == 1 and rep.unreadable == {name: "not valid JSON"}
    line = f"1 cell file unreadable: {name} (not valid JSON); re-run the sweep to recompute it"
    assert line in rep.summary()
    md = (rep.out / "report.md").read_text()
    assert line in md and "1 finished cells, 0 failed, 1 cell file unreadable" in md
    assert json.loads((rep.out / "report.json").read_text())["unreadable"] == rep.unreadable
    again = run_sweep(spec(), out, threads=1, quiet=True)
    assert again.ran == [cell.stem] and again.unreadable == {cell.stem: "not valid JSON"}
    assert is_finished(cell) and json.loads(cell.read_text())["status"] == "ok"


def test_cli_report_warns_on_stderr_about_an_unreadable_cell_file(run_copy, capsys):
    out, cell = run_copy
    (out / "cells" / "x.json").write_text('{"status": "ok", "ce')
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert (
        "eviltwins: warning: cell file cells/x.json unreadable (not valid JSON); re-run the "
        "sweep to recompute it" in captured.err
    )
    assert "1 cell file unreadable: cells/x.json (not valid JSON)" in captured.out


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"status": "ok"}',
        '{"status": "ok", "cell": 5}',
        '{"status": "ok", "cell": {"dataset": "digits"}}',
    ],
)
def test_a_cell_file_of_the_wrong_shape_is_recomputed_not_a_crash(run_copy, content):
    out, cell = run_copy
    cell.write_text(content)
    assert not is_finished(cell)
    rows, unreadable = scan_cells(out)
    assert rows == [] and list(unreadable) == [f"cells/{cell.name}"]
    again = run_sweep(spec(), out, threads=1, quiet=True)
    assert again.ran == [cell.stem] and is_finished(cell)


def _good(cell: Path) -> dict:
    return json.loads(cell.read_text())


def _with(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *head, last = path.split(".")
    node = d
    for k in head:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[int(last) if isinstance(node, list) else last] = value
    return d


MALFORMED = {
    "list": "[]",
    "null": "null",
    "string": '"ok"',
    "number": "5",
    "empty": "",
    "truncated": None,  # the good cell cut in half
    "nan-literal": '{"status": "ok", "cell": NaN}',
    "infinity": '{"status": "ok", "cell": {"seed": Infinity}}',
    "invalid-utf8": b'{"status": "\xff\xfe"}',
    "deeply-nested": "[" * 100_000 + "]" * 100_000,
    "status-only": '{"status": "ok"}',
    "cell-is-number": '{"status": "ok", "cell": 5}',
    "status-unknown": ("status", "done"),
    "seed-string": ("cell.seed", "0"),
    "seed-bool": ("cell.seed", True),
    "size-huge": ("cell.size", 1e308),
    "size-string": ("cell.size", "big"),
    "params-list": ("cell.params", [1]),
    "init-number": ("cell.params", {"init": 5}),
    "detectors-list": ("detectors", [1, 2]),
    "detector-number": ("detectors.strip", 5),
    "filter-without-metrics": ("detectors.strip", {"kind": "filter"}),
    "metrics-list": ("attack.metrics", [0.5]),
    "attack-null": ("attack", None),
    "flagged-number": ("detectors.strip.flagged", 5),
    "steps-strings": ("detectors.strip.details", {"steps": ["a"]}),
    "cell-detectors-dict": ("cell.detectors", {"name": "strip"}),
    "target-float": ("target", 0.5),
    # null where the readers take a dict or a list (the report would crash on it)
    "params-null": ("cell.params", None),
    "cell-detectors-null": ("cell.detectors", None),
    "entry-params-null": ("cell.detectors.0.params", None),
    "metrics-null": ("attack.metrics", None),
    "details-null": ("detectors.strip.details", None),
    "flagged-null": ("detectors.strip.flagged", None),
}
# valid shapes with odd values: the report must take them in its stride
ODD_BUT_VALID = {
    "huge-metric": ("attack.metrics.asr", 10**400),
    "huge-seed": ("cell.seed", 10**30),
    "infinite-metric": ("attack.metrics.efficacy", "1e999"),
    "string-metric": ("attack.metrics.asr", "high"),
    "extra-fields": ("surprise", {"a": [1, 2]}),
}


def _write_case(cell: Path, target: Path, case) -> None:
    if case is None:
        text = cell.read_text()
        target.write_text(text[: len(text) // 2])
    elif isinstance(case, bytes):
        target.write_bytes(case)
    elif isinstance(case, str):
        target.write_text(case)
    else:
        path, value = case
        if value == "1e999":
            body = json.dumps(_with(_good(cell), path, 0.123456)).replace("0.123456", "1e999")
            target.write_text(body)
        else:
            target.write_text(json.dumps(_with(_good(cell), path, value)))


def test_hostile_cell_files_give_one_line_errors_or_a_named_skip_never_a_crash(run_copy):
    out, cell = run_copy
    target = out / "cells" / "x.json"
    cases = {**MALFORMED, **ODD_BUT_VALID}
    for name, case in cases.items():
        if target.is_dir():
            target.rmdir()
        _write_case(cell, target, case)
        bad = name in MALFORMED
        try:
            read_cell(target)
            assert not bad, f"{name}: accepted"
        except CellFileError as err:
            assert bad, f"{name}: refused ({err})"
            assert "\n" not in str(err) and str(target) in str(err)
        assert is_finished(target) is (not bad)
        rows, unreadable = scan_cells(out)
        assert ("cells/x.json" in unreadable) is bad, name
        assert len(load_cells(out)) == (1 if bad else 2)
        try:
            rep = write_report(out)
        except EviltwinsError:  # a one-line refusal is fine; anything else fails the test
            continue
        assert ("cells/x.json" in rep.unreadable) is bad, name
    # a folder named like a cell file
    target.unlink()
    target.mkdir()
    with pytest.raises(CellFileError, match="a folder"):
        read_cell(target)
    assert not is_finished(target)
    assert scan_cells(out)[1] == {"cells/x.json": "a folder, not a file"}
    assert write_report(out).unreadable == {"cells/x.json": "a folder, not a file"}


def test_a_folder_in_place_of_a_grid_cell_file_is_refused_before_any_work(run_copy, capsys):
    out, cell = run_copy
    cell.unlink()
    cell.mkdir()
    with pytest.raises(EviltwinsError, match="is a folder where the sweep writes"):
        run_sweep(spec(), out, threads=1, quiet=True)


# --- 7. --threads / --jobs -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--threads", "-1"], "--threads must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--jobs", "-1"], "--jobs must be >= 1"),
    ],
)
def test_bad_threads_and_jobs_are_refused_before_anything_runs(
    failing, tmp_path, capsys, argv, needle
):
    spec_file, flags = failing
    out = tmp_path / "run"
    assert main(["sweep", str(spec_file), "--out", str(out), *flags, *argv]) == 2
    assert needle in one_line_error(capsys)
    assert not out.exists()


def test_bad_threads_and_jobs_are_refused_by_the_api_and_demo(tmp_path, capsys):
    for kw in ({"threads": 0}, {"threads": -1}, {"jobs": 0}, {"jobs": True}):
        with pytest.raises(ParamError, match="must be >= 1"):
            run_sweep(spec(), tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in one_line_error(capsys)
    assert not (tmp_path / "demo").exists()


# --- 8. --out ------------------------------------------------------------------------------------
def test_bad_out_folders_are_refused_before_anything_runs(failing, tmp_path, capsys):
    spec_file, flags = failing
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text("{}")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    cases = [
        (a_file, "is a file"),
        (a_file / "run", "lies under the file"),
        (Path("/proc/eviltwins-no-such/run"), "cannot be written"),
        (model_dir, "not a sweep run folder"),
        (home, "not a sweep run folder"),
    ]
    for out, needle in cases:
        for extra in ([], ["--check"]):
            if extra and "written" in needle:
                continue  # --check creates nothing, so it cannot probe
            assert main(["sweep", str(spec_file), "--out", str(out), *flags, *extra]) == 2
            assert needle in one_line_error(capsys), (out, extra)
    assert a_file.read_text() == "keep me"
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json"]
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    # an empty folder and an existing run folder are fine
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["sweep", str(spec_file), "--out", str(empty), "--quiet", *flags]) == 2
    assert "cells failed" in one_line_error(capsys)
    assert main(["sweep", str(spec_file), "--out", str(empty), "--quiet", *flags]) == 2
    assert "cells failed" in one_line_error(capsys)
