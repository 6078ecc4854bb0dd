"""A sweep as a population of models: ``sample`` (backdoored twins per clean model, the attacks
in turn), ``target: random`` and ``position: random`` (seeded per cell), and the same
population from local processes and from Ray."""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from eviltwins.errors import ParamError
from eviltwins.experiments import cells, load_cells, load_spec, run_sweep
from eviltwins.experiments.grid import cell_target
from eviltwins.experiments.reporting import write_sweep_report
from eviltwins.triggers import POSITIONS

POP = {
    "name": "pop",
    "datasets": ["digits"],
    "models": ["cnn", "resnet-small"],
    "seeds": [0, 1, 2],
    "train_limit": 400,
    "test_limit": 200,
    "clean": {"epochs": 2},
    "attacks": [
        {"name": "none"},
        {"name": "badnet", "label": "BadNet", "params": {"epochs": 1}},
        {"name": "trojannn", "label": "TrojanNN", "params": {"epochs": 1, "max_steps": 4}},
        {"name": "blended", "label": "Blended", "params": {"epochs": 1}},
    ],
    "sizes": [0.1, 0.2, 0.3],
    "transparencies": [0.25, 0.5],
    "target": "random",
    "position": "random",
    "sample": 1,
    "detectors": [{"name": "neural-cleanse", "params": {"steps": 4, "n_inputs": 32}}],
}


def pop(**overrides):
    spec = copy.deepcopy(POP)
    spec.update(overrides)
    return spec


def test_sample_gives_each_clean_model_twins_with_the_attacks_in_turn():
    spec = load_spec(pop())
    grid = cells(spec)
    clean = [c for c in grid if c.attack.is_clean]
    twins = [c for c in grid if not c.attack.is_clean]
    assert len(clean) == len(twins) == 6  # 2 models x 3 seeds, one twin each
    assert Counter(c.attack.display for c in twins) == {"BadNet": 2, "TrojanNN": 2, "Blended": 2}
    assert {(c.model, c.seed) for c in twins} == {(c.model, c.seed) for c in clean}
    assert [c.key(spec) for c in grid] == [c.key(spec) for c in cells(load_spec(pop()))]
    assert len({c.key(spec) for c in grid}) == len(grid)
    two = [c for c in cells(load_spec(pop(sample=2))) if not c.attack.is_clean]
    per_model = Counter((c.model, c.seed) for c in two)
    assert set(per_model.values()) == {2}
    assert all(
        len({c.attack.display for c in two if (c.model, c.seed) == m}) == 2 for m in per_model
    )
    full = cells(load_spec(pop(sample=None)))  # the whole grid: 3 x 2 per sized attack
    assert len(full) == 6 * (1 + 6 + 6 + 2)  # Blended takes no size


def test_positions_and_targets_are_drawn_per_cell_and_reproducible():
    spec = load_spec(pop(sample=None))
    grid = [c for c in cells(spec) if not c.attack.is_clean]
    positions = [c.attack_params(spec).get("position") for c in grid]
    with_pos = [p for c, p in zip(grid, positions, strict=True) if c.attack.takes("position")]
    assert set(with_pos) <= set(POSITIONS) and len(set(with_pos)) >= 3
    assert all(
        p is None for c, p in zip(grid, positions, strict=True) if c.attack.name == "blended"
    )
    targets = [cell_target(c.config(spec), 10) for c in grid]
    assert all(0 <= t < 10 for t in targets) and len(set(targets)) >= 5
    assert targets == [cell_target(c.config(spec), 10) for c in grid]
    assert {c.config(spec)["params"]["target"] for c in grid} == {"random"}
    fixed = load_spec(pop(target=3, position=None))
    cfgs = [c.config(fixed) for c in cells(fixed) if not c.attack.is_clean]
    assert {cell_target(cfg, 10) for cfg in cfgs} == {3}
    assert all("position" not in cfg["params"] for cfg in cfgs)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"target": "any"}, "'target'"),
        ({"position": "top-left"}, "'position'"),
        ({"sample": 0}, "'sample'"),
        ({"sample": True}, "'sample'"),
        ({"sample": 4}, "at most their number"),
    ],
)
def test_bad_population_settings_are_one_line(change, needle):
    with pytest.raises(ParamError, match=needle) as err:
        load_spec(pop(**change))
    assert "\n" not in str(err.value)


def test_a_population_runs_with_its_drawn_targets_and_ray_gives_the_same_cells(tmp_path):
    spec = pop(models=["resnet-small"], seeds=[0, 1], attacks=POP["attacks"][:3])
    local = run_sweep(spec, tmp_path / "local", jobs=2, threads=1, quiet=True)
    assert not local.failed and len(local.ran) == 4
    results = load_cells(tmp_path / "local")
    resolved = load_spec(spec)
    drawn = {c.key(resolved): cell_target(c.config(resolved), 10) for c in cells(resolved)}
    for res in results:
        assert res.status == "ok", res.error
        assert res.target == drawn[res.key]
        if res.cell.attack != "none":
            assert res.attack.extra["params"]["target"] == res.target
            assert res.attack.extra["params"]["position"] in POSITIONS
    report = write_sweep_report(tmp_path / "local")
    folder = tmp_path / "local" / "report"
    assert (folder / "population_roc.png").stat().st_size > 0
    assert (folder / "population_scores.png").exists()
    head = (folder / "population.csv").read_text().splitlines()[0]
    assert head.startswith("inspector,attack,") and "cross-entropy" in head
    assert report.population and report.population[0][0] == "neural-cleanse"
    pytest.importorskip("ray")
    ray = run_sweep(spec, tmp_path / "ray", executor="ray", threads=1, quiet=True)
    assert len(ray.ran) == 4
    other = load_cells(tmp_path / "ray")
    assert [c.key for c in other] == [c.key for c in results]
    assert [c.target for c in other] == [c.target for c in results]
    for a, b in zip(results, other, strict=True):
        assert (
            a.detectors["neural-cleanse"].max_anomaly == b.detectors["neural-cleanse"].max_anomaly
        )
