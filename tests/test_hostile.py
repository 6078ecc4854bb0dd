"""Hostile input (issue 12): a received model folder cannot run code or size an allocation, bad
paths and values are one line (exit 2) before any work, and nothing finished is overwritten.

Every case here ended in code execution, a huge allocation, a silent overwrite or a traceback
before the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eviltwins as et
from eviltwins.cli import main
from eviltwins.config import read_yaml
from eviltwins.errors import DataError, EviltwinsError, ParamError, UnsafeFileError
from eviltwins.io import (
    ModelCard,
    load_model,
    load_state_file,
    model_from_bytes,
    model_to_bytes,
    read_json,
    save_model,
)
from eviltwins.models import build_model

CPU = ["--device", "cpu", "-q"]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``eviltwins argv``."""
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def _one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("eviltwins: error: ") and "\n" not in err, err
    assert "Traceback" not in err


def _copy_with_card(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text())
    card.update(changes)
    (dst / "model.json").write_text(json.dumps(card))
    return dst


# --- 1. code execution from a model card -------------------------------------------------------
PAYLOAD = """\
from pathlib import Path
Path({sentinel!r}).write_text("payload ran")
import torch
class Net(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.fc = torch.nn.Linear(1, 1)
"""


def _payload_folder(small_model: Path, tmp_path: Path, module: str = "payload") -> tuple:
    folder = _copy_with_card(small_model, tmp_path / "received", architecture=f"{module}:Net")
    sentinel = tmp_path / "PWNED"
    (folder / f"{module}.py").write_text(PAYLOAD.format(sentinel=str(sentinel)))
    return folder, sentinel


def test_payload_module_beside_the_card_never_runs_from_its_folder(small_model, tmp_path):
    """The issue's attack: `cd folder && python -m eviltwins detect ... --model .` put the
    folder on sys.path and imported payload.py."""
    folder, sentinel = _payload_folder(small_model, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(folder)}  # also on the path through PYTHONPATH
    for argv in (
        ["detect", "neural-cleanse", "--model", ".", "--device", "cpu"],
        ["evaluate", "--model", ".", "--device", "cpu"],
        ["attack", "badnet", "--model", ".", "--out", str(tmp_path / "a"), "--device", "cpu"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "eviltwins", *argv],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr
        err = r.stderr.strip()
        assert "\n" not in err and "--trust-arch payload:Net" in err
        assert "PYTHONPATH" not in err
        assert not sentinel.exists(), f"payload ran for {argv}"
    assert not (tmp_path / "a").exists()


def test_installed_module_named_by_a_card_is_not_imported(small_model, tmp_path, capsys):
    """`this` prints the Zen of Python on import: a card naming it must import nothing."""
    folder = _copy_with_card(small_model, tmp_path / "zen", architecture="this:Foo")
    sys.modules.pop("this", None)
    code, err = _cli(capsys, "evaluate", "--model", str(folder), *CPU)
    _one_line_error(code, err)
    assert "this" not in sys.modules
    with pytest.raises(UnsafeFileError, match="nothing was imported"):
        load_model(folder)
    assert "this" not in sys.modules


def test_user_architecture_is_imported_only_when_the_user_names_it(
    small_model, tmp_path, monkeypatch
):
    folder, sentinel = _payload_folder(small_model, tmp_path, module="trusted_payload")
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(UnsafeFileError):
        load_model(folder, trust_arch="other.mod:Net")  # naming another spec trusts nothing
    assert not sentinel.exists()
    # Named: the module is imported (its code runs), then the weights are checked against it.
    with pytest.raises(DataError, match="do not fit"):
        load_model(folder, trust_arch=["trusted_payload:Net"])
    assert sentinel.exists()
    sys.modules.pop("trusted_payload", None)


def test_sweep_blob_card_obeys_the_trust_rule():
    card = ModelCard("payload:Net", (1, 8, 8), 10, (0.0,), (1.0,))
    blob = model_to_bytes(build_model("cnn", (1, 8, 8), 10), card)
    with pytest.raises(UnsafeFileError):
        model_from_bytes(blob)
    assert "payload" not in sys.modules


# --- 2. the card cannot size an allocation ------------------------------------------------------
def _peak_rss_mb_of(argv: list[str]) -> tuple[int, float, str]:
    """Run the CLI on ``argv`` in a fresh interpreter; its exit code, its own peak RSS (MB)
    and stderr."""
    # VmHWM (kB), not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child of a
    # large pytest process would report the parent's size.
    code = (
        "import re, sys\nfrom eviltwins.cli import main\n"
        f"rc = main({argv!r})\n"
        "status = open('/proc/self/status').read()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\nsys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = r.stdout.split()
    return r.returncode, (int(lines[-1]) / 1024 if lines else float("inf")), r.stderr


@pytest.mark.parametrize(
    "changes",
    [
        {"input_shape": [1, 1024, 1024]},  # 2.9 GB RSS before the fix
        {"input_shape": [1, 4096, 4096]},  # 34 GB allocation attempt and a traceback
        {"arch_kwargs": {"width": 100000, "hidden": 100000}},
    ],
)
def test_card_sizes_are_checked_against_the_weights_before_building(small_model, tmp_path, changes):
    folder = _copy_with_card(small_model, tmp_path / "big", **changes)
    rc, peak_mb, err = _peak_rss_mb_of(["evaluate", "--model", str(folder), "--device", "cpu"])
    assert rc == 2 and "do not fit" in err and "Traceback" not in err, err
    assert peak_mb < 1500, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize(
    "card, match",
    [
        ([], "must be a JSON object"),
        (None, "must be a JSON object"),
        ("cnn", "must be a JSON object"),
        (("only", {"architecture": "cnn"}), "missing the field"),
        ({"input_shape": "abc"}, "'input_shape' must be"),
        ({"input_shape": [1, 32]}, "'input_shape' must be"),
        ({"input_shape": [1, -32, 32]}, "'input_shape' must be"),
        ({"input_shape": [1.5, 32, 32]}, "'input_shape' must be"),
        ({"input_shape": [True, 32, 32]}, "'input_shape' must be"),
        ({"input_shape": [10**6, 10**6, 10**6]}, "'input_shape' must be at most"),
        ({"std": ["x"]}, "'std' must be"),
        ({"std": [0.0]}, "'std' must be positive"),
        ({"mean": [1.0, 2.0]}, "'mean' must be"),
        ({"architecture": 42}, "'architecture' must be"),
        ({"architecture": "os:system"}, None),  # syntax fine; the trust rule refuses it
        ({"architecture": "no-such-net"}, "unknown architecture"),
        ({"num_classes": 1e12}, "'num_classes' must be"),
        ({"num_classes": 10**12}, "'num_classes' must be"),
        ({"num_classes": "10"}, "'num_classes' must be"),
        ({"classes": "abc"}, "'classes' must be"),
        ({"arch_kwargs": [1, 2]}, "'arch_kwargs' must be"),
        ({"arch_kwargs": {"__class__": 1}}, None),
        ({"metrics": 5}, "'metrics' must be"),
        ({"seed": "x"}, "'seed' must be"),
        ({"schema": "evil/9"}, "schema"),
        ({"unexpected": 1}, "unknown field"),
    ],
)
def test_malformed_cards_are_one_line_errors(small_model, tmp_path, capsys, card, match):
    base = json.loads((small_model / "model.json").read_text())
    if isinstance(card, tuple):  # ("only", fields): a card holding just these fields
        doc = card[1]
    elif isinstance(card, dict):
        doc = {**base, **card}
    else:
        doc = card
    folder = tmp_path / "m"
    shutil.copytree(small_model, folder)
    (folder / "model.json").write_text(json.dumps(doc))
    with pytest.raises(EviltwinsError) as err:
        load_model(folder)
    assert "\n" not in str(err.value)
    if match:
        assert match in str(err.value)
    code, msg = _cli(capsys, "evaluate", "--model", str(folder), *CPU)
    _one_line_error(code, msg)


@pytest.mark.parametrize("kind", ["directory", "invalid-utf8", "symlink-loop", "nan", "huge"])
def test_unreadable_model_json_is_one_line(small_model, tmp_path, capsys, kind):
    folder = tmp_path / "m"
    shutil.copytree(small_model, folder)
    card = folder / "model.json"
    card.unlink()
    if kind == "directory":
        card.mkdir()
        want = "is a folder"
    elif kind == "invalid-utf8":
        card.write_bytes(b"\xff\xfe{\x00")
        want = "not valid JSON"
    elif kind == "symlink-loop":
        card.symlink_to(card)
        want = "symlink loop"
    elif kind == "nan":
        card.write_text('{"architecture": NaN}')
        want = "not valid JSON"
    else:
        card.write_text("[" * 100_000)
        want = "not valid JSON"
    code, err = _cli(capsys, "evaluate", "--model", str(folder), *CPU)
    _one_line_error(code, err)
    assert want in err


def test_missing_folder_symlink_loop_and_directory_are_told_apart(tmp_path):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="symlink loop"):
        load_state_file(loop)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        load_state_file(tmp_path / "dir.safetensors")
    with pytest.raises(DataError, match="does not exist"):
        load_state_file(tmp_path / "none.safetensors")
    with pytest.raises(DataError, match="does not exist"):
        read_json(tmp_path / "none.json")


def test_non_finite_weights_are_refused_at_load_and_save(small_model, tmp_path):
    model, card = load_model(small_model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(DataError, match="NaN or inf"):
        save_model(model, card, tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.safetensors").exists()
    # A received file with NaN weights (written around the check) is refused on load.
    from safetensors.torch import save_file

    folder = tmp_path / "received"
    shutil.copytree(small_model, folder)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    with pytest.raises(DataError, match="NaN or inf"):
        load_model(folder)


def test_json_written_is_valid_json_and_readable_by_others(tmp_path):
    from eviltwins.io import write_json

    write_json(tmp_path / "m.json", {"asr": float("nan"), "x": [float("inf"), 1.0]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "asr": None,
        "x": [None, 1.0],
    }
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask  # was 0600


def test_saved_model_files_get_the_usual_mode(small_model):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.json", "model.safetensors"):
        assert (small_model / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# --- 4. output paths checked before any work ----------------------------------------------------
@pytest.fixture()
def no_training(monkeypatch):
    """Fail the test if any training starts (the --out check must come first)."""
    import eviltwins.experiments.clean

    def boom(*_a, **_k):
        raise AssertionError("training ran before --out was checked")

    monkeypatch.setattr(eviltwins.experiments.clean, "train_model", boom)


def test_bad_out_is_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "afile").write_text("keep me")
    train = ["train", "--dataset", "digits", "--epochs", "1", *CPU, "--out"]
    for out, want in (
        (tmp_path / "afile", "is a file"),
        (tmp_path / "afile" / "sub", "lies under the file"),
        (Path("/proc/eviltwins-test"), "cannot be written"),
    ):
        code, err = _cli(capsys, *train, str(out))
        _one_line_error(code, err)
        assert want in err
    assert (tmp_path / "afile").read_text() == "keep me"


def test_bad_out_is_refused_before_the_attack_runs(small_model, tmp_path, capsys, monkeypatch):
    from eviltwins.attacks.badnet import BadNet

    monkeypatch.setattr(BadNet, "fit", lambda *a, **k: pytest.fail("attack ran"))
    (tmp_path / "afile").write_text("x")
    code, err = _cli(
        capsys, "attack", "badnet", "--model", str(small_model), "--out", str(tmp_path / "afile")
    )
    _one_line_error(code, err)


# --- 5. no silent overwrites -------------------------------------------------------------------
def test_out_equal_to_model_never_touches_the_input(small_model, tmp_path, capsys):
    folder = tmp_path / "clean"
    shutil.copytree(small_model, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for argv in (
        ["attack", "badnet", "--model", str(folder), "--out", str(folder), *CPU],
        ["attack", "badnet", "--model", str(folder), "--out", str(folder), "--overwrite", *CPU],
        ["attack", "badnet", "--model", str(folder / "model.json"), "--out", str(folder), *CPU],
        ["detect", "neural-cleanse", "--model", str(folder), "--out", str(folder), *CPU],
    ):
        code, err = _cli(capsys, *argv)
        _one_line_error(code, err)
        assert "folder of the input model" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_training_into_an_attack_folder_is_refused_then_cleared_with_overwrite(
    small_model, tmp_path, capsys
):
    atk = tmp_path / "badnet"
    et.attack(
        "badnet",
        small_model,
        params={"epochs": 1},
        out=atk,
        device="cpu",
        train_limit=100,
        quiet=True,
    )
    assert (atk / "trigger.safetensors").is_file()
    train = ["train", "--dataset", "digits", "--epochs", "1", "--train-limit", "100", *CPU]
    code, err = _cli(capsys, *train, "--out", str(atk))
    _one_line_error(code, err)
    assert "--overwrite" in err and (atk / "trigger.safetensors").is_file()
    code, _ = _cli(capsys, *train, "--out", str(atk), "--overwrite")
    assert code == 0
    assert sorted(p.name for p in atk.iterdir()) == ["model.json", "model.safetensors"]
    # STRIP can no longer pick up a stale trigger from that folder.
    code, err = _cli(capsys, "detect", "strip", "--model", str(atk), *CPU)
    _one_line_error(code, err)
    assert "holds no trigger.safetensors" in err


def test_overwrite_never_deletes_files_eviltwins_did_not_write(small_model, tmp_path, capsys):
    out = tmp_path / "mine"
    shutil.copytree(small_model, out)
    (out / "notes.txt").write_text("my notes")
    code, err = _cli(
        capsys,
        *["attack", "badnet", "--model", str(small_model), "--out", str(out), "--overwrite"],
        *CPU,
    )
    _one_line_error(code, err)
    assert "did not write" in err
    assert (out / "notes.txt").read_text() == "my notes" and (out / "model.json").is_file()


def test_retraining_into_the_same_kind_of_folder_still_works(small_model, tmp_path):
    out = tmp_path / "clean"
    shutil.copytree(small_model, out)
    et.train("digits", "cnn", epochs=1, train_limit=50, device="cpu", out=out, quiet=True)
    assert load_model(out)[1].training["train_limit"] == 50


# --- 6. tracebacks from values ------------------------------------------------------------------
def test_yaml_may_set_the_options_the_tool_lists(tmp_path, capsys):
    out = tmp_path / "from-yaml"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"out: {out}\ndevice: cpu\nquiet: true\ndataset: digits\nepochs: 1\ntrain_limit: 50\n"
    )
    assert main(["train", "--config", str(cfg)]) == 0
    assert (out / "model.json").is_file()
    # a flag on the command line wins over the config
    other = tmp_path / "from-flag"
    assert main(["train", "--config", str(cfg), "--out", str(other)]) == 0
    assert (other / "model.json").is_file()


@pytest.mark.parametrize(
    "argv_tail, yaml_text, want",
    [
        (["train"], "arch_kwargs: [1, 2]\n", "arch_kwargs must be a mapping"),
        (["train"], "out: 5\n", "option 'out'"),
        (["train"], "quiet: maybe\n", "option 'quiet'"),
        (["train"], "dataset: 5\n", "must be named by a string"),
        (["train"], "epochs: [1]\n", "'epochs'"),
        (["train"], "json: true\n", "cannot be set in config"),
        (["detect", "neural-cleanse", "--model", "{model}"], "labels: all\nsteps: 1\n", None),
        (["detect", "neural-cleanse", "--model", "{model}"], "labels: [1, x]\n", "labels"),
        (["detect", "strip", "--model", "{model}"], "n_clean: zero\n", "n_clean"),
        (["attack", "badnet", "--model", "{model}", "--out", "{tmp}/a"], "target: x\n", "target"),
    ],
)
def test_wrongly_typed_config_values_are_one_line(
    small_model, tmp_path, capsys, argv_tail, yaml_text, want
):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    argv = [a.format(model=small_model, tmp=tmp_path) for a in argv_tail]
    # flags that would override the config's wrong value are left out
    out = [] if "--out" in argv or argv[0] == "detect" else ["--out", str(tmp_path / "o")]
    out = [] if yaml_text.startswith("out:") else out
    flags = ["--device", "cpu"] + ([] if yaml_text.startswith("quiet:") else ["-q"])
    code, err = _cli(capsys, *argv, "--config", str(cfg), *out, *flags)
    if want is None:  # accepted: "all" labels is what the default means
        assert code == 0, err
        return
    _one_line_error(code, err)
    assert want in err


def test_yaml_aliases_and_oversized_configs_are_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n")
    with pytest.raises(DataError, match="alias"):
        read_yaml(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 2_000_000 + "\n")
    with pytest.raises(DataError, match="kB"):
        read_yaml(big)


@pytest.mark.parametrize("seed", [str(2**64), str(2**70), "-1"])
def test_seed_beyond_64_bits_is_one_line(small_model, tmp_path, capsys, seed):
    for argv in (
        ["train", "--dataset", "digits", "--out", str(tmp_path / "t")],
        ["attack", "badnet", "--model", str(small_model), "--out", str(tmp_path / "a")],
        ["detect", "neural-cleanse", "--model", str(small_model)],
    ):
        code, err = _cli(capsys, *argv, "--seed", seed, *CPU)
        _one_line_error(code, err)
        assert "seed" in err


@pytest.mark.parametrize("n", ["0", "-5"])
def test_n_clean_zero_is_one_line(small_model, capsys, n):
    code, err = _cli(capsys, "detect", "strip", "--model", str(small_model), "--n-clean", n, *CPU)
    _one_line_error(code, err)
    assert "n_clean" in err


# --- 8. wording ---------------------------------------------------------------------------------
def test_list_takes_json(capsys):
    assert main(["list", "attacks", "--json"]) == 0
    from eviltwins.attacks import ATTACKS

    assert json.loads(capsys.readouterr().out)["names"] == ATTACKS.names()


def test_unknown_names_have_a_separator_before_the_known_ones(capsys):
    code, err = _cli(capsys, "attack", "zzzz", "--model", "x", "--out", "y")
    _one_line_error(code, err)
    assert "unknown attack 'zzzz'; known: " in err


def test_bare_weights_error_names_no_missing_flag(small_model):
    with pytest.raises(ParamError) as err:
        load_model(small_model / "model.safetensors")
    assert "--arch" not in str(err.value)


# --- hostile loaders (property-based) ----------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
card_fields = st.sampled_from(
    [
        "architecture",
        "input_shape",
        "num_classes",
        "mean",
        "std",
        "classes",
        "arch_kwargs",
        "seed",
        "metrics",
        "schema",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=card_fields, value=json_values)
def test_card_fields_of_any_value_give_our_error_or_a_valid_card(field, value):
    base = ModelCard("cnn", (1, 8, 8), 10, (0.0,), (1.0,)).to_dict()
    try:
        card = ModelCard.from_dict({**base, field: value})
        if card.architecture in et.MODELS.names():
            with torch.device("meta"):  # a card that passes builds without real memory
                card.build()
    except EviltwinsError as err:
        assert "\n" not in str(err)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_as_weights_or_card_give_our_error(data, tmp_path_factory):
    d = tmp_path_factory.mktemp("rnd")
    for name in ("w.safetensors", "w.pt", "model.json"):
        (d / name).write_bytes(data)
        try:
            if name == "model.json":
                ModelCard.from_dict(read_json(d / name))
            else:
                load_state_file(d / name)
        except EviltwinsError:
            pass


@settings(max_examples=60, deadline=None)
@given(header=json_values, extra=st.binary(max_size=64))
def test_forged_safetensors_headers_give_our_error(header, extra, tmp_path_factory):
    d = tmp_path_factory.mktemp("hdr")
    raw = json.dumps(header).encode()
    blob = len(raw).to_bytes(8, "little") + raw + extra
    (d / "w.safetensors").write_bytes(blob)
    with contextlib.suppress(EviltwinsError):
        load_state_file(d / "w.safetensors")
    with contextlib.suppress(EviltwinsError):
        model_from_bytes(blob)


def test_header_declaring_a_huge_tensor_is_refused_unread(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}}
    raw = json.dumps(header).encode()
    (tmp_path / "w.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 16)
    with pytest.raises(DataError, match="not a valid safetensors"):
        load_state_file(tmp_path / "w.safetensors")


def test_trigger_flag_reads_exactly_the_path_given(small_model, tmp_path, capsys):
    from eviltwins.triggers import Trigger

    Trigger.square((1, 32, 32), 0.2).save(tmp_path / "x")  # x.safetensors beside x.pt
    (tmp_path / "x.pt").write_bytes(b"not a trigger")
    code, err = _cli(
        capsys, "detect", "strip", "--model", str(small_model), "--trigger", str(tmp_path / "x.pt")
    )
    _one_line_error(code, err)
    assert ".safetensors" in err


spec_keys = st.sampled_from(
    ["name", "datasets", "models", "attacks", "detectors", "sizes", "transparencies", "seeds"]
    + ["clean", "n_clean", "target", "figures", "train_limit", "save_models", "junk"]
)


@settings(max_examples=120, deadline=None)
@given(
    doc=st.dictionaries(spec_keys, json_values, max_size=6)
    | json_values
    | st.text(max_size=200).map(lambda t: ("raw", t))
)
def test_fuzzed_yaml_configs_and_sweep_specs_give_our_error(doc, tmp_path_factory):
    """Any YAML text or structure given as a config or a sweep spec: a valid spec or one of
    our one-line errors, never another exception (nothing in it is constructed or imported)."""
    import yaml

    from eviltwins.experiments import load_spec

    d = tmp_path_factory.mktemp("yaml")
    text = doc[1] if isinstance(doc, tuple) else yaml.safe_dump(doc)
    (d / "spec.yaml").write_text(text)
    try:
        load_spec(d / "spec.yaml")
    except EviltwinsError as err:
        assert "\n" not in str(err)


def test_yaml_python_tags_construct_nothing(tmp_path):
    sentinel = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(
        f"epochs: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path "
        f"[{str(sentinel)!r}]]\n"
    )
    with pytest.raises(DataError, match="not valid YAML"):
        read_yaml(cfg)
    assert not sentinel.exists()


def test_a_card_asking_for_pretrained_weights_downloads_nothing(tmp_path, monkeypatch):
    """`pretrained: true` in a received card's arch_kwargs would make torchvision fetch
    ImageNet weights; loading takes every parameter from the folder's weights file instead."""
    import torchvision

    card = ModelCard("resnet18-imagenet", (3, 64, 64), 10, (0.5,) * 3, (0.25,) * 3, arch_kwargs={})
    model = card.build()
    save_model(model, replace(card, arch_kwargs={"pretrained": True}), tmp_path / "m")
    real = torchvision.models.resnet18
    asked: list = []

    def spy(*args, weights=None, **kwargs):
        asked.append(weights)
        assert weights is None, "a received card triggered a weights download"
        return real(*args, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "resnet18", spy)
    loaded, got = load_model(tmp_path / "m")
    assert got.arch_kwargs == {"pretrained": True} and asked == [None, None]
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded(x), model.eval()(x))
