"""Upper bounds and strict config types (security issue: a received config could make a run
last forever, and loose YAML values were taken for what they were not).

Every numeric option and config value has a finite upper bound, stated in ``--help`` and
checked before any work; a config gives booleans, lists and numbers their real YAML types.
Each refusal is one line (exit 2) naming the option or parameter, the config file, the rule
and the value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import click
import pytest

import eviltwins as et
import eviltwins.api.estimators as api_estimators
import eviltwins.api.models as api_models
from eviltwins import base
from eviltwins.attacks import ATTACKS
from eviltwins.base import Check, Interval
from eviltwins.cli import cli, main
from eviltwins.cli.estimators import ListOf, ParameterOption
from eviltwins.cli.types import Bounded, Numbers
from eviltwins.config import Validated, parse_yaml, validate
from eviltwins.detectors import DETECTORS
from eviltwins.errors import DataError, ParamError
from eviltwins.experiments import RunOptions, load_spec
from eviltwins.io import ModelCard, ModelSource
from eviltwins.results import hint_members
from eviltwins.training import TrainConfig

CPU = ["--device", "cpu", "-q"]
HUGE = "99999999999999999999999999999999999999"  # the 38 digits


def _cli(capsys, *argv: object) -> tuple[int, str]:
    """Exit code and stderr of ``eviltwins argv`` run in this process."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def _refused(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and one stderr line holding every needle."""
    assert code == 2, err
    assert err.startswith("eviltwins: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a verb gets as far as loading data, a model or training."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the values were checked")

    for module, name in (
        (api_models, "get_dataset"),
        (api_models, "train_clean"),
        (api_estimators, "open_source"),
        (api_estimators, "matching_dataset"),
    ):
        monkeypatch.setattr(module, name, forbidden)


# --- the two cases -----------------------------------------------------------------------
def test_a_38_digit_epochs_in_a_train_config_is_refused_before_training(tmp_path, capsys, no_work):
    cfg = _yaml(tmp_path, "train.yaml", f"epochs: {HUGE}\n")
    out = tmp_path / "out"
    code, err = _cli(capsys, "train", "--config", cfg, "--out", out, *CPU)
    _refused(code, err, "'epochs'", "train.yaml", "[0, 10000]", HUGE)
    assert not out.exists()


def test_a_huge_neural_cleanse_steps_in_a_scan_config_is_refused_before_any_work(
    small_model, tmp_path, capsys, no_work
):
    cfg = _yaml(tmp_path, "scan.yaml", "neural-cleanse: {steps: 1000000000000}\n")
    out = tmp_path / "scan"
    code, err = _cli(capsys, "scan", "--model", small_model, "--config", cfg, "--out", out, *CPU)
    _refused(code, err, "'steps'", "NeuralCleanse", "scan.yaml", "[1, 1000000]", "1000000000000")
    assert not out.exists()


# --- loose config types --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["maybe", "1", "0", "'yes'", "'true'", "[true]"])
def test_a_boolean_option_in_a_config_takes_only_true_or_false(tmp_path, capsys, no_work, value):
    cfg = _yaml(tmp_path, "q.yaml", f"quiet: {value}\n")
    code, err = _cli(capsys, "train", "--config", cfg, "--out", tmp_path / "o", "--device", "cpu")
    _refused(code, err, "option 'quiet' in config", "q.yaml", "must be true or false")
    if value == "maybe":
        assert err.endswith(
            "option 'quiet' in config " + str(cfg) + " must be true or false; got 'maybe'"
        )


def test_a_flag_on_the_command_line_does_not_hide_a_bad_config_value(tmp_path, capsys, no_work):
    """The flag wins over the file, but the file is still checked: `-q` beside `quiet: maybe`
    is refused, not a 30-epoch run."""
    cfg = _yaml(tmp_path, "q.yaml", "quiet: maybe\nepochs: 1\n")
    code, err = _cli(capsys, "train", "--config", cfg, "--out", tmp_path / "o", *CPU)
    _refused(code, err, "option 'quiet' in config", "must be true or false")
    assert not (tmp_path / "o").exists()


def test_a_list_option_in_a_config_takes_only_a_list(small_model, tmp_path, capsys, no_work):
    cfg = _yaml(tmp_path, "d.yaml", "detectors: abs\n")
    code, err = _cli(capsys, "scan", "--model", small_model, "--config", cfg, *CPU)
    _refused(code, err, "option 'detectors' in config", "d.yaml", "must be a list", "'abs'")
    # the command line keeps its comma-separated form
    detectors = next(p for p in cli.commands["scan"].params if p.name == "detectors")
    assert detectors.type.convert("abs,neural-cleanse", detectors, None) == (
        "abs",
        "neural-cleanse",
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("epochs: '5'", "'epochs'"),  # a number written as a string
        ("batch_size: 16.0", "'batch_size'"),  # a float for an int
        ("augment: 'yes'", "'augment'"),
        ("seed: true", "'seed'"),
        ("lr: '0.1'", "'lr'"),
        ("train_limit: '100'", "train_limit"),
        ("image_size: '28'", "image_size"),
    ],
)
def test_train_config_values_have_their_real_types(tmp_path, capsys, no_work, text, needle):
    cfg = _yaml(tmp_path, "t.yaml", text + "\n")
    code, err = _cli(capsys, "train", "--config", cfg, "--out", tmp_path / "o", *CPU)
    _refused(code, err, needle, "t.yaml")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("n_clean: '5'", "must be an integer"),
        ("target: 1.5", "must be an integer"),
        ("test_limit: '50'", "must be an integer"),
        ("overwrite: 'yes'", "must be true or false"),
        ("trust_arch: [a.b:C]", "never by a file"),
        ("trust_code: true", "never by a file"),
        ("input_shape: '1,8,8'", "must be a list"),
        ("mean: [0.5, 'x']", "mean"),
        ("arch_kwargs: '{width: 16}'", "must be a mapping"),
        ("channels: '3'", "must be an integer"),
        ("protocol: 1", "must be a string"),
        ("early_stop: maybe", "'early_stop'"),  # an estimator parameter, as written
        ("n_overlays: '8'", "'n_overlays'"),
        ("frr: .inf", "'frr'"),
    ],
)
def test_detect_config_values_have_their_real_types(
    small_model, tmp_path, capsys, no_work, text, needle
):
    cfg = _yaml(tmp_path, "c.yaml", text + "\n")
    code, err = _cli(capsys, "detect", "strip", "--model", small_model, "--config", cfg, *CPU)
    _refused(code, err, needle, "c.yaml")


def test_an_estimator_boolean_or_quiet_from_a_config_is_strict():
    for params in ({"early_stop": "maybe"}, {"early_stop": 1}, {"quiet": "maybe"}):
        with pytest.raises(ParamError, match="must be one of"):
            DETECTORS.build("neural-cleanse", params)
    with pytest.raises(ParamError, match="'levels'"):
        DETECTORS.build("abs", {"levels": "12"})  # a string is not a list of levels


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"save_models": "yes"}, "'save_models'"),
        ({"detectors": "strip"}, "'detectors'"),
        ({"sizes": "0.1"}, "'sizes'"),
        ({"seeds": ["0"]}, "'seeds'"),
        ({"seeds": [2**64]}, "'seeds'"),
        ({"target": "0"}, "'target'"),
        ({"target": 10**6}, "'target'"),
        ({"n_clean": 10**7}, "'n_clean'"),
        ({"train_limit": 10**12}, "'train_limit'"),
        ({"clean": {"epochs": int(HUGE)}}, "'epochs'"),
        ({"clean": {"lr": 10**400}}, "'lr'"),
        ({"clean": {"arch_kwargs": {"width": 10**12}}}, "'width'"),
        ({"attacks": [{"name": "imc", "params": {"outer_iters": 10**12}}]}, "'outer_iters'"),
        ({"detectors": [{"name": "neural-cleanse", "params": {"steps": 10**12}}]}, "'steps'"),
    ],
)
def test_sweep_specs_are_strict_and_bounded(changes, needle):
    spec = {"name": "b", "datasets": ["digits"], "attacks": [{"name": "badnet"}], **changes}
    with pytest.raises(ParamError, match=needle):
        load_spec(spec)


def test_a_sweep_config_string_number_is_one_line_and_the_shipped_configs_load(tmp_path, capsys):
    cfg = _yaml(tmp_path, "s.yaml", "name: s\ndatasets: [digits]\nattacks: [{name: badnet}]\n"
                "train_limit: '100'\n")  # fmt: skip
    code, err = _cli(capsys, "sweep", cfg, "--check")
    _refused(code, err, "'train_limit'", "100")
    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/*/*.yaml")):
        load_spec(path)


# --- inf and numbers past any float --------------------------------------------------------------
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "1.0e+400", "1" + "0" * 400])
def test_inf_and_huge_numbers_in_a_config_are_refused(tmp_path, capsys, no_work, value):
    cfg = _yaml(tmp_path, "lr.yaml", f"lr: {value}\n")
    code, err = _cli(capsys, "train", "--config", cfg, "--out", tmp_path / "o", *CPU)
    _refused(code, err, "'lr'", "lr.yaml")


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf"])
def test_inf_on_the_command_line_is_refused(small_model, tmp_path, capsys, no_work, value):
    code, err = _cli(capsys, "train", "--lr", value, "--out", tmp_path / "o", *CPU)
    _refused(code, err, "'lr'")
    code, err = _cli(capsys, "detect", "neural-cleanse", "--model", small_model,
                     "--init-cost", value, *CPU)  # fmt: skip
    _refused(code, err, "'init_cost'")


def test_inf_is_refused_by_every_interval_and_the_yaml_reader_reads_exponents():
    assert not Interval(float, 0, None).ok(math.inf)
    assert not Interval(float, None, None).ok(-math.inf)
    assert not Interval(float, 0, 1).ok(math.nan)
    assert parse_yaml("a: 1e-3\nb: 1e400\nc: 2E5", "x") == {"a": 0.001, "b": math.inf, "c": 2e5}
    with pytest.raises(ParamError, match="'lr'"):
        validate(TrainConfig, lr=10**400)  # past any float: refused, not an OverflowError
    with pytest.raises(ParamError, match="'lr'"):
        et.train("digits", lr=math.inf)
    with pytest.raises(ParamError, match="'target_value'"):
        ATTACKS.build("trojannn", {"target_value": -math.inf})


# --- every rule has a finite upper bound ---------------------------------------------------------
def _numeric(hint: typing.Any) -> bool:
    return any(m in (int, float) for m in hint_members(hint))


def _finite(rule: Interval) -> bool:
    return rule.high is not None and math.isfinite(rule.high)


@pytest.mark.parametrize(
    ("registry", "name"),
    [(ATTACKS, n) for n in ATTACKS.names()] + [(DETECTORS, n) for n in DETECTORS.names()],
)
def test_every_numeric_estimator_parameter_has_a_finite_upper_bound(registry, name):
    cls = registry.get(name)
    hints = typing.get_type_hints(cls.__init__)
    for pname, rule in cls._constraints.items():
        if isinstance(rule, Interval):
            assert _finite(rule), f"{name}.{pname}: {rule.describe()} has no finite upper bound"
            assert rule.low is None or math.isfinite(rule.low)
            assert not rule.ok(rule.high + 1) and not rule.ok(math.inf)
    for pname, hint in hints.items():
        if pname not in ("return", "quiet") and _numeric(hint):
            assert pname in cls._constraints, f"{name}.{pname} is a number without a rule"


def test_the_numeric_list_and_position_rules_are_bounded_too():
    assert not DETECTORS.get("abs")._constraints["levels"].ok([0.0, base.MAX_MAGNITUDE * 2])
    labels = DETECTORS.get("neural-cleanse")._constraints["labels"]
    assert labels.ok([0, 1]) and not labels.ok([base.MAX_CLASSES])
    position = ATTACKS.get("badnet")._constraints["position"]
    assert position.ok("3,4") and position.ok((3, 4)) and position.ok("top-left")
    assert not position.ok(f"{base.MAX_SIDE},0") and not position.ok((0, 10**30))


def _validated_classes() -> list[type]:
    found, todo = [], list(Validated.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_numeric_config_field_has_a_finite_upper_bound():
    classes = _validated_classes()
    assert {c.__name__ for c in classes} >= {"TrainConfig", "SweepSpec", "Entry"}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rules = cls._constraints.get(f.name, ())
            rules = rules if isinstance(rules, tuple) else (rules,)
            for rule in rules:
                if isinstance(rule, Interval):
                    assert _finite(rule), f"{cls.__name__}.{f.name}: {rule.describe()}"
            if _numeric(hints[f.name]):
                assert any(isinstance(r, Interval) and _finite(r) for r in rules), (
                    f"{cls.__name__}.{f.name} is a number without a bounded rule"
                )
    for field in ("jobs", "threads"):
        with pytest.raises(ParamError, match=f"--{field} must be >= 1 and <= 1024"):
            RunOptions(**{field: base.MAX_WORKERS + 1})


# --- every numeric option of every command states its bound ----------------------------------------
_BOUND = re.compile(r"[\[(]-?\d[\d.]*, -?\d[\d.]*[\])]|at most \d")


def _commands() -> list[tuple[str, click.Command]]:
    out = []
    ctx = click.Context(cli)
    for name, cmd in cli.commands.items():
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                out.append((f"{name} {sub}", cmd.get_command(ctx, sub)))
        else:
            out.append((name, cmd))
    return out


def _is_number_option(kind: click.ParamType) -> bool:
    if isinstance(kind, click.types.IntParamType | click.types.FloatParamType | Bounded):
        return True
    return isinstance(kind, Numbers | ListOf) and kind.kind in (int, float)


def test_every_numeric_option_of_every_command_states_its_bound():
    checked = 0
    for name, cmd in _commands():
        for param in cmd.params:
            if not isinstance(param, click.Option) or not _is_number_option(param.type):
                continue
            checked += 1
            where = f"eviltwins {name} {param.opts[0]}"
            if isinstance(param.type, Bounded):
                assert _finite(param.type.rule), where
            if isinstance(param, ParameterOption) and hasattr(cmd, "estimator"):
                rule = cmd.estimator._constraints.get(param.name)
                assert rule is not None, f"{where} has no rule"
                if isinstance(rule, Interval):
                    assert _finite(rule), where
                else:
                    assert isinstance(rule, Check)
            assert _BOUND.search(param.help or ""), f"{where}: its help states no bound"
    assert checked > 100


def test_the_bounds_read_well_in_help(capsys):
    for argv, needles in (
        (["detect", "neural-cleanse", "--help"], ["an int in [1, 1000000] or None"]),
        (["attack", "imc", "--help"], ["a float in (0, 1000000]", "an int in [0, 99999]"]),
        (["train", "--help"], ["Epochs [default: the dataset's]. Must be an int in [0, 10000]."]),
        (["sweep", "--help"], ["Must be an int in [1, 1024]."]),
    ):
        assert main(argv) == 0
        text = " ".join(capsys.readouterr().out.split())
        for needle in needles:
            assert needle in text, (argv, needle)


# --- command options checked before any work -----------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--image-size", "5000"], "--image-size"),
        (["--test-limit", "0"], "--test-limit"),
        (["--test-limit", HUGE], "--test-limit"),
        (["--num-classes", "1000000000"], "--num-classes"),
        (["--input-shape", "1,100000,100000"], "--input-shape"),
        (["--mean", "1e400"], "--mean"),
        (["--trigger", "x.png", "--trigger-alpha", "inf"], "(0, 1]"),
        (["--trigger", "x.png", "--target", HUGE], "'target'"),
    ],
)
def test_bad_numbers_on_the_command_line_are_one_line_before_any_work(
    small_model, capsys, monkeypatch, flags, needle
):
    monkeypatch.setattr(api_models, "open_source", lambda *a, **k: pytest.fail("model opened"))
    code, err = _cli(capsys, "evaluate", "--model", small_model, *flags, *CPU)
    _refused(code, err, needle)


def test_run_options_and_demo_seed_are_bounded(tmp_path, capsys):
    for argv, needle in (
        (["demo", "--jobs", "2000"], "--jobs must be >= 1 and <= 1024"),
        (["demo", "--seed", str(2**64)], "'seeds'"),
        (["sweep", "nowhere.yaml", "--threads", "5000"], "--threads must be >= 1 and <= 1024"),
    ):
        code, err = _cli(capsys, *argv, "--out", tmp_path / "o", "--device", "cpu")
        _refused(code, err, needle)
        assert not (tmp_path / "o").exists()


def test_received_numbers_past_any_float_are_one_line():
    card = {"architecture": "cnn", "input_shape": [1, 8, 8], "num_classes": 10, "mean": [10**400]}
    with pytest.raises(DataError, match="'mean'"):
        ModelCard.from_dict({**card, "std": [1.0]}, "model.json")
    with pytest.raises(ParamError, match="--mean"):
        ModelSource(Path("w.pth"), "cnn", mean=5)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match="--num-classes"):
        ModelSource(Path("w.pth"), "cnn", num_classes=base.MAX_CLASSES + 1)
