"""A model that is not ours: a class defined here, trained with plain PyTorch, saved with
``torch.save(model.state_dict())``, then imported, inspected and attacked from the command line
(issue 14: "your model, your data")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eviltwins as et
from eviltwins.cli import main
from eviltwins.errors import DataError, ParamError, UnsafeFileError
from eviltwins.io import ModelSource, open_model, unwrap_state_dict

ARCH = f"{__name__}:TinyNet"


class TinyNet(nn.Module):
    """Not one of ours: functional ReLU and pooling, no declared feature layer."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.head(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def tiny(digits_spec, tmp_path_factory) -> tuple[Path, float]:
    """TinyNet trained on digits (32x32 grey) with a plain PyTorch loop, saved as a bare
    state dict; returns the file and its test accuracy."""
    x, y = digits_spec.train.tensors()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(12):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    xt, yt = digits_spec.test.tensors()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path, acc


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def imported(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "model"
    rc = main(["import-model", "--arch", ARCH, "--weights", str(tiny[0]), "--dataset", "digits",
               "--out", str(out), "--device", "cpu", "--quiet"])  # fmt: skip
    assert rc == 0
    return out


def test_import_model_writes_a_folder_that_scores_like_the_original(tiny, tmp_path, capsys):
    path, acc = tiny
    assert acc > 0.85
    out = tmp_path / "m"
    rc, stdout, _ = _run(capsys, "import-model", "--arch", ARCH, "--weights", path, "--dataset",
                         "digits", "--out", out, "--device", "cpu", "--json")  # fmt: skip
    assert rc == 0
    res = json.loads(stdout)
    assert res["architecture"] == ARCH and res["input_shape"] == [1, 32, 32]
    assert res["feature_layer"] == "net.c2" and res["feature_layer_picked"] is True
    assert res["accuracy"] == pytest.approx(acc, abs=1e-6) and res["n"] == 360
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"] == ARCH and card["dataset"] == "digits"
    assert card["mean"] == [0.0] and card["std"] == [1.0]
    assert len(card["training"]["sha256"]) == 64
    assert (out / "model.safetensors").is_file()


def test_an_imported_folder_needs_the_architecture_named_again(imported, tiny, capsys):
    rc, _, err = _run(capsys, "evaluate", "--model", imported, "--device", "cpu")
    assert rc == 2 and err.count("\n") == 1
    assert f"--arch {ARCH}" in err and "nothing was imported" in err
    rc, out, _ = _run(capsys, "evaluate", "--model", imported, "--arch", ARCH, "--device", "cpu",
                      "--json")  # fmt: skip
    assert rc == 0 and json.loads(out)["accuracy"] == pytest.approx(tiny[1], abs=1e-6)
    rc, _, err = _run(capsys, "evaluate", "--model", imported, "--arch", "cnn", "--device", "cpu")
    assert rc == 2 and "does not match" in err
    rc, _, err = _run(capsys, "evaluate", "--model", imported, "--arch", ARCH, "--mean", "0.5")
    assert rc == 2 and "bare weights file" in err


def test_a_weights_file_is_used_directly_with_its_flags(tiny, capsys):
    path, acc = tiny
    rc, out, _ = _run(capsys, "evaluate", "--model", path, "--arch", ARCH, "--dataset", "digits",
                      "--device", "cpu", "--json")  # fmt: skip
    assert rc == 0 and json.loads(out)["accuracy"] == pytest.approx(acc, abs=1e-6)
    # the same through --input-shape / --num-classes; the dataset then comes from --dataset
    rc, out, _ = _run(capsys, "evaluate", "--model", path, "--arch", ARCH, "--input-shape",
                      "1,32,32", "--num-classes", "10", "--dataset", "digits", "--json")  # fmt: skip
    assert rc == 0 and json.loads(out)["accuracy"] == pytest.approx(acc, abs=1e-6)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ((), "--arch"),  # a bare file without its architecture
        (("--arch", ARCH), "--dataset"),  # ... without its input
        (("--arch", ARCH, "--dataset", "digits", "--arch-kwargs", "{width: 4}"), "do not fit"),
        (("--arch", ARCH, "--input-shape", "1,20,20", "--num-classes", "10"), "does not run"),
        (("--arch", ARCH, "--input-shape", "1,32,32", "--num-classes", "7"), "check --num-classes"),
        (("--arch", ARCH, "--dataset", "digits", "--mean", "0.1,0.2"), "'mean'"),
        (("--arch", ARCH, "--dataset", "digits", "--std", "0"), "'std'"),
        (("--arch", ARCH, "--dataset", "digits", "--arch-kwargs", "[1, 2]"), "mapping"),
        (("--arch", "no.such.module:Net", "--dataset", "digits"), "cannot import module"),
        (("--arch", "torchvision:resnet_18", "--dataset", "digits"), "did you mean"),
        (("--arch", "zzz", "--dataset", "digits"), "--arch must be"),
    ],
)
def test_bad_model_flags_are_one_line(tiny, tmp_path, capsys, extra, needle):
    rc, _, err = _run(capsys, "import-model", "--weights", tiny[0], "--out", tmp_path / "m",
                      *(extra or ("--arch", "")), "--device", "cpu")  # fmt: skip
    if not extra:  # import-model requires --arch; evaluate names it in the error
        rc, _, err = _run(capsys, "evaluate", "--model", tiny[0], "--dataset", "digits")
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("eviltwins: error:")
    assert needle in err
    assert not (tmp_path / "m" / "model.json").exists()


def test_checkpoint_wrappers_and_dataparallel_prefix_load_the_same_weights(tiny, tmp_path):
    path, _ = tiny
    state = torch.load(path, weights_only=True)
    src = ModelSource(path, ARCH, (1, 32, 32), 10)
    reference, _ = open_model(src)
    forms = {
        "state_dict.pt": {"state_dict": state, "epoch": 12},
        "model.pth": {"model": state},
        "parallel.bin": {f"module.{k}": v for k, v in state.items()},
        "both.pth": {"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
    }
    x = torch.rand(4, 1, 32, 32)
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        model, card = open_model(ModelSource(tmp_path / name, ARCH, (1, 32, 32), 10))
        assert torch.equal(model(x), reference(x)), name
        assert card.architecture == ARCH
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "nothing.pt")
    with pytest.raises(DataError, match="does not hold a state_dict"):
        unwrap_state_dict(torch.load(tmp_path / "nothing.pt", weights_only=True), "x")
    with pytest.raises(DataError, match="does not hold a state_dict"):
        open_model(ModelSource(tmp_path / "nothing.pt", ARCH, (1, 32, 32), 10))


def test_a_pickled_module_is_refused_not_run(tmp_path):
    torch.save(TinyNet(), tmp_path / "whole.pt")  # a pickled object, not a state dict
    with pytest.raises(UnsafeFileError, match="refused to load"):
        open_model(ModelSource(tmp_path / "whole.pt", ARCH, (1, 32, 32), 10))


def test_layers_lists_the_forward_pass_and_marks_the_picked_layer(tiny, capsys):
    rc, out, _ = _run(capsys, "layers", "--model", tiny[0], "--arch", ARCH, "--dataset", "digits")
    assert rc == 0
    lines = out.splitlines()
    assert any(line.startswith("* net.c2") and "16x16x16" in line for line in lines)
    assert lines[-1] == "* default layer (picked by rule)"
    rc, out, _ = _run(capsys, "layers", "--model", tiny[0], "--arch", ARCH, "--input-shape",
                      "1,32,32", "--num-classes", "10", "--json")  # fmt: skip
    res = json.loads(out)
    assert [x["name"] for x in res["layers"]] == [
        "normalize",
        "net.c1",
        "net.c2",
        "net.head",
        "net",
    ]
    assert res["layers"][2]["output_shape"] == [16, 16, 16]
    # our own architectures declare theirs
    res = et.layers(ModelSource(tiny[0], ARCH, (1, 32, 32), 10))
    assert res.feature_layer == "net.c2" and res.feature_layer_picked


def test_auto_layer_rule_on_torchvision_models():
    from eviltwins.models import auto_feature_layer, build_model

    expected = {"resnet18": "net.layer4", "vgg11": "net.features", "mobilenet_v2": "net.features"}
    for name, layer in expected.items():
        model = build_model(f"torchvision:{name}", (3, 32, 32), 10)
        assert auto_feature_layer(model) == layer, name
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    assert auto_feature_layer(mlp, torch.zeros(1, 1, 4, 4)) == "1"
    with pytest.raises(ParamError, match="--layer"):
        auto_feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.zeros(1, 1, 4, 4))


def test_torchvision_architecture_imports_without_trust(tmp_path, capsys):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    rc, out, _ = _run(capsys, "import-model", "--arch", "torchvision:resnet18", "--weights",
                      tmp_path / "r18.pth", "--input-shape", "3,32,32", "--num-classes", "10",
                      "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--out", tmp_path / "m",
                      "--json")  # fmt: skip
    assert rc == 0
    assert json.loads(out)["feature_layer"] == "net.layer4"
    model, card = et.load_model(tmp_path / "m")  # no trust needed: torchvision runs no user code
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    assert torch.allclose(model(x), net((x - 0.5) / 0.25), atol=1e-5)
    assert card.architecture == "torchvision:resnet18" and card.mean == (0.5, 0.5, 0.5)


def test_attacks_run_on_a_foreign_model_with_the_picked_layer(tiny, imported, tmp_path, capsys):
    rc, out, err = _run(capsys, "attack", "trojannn", "--model", tiny[0], "--arch", ARCH,
                        "--dataset", "digits", "--out", tmp_path / "trojannn", "--epochs", "1",
                        "--trigger-steps", "5", "--device", "cpu", "--json")  # fmt: skip
    assert rc == 0, err
    assert "using 'net.c2'" in err  # the picked layer is named
    res = json.loads(out)
    assert res["extra"]["layer"] == "net.c2"
    card = json.loads((tmp_path / "trojannn" / "model.json").read_text())
    assert card["architecture"] == ARCH
    rc, out, err = _run(capsys, "attack", "badnet", "--model", imported, "--arch", ARCH,
                        "--out", tmp_path / "badnet", "--epochs", "3", "--size", "0.2", "--lr", "0.05",
                        "--device", "cpu", "--json")  # fmt: skip
    assert rc == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["asr"] > 0.8 and metrics["clean_acc"] > 0.85
    # the poisoned folder names a user architecture too: using it needs --arch again
    rc, _, err = _run(capsys, "evaluate", "--model", tmp_path / "badnet", "--device", "cpu")
    assert rc == 2 and f"--arch {ARCH}" in err


def test_scan_of_a_foreign_model_weights_file_and_folder(tiny, imported, tmp_path, capsys):
    """The blue-team path: scan the bare weights file and the imported folder (small budgets);
    both runs see the same model, so they give the same per-label figures and verdict."""
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(
        "neural-cleanse: {steps: 20, batch_size: 16}\n"
        "abs: {steps: 40, top_k: 2, seeds_per_class: 2, n_eval: 100}\n"
    )
    common = ["--config", cfg, "--device", "cpu", "--quiet", "--json"]
    rc, out, err = _run(capsys, "scan", "--model", tiny[0], "--arch", ARCH, "--dataset", "digits",
                        "--out", tmp_path / "file", *common)  # fmt: skip
    assert rc == 0, err
    from_file = json.loads(out)
    assert set(from_file["reports"]) == {"neural-cleanse", "abs"}
    assert from_file["reports"]["abs"]["details"]["layer"] == "net.c2"  # picked by rule
    verdict = from_file["verdict"]
    assert verdict.startswith(("clean (", "backdoor suspected ("))
    rc, out, err = _run(capsys, "scan", "--model", imported, "--arch", ARCH,
                        "--out", tmp_path / "folder", *common)  # fmt: skip
    assert rc == 0, err
    from_folder = json.loads(out)
    assert from_folder["verdict"] == verdict
    for name in ("neural-cleanse", "abs"):
        assert from_folder["reports"][name]["scores"] == pytest.approx(
            from_file["reports"][name]["scores"], rel=1e-4, abs=1e-4
        )
    assert (tmp_path / "folder" / "scan.html").is_file()
    rc, _, err = _run(capsys, "scan", "--model", imported, "--out", tmp_path / "x", *common)
    assert rc == 2 and f"--arch {ARCH}" in err  # the folder alone is not trusted


def test_a_weights_file_with_a_path_dataset_and_its_options(tiny, digits_spec, tmp_path, capsys):
    """The dataset loaded (with --image-size) to give a bare file its input is the one evaluated:
    the options apply once, and the 8x8 arrays reach the 32x32 model."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 255 / 16).astype("uint8")
    np.savez(tmp_path / "d.npz", x_train=x[:1400], y_train=d.target[:1400], x_test=x[1400:],
             y_test=d.target[1400:])  # fmt: skip
    rc, out, err = _run(capsys, "evaluate", "--model", tiny[0], "--arch", ARCH, "--dataset",
                        tmp_path / "d.npz", "--image-size", "32", "--device", "cpu",
                        "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == 397 and res["accuracy"] > 0.9
