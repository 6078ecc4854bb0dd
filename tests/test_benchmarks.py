"""The speed benchmark (``python -m benchmarks``): floor counting, the table, the ``cnn-heavy``
architecture it adds, and one quick end-to-end row. No timed assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import floors, harness, methods
from eviltwins.errors import ParamError
from eviltwins.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _toy() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


@pytest.mark.parametrize("kind", floors.KINDS)
def test_floor_flops_of_one_iteration_times_n_match_n_iterations(kind):
    model, x = _toy(), torch.rand(16, 1, 8, 8)
    t = floors.time_phase(model, x, kind, 8, 10, min_iters=2, min_seconds=0.0, max_iters=5)
    assert t.flops > 0 and 1 <= t.timed_iters <= 5
    fn = floors.step_fn(kind, model, floors.images_for(x, 8, torch.device("cpu")), 10)
    with FlopCounterMode(display=False) as counter:
        for _ in range(3):
            fn()
    assert counter.get_total_flops() == 3 * t.flops
    timings = {(kind, 8): t}
    fl = floors.floor_of([floors.Phase("p", kind, 8, 3), floors.Phase("q", kind, 8, 0.5)], timings)
    assert fl["flops"] == pytest.approx(3.5 * t.flops)
    assert fl["floor_s"] == pytest.approx(3.5 * t.seconds)
    assert [p["count"] for p in fl["phases"]] == [3, 0.5]


def test_floor_kinds_count_the_right_passes_and_leave_the_model_alone():
    model, x = _toy(), torch.rand(8, 1, 8, 8)
    before = [p.detach().clone() for p in model.parameters()]
    f = {k: floors.time_phase(model, x, k, 8, 10, max_iters=1).flops for k in floors.KINDS}
    # backward to the input costs about one more forward; weight gradients add more
    assert f["fwd"] < f["bwd_input"] < f["train"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="kind"):
        floors.Phase("p", "backward", 8, 1)


def test_neural_cleanse_floor_is_its_full_budget_over_every_label(digits_spec):
    model = build_model("cnn", digits_spec.shape, 10).eval()
    ctx = methods.Context(model, digits_spec, None, torch.device("cpu"), quick=False)
    est = methods.build("nc", quick=False)
    (ph,) = methods.phases("nc", est, ctx)
    assert (
        (ph.kind, ph.batch, ph.count)
        == ("bwd_input", 10 * 32, est.budget_steps())
        == (
            "bwd_input",
            320,
            500,
        )
    )
    (serial,) = methods.phases("nc-serial", est, ctx)
    assert (serial.batch, serial.count) == (32, 10 * 500)


def test_table_formatter():
    rows = [
        {
            "model": "cnn",
            "method": "nc",
            "label": "NeuralCleanse",
            "device": "cpu",
            "wall_s": 30.04,
            "floor_s": 44.0,
            "speed_vs_floor": 44.0 / 30.04,
            "speed_vs_tuned_floor": 36.0 / 30.04,
            "flops": 2.5e12,
            "hw_floor_s": 5.25,
            "share_of_peak": 0.175,
            "peak_rss_mb": 812.4,
            "verdict": "label 0 (index 3.10)",
        },
        {"model": "cnn-heavy", "method": "abs", "device": "cpu", "verdict": "error: a | b"},
    ]
    lines = harness.format_table(rows).splitlines()
    assert lines[0].startswith("| model | method | device | wall (s) | eager floor (s)")
    assert len(lines) == 4 and lines[1].count("---") == len(harness.COLUMNS)
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells == [
        "cnn",
        "NeuralCleanse",
        "cpu",
        "30.0",
        "44.0",
        "1.46x",
        "1.20x",
        "2,500",
        "5.25",
        "17.5%",
        "812",
        "label 0 (index 3.10)",
    ]
    assert lines[3].count("|") == len(harness.COLUMNS) + 1  # a '|' in a cell is escaped
    serial = {"model": "cnn", "method": "nc-serial", "device": "cpu", "wall_s": 120.16}
    (line,) = harness.serial_speedups([*rows, serial])
    assert line.endswith("batched 30.04 s, one label at a time 120.16 s: 4.00x")
    row = harness.finish({"flops": 4e9, "wall_s": 2.0}, {"flops_per_s": 1e10})
    assert row["hw_floor_s"] == pytest.approx(0.4) and row["share_of_peak"] == pytest.approx(0.2)


def test_cnn_heavy_is_the_keras_mnist_cnn():
    model = build_model("cnn-heavy", (1, 28, 28), 10).eval()
    net = model.net
    assert [net.features.conv1.padding, net.features.conv2.padding] == [(0, 0), (0, 0)]
    assert net.classifier.fc1.in_features == 9216 and net.classifier.fc2.out_features == 10
    assert model.feature_layer == "net.features.conv2"
    with torch.no_grad():
        assert net.features(torch.rand(2, 1, 28, 28)).flatten(1).shape == (2, 9216)
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("cnn-heavy", (3, 32, 32), 7).net.classifier.fc1.in_features == 64 * 14 * 14
    with pytest.raises(ParamError, match="at least 6x6"):
        build_model("cnn-heavy", (1, 5, 5), 10)


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--methods", "nc,foo"], "unknown method 'foo'"), (["--models", "cnn,cnn-huge"], "model")],
)
def test_cli_refuses_unknown_names_in_one_line(args, message, capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_quick_run_end_to_end(tmp_path):
    """One cheap row end to end in its own processes (about 20 s on one core)."""
    proc = _bench("--quick", "--methods", "strip", "--out", str(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    (row,) = doc["rows"]
    assert (row["model"], row["method"], row["dataset"], row["device"]) == (
        "cnn",
        "strip",
        "digits",
        "cpu",
    )
    for key in ("wall_s", "floor_s", "speed_vs_floor", "flops", "share_of_peak", "peak_rss_mb"):
        assert row[key] > 0, key
    assert row["verdict"].startswith("F1 ") and row["floor_phases"]
    assert doc["hardware"]["torch"] == torch.__version__ and doc["peaks"]["cpu"]["flops_per_s"] > 0
    assert "| cnn | STRIP (paper) | cpu |" in proc.stdout
    assert (tmp_path / "results.md").read_text().count("STRIP (paper)") == 1
    assert (tmp_path / "cnn" / "badnet" / "trigger.safetensors").is_file()


def test_paper_setting_writes_a_class_sorted_colour_tree_and_a_valid_equal_budget_sweep(
    tmp_path,
):
    """The paper's on-disk form (class-per-folder PNGs sorted by class, read as 3-channel
    32x32) of real images, and the sweep it runs: valid, every pair at equal budgets, the
    detectors at the given step count."""
    from benchmarks import paper_setting as ps
    from eviltwins.data import load_all, load_dataset
    from eviltwins.experiments import load_spec

    tree = ps.write_tree("digits", tmp_path / "digits-tree", train_per_class=3, test_per_class=2)
    folders = sorted(p.name for p in (tree / "train").iterdir())
    assert len(folders) == 10 and folders[0].startswith("00-") and folders[9].startswith("09-")
    spec = load_dataset(str(tree), image_size=32, channels=3)
    x, y = load_all(spec.test)
    assert x.shape == (20, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])  # grey in RGB
    assert y.tolist() == sorted(y.tolist()) and set(y.tolist()) == set(range(10))
    sweep = ps.sweep_spec(tree, "vgg11", 4, [0, 1, 2], [0.2, 0.3], steps=40, detector_steps=7)
    loaded = load_spec(sweep)  # refuses unequal TrojanNN / TrojanNN* budgets
    assert loaded.seeds == [0, 1, 2]
    params = {d["label"]: d.get("params", {}) for d in sweep["detectors"]}
    assert params["NeuralCleanse"]["steps"] == params["ensemble"]["nc_steps"] == 7
    assert ps._mean_std([0.5, 0.7, None]) == "0.60 ± 0.14 (2)"


def test_paper_setting_reads_the_claims_once_per_trojannn_star_variant():
    from benchmarks import paper_setting as ps

    def row(attack, name, seed, asr):
        return {"key": f"{attack}{seed}", "dataset": "d", "model": "m", "attack": attack,
                "attack_name": name, "init": "trojannn" if name == "imc" else "", "size": 0.2,
                "transparency": 0.0, "seed": seed, "asr": asr, "efficacy": asr,
                "acc_drop": 0.0}  # fmt: skip

    rows = [
        r
        for seed in (0, 1, 2)
        for r in (
            row("TrojanNN", "trojannn", seed, 0.5),
            row("fixed", "imc", seed, 0.9 + 0.01 * seed),
            row("evading", "imc", seed, 0.1 + 0.01 * seed),
        )
    ]
    text = "\n".join(ps.claim_lines(rows, {"strip": "STRIP"}))
    evading, fixed = text.split("Claims, evading against TrojanNN:")[1].split(
        "Claims, fixed against TrojanNN:"
    )
    assert "**holds** (fixed vs TrojanNN: mean ASR gain +0.410" in fixed
    assert "**does not hold** (evading vs TrojanNN: mean ASR gain -0.390" in evading
