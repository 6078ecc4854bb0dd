"""Models from where users keep them: ``--arch timm:NAME`` (any timm classification model, built
without a download, weights from the user's file) and Hugging Face-style folders
(``config.json`` + ``model.safetensors`` as ``save_pretrained`` writes them), imported, scanned
and attacked from the command line; hostile ``config.json`` files and pickles refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import eviltwins as et
from eviltwins.cli import main
from eviltwins.errors import DataError, ParamError
from eviltwins.io import ModelSource, open_model
from eviltwins.models import build_model

timm = pytest.importorskip("timm")

ARCH = "timm:resnet18"


def _run(capsys, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, needle: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("eviltwins: error:"), err
    assert needle in err, err


def _resnet(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=channels).eval()


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A timm resnet18 (3 channels, 10 classes) saved with save_file(model.state_dict())."""
    net = _resnet(3)
    path = tmp_path_factory.mktemp("r18") / "r18.safetensors"
    save_file(net.state_dict(), path)
    return path, net


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory) -> Path:
    """scikit-learn's digits as a 3x32x32 .npz (300 train, 100 test images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images, np.ones((4, 4))) * 255 / 16
    x = np.repeat(x[..., None], 3, axis=-1).astype("uint8")  # NHWC
    path = tmp_path_factory.mktemp("data") / "d3.npz"
    np.savez(path, x_train=x[:300], y_train=d.target[:300], x_test=x[1600:1700],
             y_test=d.target[1600:1700])  # fmt: skip
    return path


@pytest.fixture(scope="module")
def imported(r18, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "model"
    rc = main(["import-model", "--arch", ARCH, "--weights", str(r18[0]), "--input-shape",
               "3,32,32", "--num-classes", "10", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    return out


def _hf_folder(root: Path, state: dict[str, torch.Tensor], config: object) -> Path:
    """A folder as timm's save_pretrained writes it: config.json + model.safetensors."""
    root.mkdir(parents=True)
    save_file(state, root / "model.safetensors")
    text = config if isinstance(config, str) else json.dumps(config)
    (root / "config.json").write_text(text)
    return root


def test_import_builds_the_timm_model_without_trust_or_download(r18, imported, capsys):
    model, card = et.load_model(imported)  # timm runs no user code: no trust needed
    assert card.architecture == ARCH and card.input_shape == (3, 32, 32)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), r18[1](x), atol=1e-5)
    rc, out, _ = _run(capsys, "layers", "--model", imported, "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["feature_layer"] == "net.layer4" and res["feature_layer_picked"]  # by the rule


def test_one_channel_timm_model_on_digits(tmp_path, capsys):
    net = _resnet(1)
    save_file(net.state_dict(), tmp_path / "grey.safetensors")
    rc, out, err = _run(capsys, "evaluate", "--model", tmp_path / "grey.safetensors", "--arch",
                        ARCH, "--dataset", "digits", "--test-limit", "64", "--device", "cpu",
                        "--json")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["n"] == 64
    # the 3-channel weights do not fit a 1-channel input: one line
    rc, _, err = _run(capsys, "evaluate", "--model", tmp_path / "grey.safetensors", "--arch",
                      ARCH, "--input-shape", "3,32,32", "--num-classes", "10")  # fmt: skip
    _one_line_error(rc, err, "conv1.weight")


def test_scan_of_an_imported_timm_model(imported, rgb_npz, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "neural-cleanse: {steps: 3, n_inputs: 16, batch_size: 16, labels: [0, 1]}\n"
        "abs: {steps: 3, seeds_per_class: 1, top_k: 2, n_eval: 10}\n"
    )
    rc, out, err = _run(capsys, "scan", "--model", imported, "--arch", ARCH, "--dataset", rgb_npz,
                        "--config", cfg, "--out", tmp_path / "scan", "--device", "cpu",
                        "--quiet", "--json")  # fmt: skip
    assert rc == 0, err
    res = json.loads(out)
    assert set(res["reports"]) == {"neural-cleanse", "abs"}
    assert res["reports"]["abs"]["details"]["layer"] == "net.layer4"


def test_badnet_on_a_timm_model(imported, rgb_npz, tmp_path, capsys):
    rc, out, err = _run(capsys, "attack", "badnet", "--model", imported, "--arch", ARCH,
                        "--dataset", rgb_npz, "--epochs", "1", "--train-limit", "64",
                        "--test-limit", "32", "--batch-size", "32", "--out", tmp_path / "bad",
                        "--device", "cpu", "--quiet", "--json")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["metrics"]["n_attack"] > 0
    model, card = et.load_model(tmp_path / "bad")
    assert card.architecture == ARCH and isinstance(model.net, timm.models.ResNet)


def test_a_hugging_face_folder_with_prefixed_keys(r18, rgb_npz, tmp_path, capsys):
    """config.json + model.safetensors (keys under ``timm_model.``, as transformers' timm
    wrapper saves them): the input and classes come from config.json; flags and the dataset
    win over it."""
    path, net = r18
    state = {f"timm_model.{k}": v for k, v in net.state_dict().items()}
    config = {"architecture": "resnet18", "num_classes": 10, "label_names": list("abcdefghij"),
              "pretrained_cfg": {"input_size": [3, 48, 48]}}  # fmt: skip
    folder = _hf_folder(tmp_path / "hf", state, config)
    model, card = open_model(ModelSource(folder, ARCH))
    assert card.input_shape == (3, 48, 48) and card.num_classes == 10
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)
    _, card = open_model(ModelSource(folder, ARCH, input_shape=(3, 32, 32)))
    assert card.input_shape == (3, 32, 32)  # the flag wins
    rc, out, err = _run(capsys, "evaluate", "--model", folder, "--arch", ARCH, "--dataset",
                        rgb_npz, "--device", "cpu", "--json")  # fmt: skip
    assert rc == 0, err  # the dataset's 3x32x32 wins over config.json's 48x48
    assert json.loads(out)["n"] == 100
    rc, out, err = _run(capsys, "import-model", "--arch", ARCH, "--weights", folder,
                        "--out", tmp_path / "m", "--json")  # fmt: skip
    assert rc == 0, err
    saved = json.loads((tmp_path / "m" / "model.json").read_text())
    assert saved["training"]["imported_from"] == "hf/model.safetensors"
    assert saved["input_shape"] == [3, 48, 48]
    # without --arch: one line that names what config.json suggests
    rc, _, err = _run(capsys, "evaluate", "--model", folder, "--dataset", rgb_npz)
    _one_line_error(rc, err, "--arch timm:resnet18")


def test_timm_save_pretrained_folder(r18, tmp_path):
    """A folder written by timm's own save_pretrained (plain keys)."""
    hub = pytest.importorskip("timm.models._hub")
    net = r18[1]
    hub.save_for_hf(net, str(tmp_path / "saved"), safe_serialization=True)
    model, card = open_model(ModelSource(tmp_path / "saved", ARCH, input_shape=(3, 32, 32)))
    assert card.num_classes == 10
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"num_classes": 10**30}, "'num_classes' must be an integer in [2, 100,000]"),
        ({"num_classes": "10"}, "'num_classes' must be"),
        ({"num_labels": True}, "'num_labels' must be"),
        ('{"num_classes": NaN}', "not valid JSON"),
        ({"id2label": ["a", "b"]}, "'id2label' must be an object"),
        ({"id2label": {"0": "a", "7": "b"}}, "keyed '0'..'1'"),
        ({"label_names": [1, 2, 3]}, "class names (strings)"),
        ({"num_classes": 10, "label_names": ["a", "b"]}, "disagrees about the number of classes"),
        ({"pretrained_cfg": {"input_size": [3, 10**9, 10**9]}}, "pretrained_cfg.input_size"),
        ({"pretrained_cfg": {"input_size": [3, 32.5, 32]}}, "pretrained_cfg.input_size"),
        ({"pretrained_cfg": []}, "'pretrained_cfg' must be an object"),
        ([1, 2], "must be a JSON object"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_hostile_config_json_is_refused_in_one_line(tmp_path, capsys, config, needle):
    # the refusal comes before any weights are read: a tiny stand-in file is enough
    folder = _hf_folder(tmp_path / "hf", {"x": torch.zeros(1)}, config)
    rc, _, err = _run(capsys, "evaluate", "--model", folder, "--arch", ARCH, "--input-shape",
                      "3,32,32", "--num-classes", "10")  # fmt: skip
    _one_line_error(rc, err, needle)
    assert "config.json" in err


class _Payload:
    """Unpickling this would create the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pytorch_model_bin_is_read_only_with_weights_only(r18, tmp_path, capsys):
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    marker = tmp_path / "ran"
    torch.save({"state_dict": _Payload(marker)}, hostile / "pytorch_model.bin")
    rc, _, err = _run(capsys, "evaluate", "--model", hostile, "--arch", ARCH, "--input-shape",
                      "3,32,32", "--num-classes", "10")  # fmt: skip
    _one_line_error(rc, err, "refused")
    assert not marker.exists()  # nothing in the pickle ran
    benign = tmp_path / "benign"
    benign.mkdir()
    torch.save(r18[1].state_dict(), benign / "pytorch_model.bin")
    model, _ = open_model(ModelSource(benign, ARCH, (3, 32, 32), 10))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), r18[1](x), atol=1e-5)


def test_timm_names_and_options_are_checked(r18, tmp_path, capsys):
    common = ["--weights", r18[0], "--input-shape", "3,32,32", "--num-classes", "10"]
    rc, _, err = _run(capsys, "import-model", "--arch", "timm:resnet_18", *common,
                      "--out", tmp_path / "a")  # fmt: skip
    _one_line_error(rc, err, "did you mean resnet18")
    rc, _, err = _run(capsys, "import-model", "--arch", "timm:hf-hub:someone/model", *common,
                      "--out", tmp_path / "b")  # fmt: skip
    _one_line_error(rc, err, "--arch must be")
    for kwargs in ("{checkpoint_path: evil.pth}", "{pretrained_cfg_overlay: {file: x.pth}}"):
        rc, _, err = _run(capsys, "import-model", "--arch", ARCH, *common, "--arch-kwargs",
                          kwargs, "--out", tmp_path / "c")  # fmt: skip
        _one_line_error(rc, err, "would fetch or read weights")
    assert not any((tmp_path / d).exists() for d in "abc")
    with pytest.raises(ParamError, match="would fetch or read weights"):
        build_model(ARCH, (3, 32, 32), 10, pretrained=True)  # training never downloads either


def test_a_received_card_cannot_make_timm_read_a_checkpoint(imported, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(imported, folder)
    card = json.loads((folder / "model.json").read_text())
    card["arch_kwargs"] = {"checkpoint_path": str(tmp_path / "evil.pth")}
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(DataError, match="would fetch or read weights"):
        et.load_model(folder)


def test_without_timm_the_error_says_how_to_install_it(r18, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails
    rc, _, err = _run(capsys, "import-model", "--arch", ARCH, "--weights", r18[0],
                      "--input-shape", "3,32,32", "--num-classes", "10",
                      "--out", tmp_path / "m")  # fmt: skip
    _one_line_error(rc, err, "pip install 'eviltwins[timm]'")
