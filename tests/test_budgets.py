"""Equal re-training budgets (issue 24): each re-training attack declares its budget as a
function of the training batches per epoch, and a sweep refuses a TrojanNN* / baseline pair
whose budgets differ before any work, unless the spec says ``unequal_budgets: true``; every
shipped config holds its pairs equal. Per-dataset attack parameters (``dataset_params``)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from eviltwins.attacks import ATTACKS
from eviltwins.attacks.budget import RetrainBudget, compared_with
from eviltwins.cli import main
from eviltwins.errors import ParamError
from eviltwins.evasion import evasion_weights
from eviltwins.experiments import cells, load_spec

REPO = Path(__file__).resolve().parents[1]

PAIR = {
    "name": "pair",
    "datasets": ["digits"],
    "attacks": [
        {"name": "trojannn", "label": "TrojanNN", "params": {"epochs": 1000, "max_steps": 200}},
        {
            "name": "imc",
            "label": "TrojanNN*",
            "params": {"outer_iters": 4, "retrain_steps": 50, "max_steps": 200},
        },
    ],
    "sizes": [0.2],
}


def pair(trojannn: dict | None = None, imc: dict | None = None, **top) -> dict:
    spec = copy.deepcopy(PAIR)
    if trojannn is not None:
        spec["attacks"][0]["params"] = trojannn
    if imc is not None:
        spec["attacks"][1]["params"] = imc
    spec.update(top)
    return spec


# --- the budgets -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # equal for every N >= 1 although written differently: the cap binds from N = 2
        (RetrainBudget(5, 0, 7, 128), RetrainBudget(3, 2, 7, 128), True),
        # constant budgets: the batch size does not matter
        (RetrainBudget(1000, 0, 200, 128), RetrainBudget(0, 204, 200, 64), True),
        (RetrainBudget(40, 0, None, 128), RetrainBudget(40, 0, None, 128), True),
        # equal only for N >= 3 (the old tiny sweep: TrojanNN 2 epochs cut at 6 vs IMC 2 x 3)
        (RetrainBudget(2, 0, 6, 128), RetrainBudget(0, 6, 6, 128), False),
        (RetrainBudget(2, 0, None, 128), RetrainBudget(40, 0, None, 128), False),
        (RetrainBudget(40, 0, None, 128), RetrainBudget(40, 0, None, 64), False),  # other N
        (RetrainBudget(40, 0, None, 128), RetrainBudget(40, 0, 10_000, 128), False),
    ],
)
def test_budgets_compare_as_functions_of_the_batches_per_epoch(a, b, same):
    assert a.same_as(b) is same and b.same_as(a) is same
    equal_everywhere = all(a.at(n) == b.at(n) for n in range(1, 20_000))
    assert equal_everywhere is same or a.batch_size != b.batch_size


def test_each_attack_declares_its_budget_from_its_own_parameters():
    """TrojanNN and BadNet: min(epochs x N, max_steps); IMC: outer_iters x (retrain_steps or N),
    capped at max_steps; the defaults (2 epochs vs 40 rounds of one epoch) differ."""
    trojannn = ATTACKS.build("trojannn", {"epochs": 3, "max_steps": 100})
    assert [trojannn.retrain_budget().at(n) for n in (10, 40)] == [30, 100]
    badnet = ATTACKS.build("badnet", {"epochs": 3, "batch_size": 64})
    assert badnet.retrain_budget() == RetrainBudget(3, 0, None, 64)
    imc = ATTACKS.build("imc", {"outer_iters": 5, "retrain_steps": 7, "max_steps": 30})
    assert imc.retrain_budget().at(1) == imc.retrain_budget().at(999) == 30
    assert ATTACKS.build("imc").retrain_budget().at(391) == 40 * 391
    assert (
        not ATTACKS.build("trojannn")
        .retrain_budget()
        .same_as(ATTACKS.build("imc").retrain_budget())
    )
    assert (
        ATTACKS.build("trojannn", {"epochs": 40})
        .retrain_budget()
        .same_as(ATTACKS.build("imc").retrain_budget())
    )


def test_a_starred_attack_is_compared_with_the_attack_its_init_names():
    imc, trojannn = type(ATTACKS.build("imc")), type(ATTACKS.build("trojannn"))
    assert compared_with(imc, {}) == "trojannn"
    assert compared_with(imc, {"init": "badnet"}) == "badnet"
    assert compared_with(trojannn, {"epochs": 2}) is None


# --- the refusal -------------------------------------------------------------------------------
def test_a_pair_with_unequal_budgets_is_refused_in_one_line_naming_both_and_the_fix():
    """Regression (issue 24): the full configs ran TrojanNN's default 2 epochs against
    TrojanNN*'s 40 rounds of one epoch; such a pair is refused before anything runs."""
    with pytest.raises(ParamError) as info:
        load_spec(pair(trojannn={"epochs": 2}, imc={}))
    msg = str(info.value)
    assert "\n" not in msg
    assert "TrojanNN 2 x N steps" in msg and "TrojanNN* 40 x N steps" in msg
    assert "unequal_budgets: true" in msg and "epochs" in msg
    # the old tiny sweep: equal for this training set (N >= 3) but not for every size
    with pytest.raises(ParamError, match=r"min\(2 x N, 6\)"):
        load_spec(pair(trojannn={"max_steps": 6}, imc={"outer_iters": 2, "retrain_steps": 3}))


def test_the_explicit_key_lets_an_unequal_pair_through_and_equal_pairs_pass():
    spec = load_spec(pair(trojannn={"epochs": 2}, imc={}, unequal_budgets=True))
    assert spec.unequal_budgets is True and len(cells(spec)) == 2
    load_spec(pair(trojannn={"epochs": 40}, imc={}))  # the authors' budget: 40 epochs each
    load_spec(pair())  # 200 steps each
    # an attack the starred one is not compared with keeps its own budget
    lone = pair()
    lone["attacks"].append({"name": "badnet", "params": {"epochs": 1}})
    load_spec(lone)
    with pytest.raises(ParamError, match="'unequal_budgets' parameter"):
        load_spec(pair(unequal_budgets="yes"))


def test_budgets_are_compared_per_dataset_with_its_dataset_params():
    spec = pair(datasets=["digits", "mnist"])
    spec["attacks"][1]["dataset_params"] = {"mnist": {"max_steps": 150}}
    with pytest.raises(ParamError, match="different budgets on mnist: TrojanNN 200 steps"):
        load_spec(spec)
    spec["attacks"][0]["dataset_params"] = {"mnist": {"max-steps": 150}}  # hyphens as on the CLI
    load_spec(spec)


def test_cli_sweep_check_refuses_an_unequal_pair_with_exit_2(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(pair(trojannn={"epochs": 2}, imc={})))
    assert main(["sweep", str(f), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eviltwins: error: ") and "\n" not in err and "budgets" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=str)
def test_every_shipped_config_holds_its_compared_budgets_equal(path):
    spec = load_spec(path)
    assert spec.unequal_budgets is False
    built = {}
    for atk in spec.attacks:
        if atk.name != "none":
            for ds in spec.datasets:
                built[atk.display, ds] = ATTACKS.build(atk.name, atk.params_on(ds))
    compared = 0
    for (label, ds), star in built.items():
        base_name = compared_with(type(star), star.get_params())
        for (other, ods), base in built.items():
            if ods == ds and other != label and base.name == base_name:
                assert base.retrain_budget().same_as(star.retrain_budget()), (label, other, ds)
                compared += 1
    assert compared >= len(spec.datasets)  # every config compares TrojanNN* with TrojanNN
    if spec.sample is None:
        assert spec.seeds == [0, 1, 2]  # a claim needs >= 3 seeds
    else:  # a population of models: more seeds, more models
        assert len(spec.seeds) >= 3


# --- dataset_params ----------------------------------------------------------------------------
def test_dataset_params_override_an_attack_on_their_dataset_only():
    spec = pair(datasets=["digits", "mnist"])
    spec["attacks"][1]["params"]["evade"] = ["strip"]
    before = load_spec(spec)
    spec["attacks"][1]["dataset_params"] = {"mnist": {"evade": {"strip": 0.2}}}
    after = load_spec(spec)
    star = {c.dataset: c for c in cells(after) if c.attack.name == "imc"}
    assert star["mnist"].attack_params(after)["evade"] == {"strip": 0.2}
    assert star["digits"].attack_params(after)["evade"] == ["strip"]
    # only the overridden cells get new keys: the others' results stay valid
    old, new = {c.key(before) for c in cells(before)}, {c.key(after) for c in cells(after)}
    assert old - new == {
        c.key(before) for c in cells(before) if c.dataset == "mnist" and c.attack.name == "imc"
    }
    assert len(old - new) == 1


def test_the_full_strip_configs_use_the_authors_weight_on_gtsrb():
    for name in ("fig14", "fig15"):
        spec = load_spec(REPO / "configs" / "full" / f"{name}.yaml")
        weights = {
            c.dataset: evasion_weights(c.attack_params(spec)["evade"]).get("strip")
            for c in cells(spec)
            if c.attack.name == "imc"
        }
        assert weights == {"cifar10": None, "gtsrb": 0.2}  # None: the default 0.6
