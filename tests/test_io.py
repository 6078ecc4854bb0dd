"""Safe persistence: bit-identical round trips, and untrusted pickles are refused unexecuted."""

from __future__ import annotations

import pickle

import pytest
import torch

from eviltwins.errors import DataError, UnsafeFileError
from eviltwins.io import ModelCard, load_model, load_state_file, save_model
from eviltwins.models import build_model


def _card(**kw):
    base = dict(
        architecture="cnn",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        dataset="mnist",
    )
    return ModelCard(**{**base, **kw})


def test_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(3)
    card = _card()
    model = card.build().eval()
    x = torch.rand(16, 1, 28, 28)
    save_model(model, card, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded, card2 = load_model(tmp_path / "m")
    assert card2 == card
    assert torch.equal(model(x), loaded(x))
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)


class _Evil:
    """Unpickling this object would create a sentinel file (stands for arbitrary code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"conv.weight": torch.zeros(2), "payload": _Evil(sentinel)}, fh)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_state_file(evil)
    assert not sentinel.exists()


def test_torch_save_with_code_is_refused(tmp_path):
    sentinel = tmp_path / "pwned2"
    evil = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": _Evil(sentinel)}, evil)
    with pytest.raises(UnsafeFileError):
        load_state_file(evil)
    assert not sentinel.exists()


def test_plain_state_dict_pt_loads_into_card(tmp_path):
    card = _card()
    model = card.build().eval()
    torch.save(model.net.state_dict(), tmp_path / "bare.pt")  # a network without the wrapper
    loaded, _ = load_model(tmp_path / "bare.pt", card=card)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))


def test_wrong_architecture_and_missing_files_are_one_line_errors(tmp_path):
    save_model(_card().build(), _card(), tmp_path / "m")
    with pytest.raises(DataError, match="do not fit") as err:
        load_model(tmp_path / "m" / "model.safetensors", card=_card(architecture="vgg11"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="safetensors"):
        load_state_file(tmp_path / "junk.safetensors")


def test_card_json_records_provenance(tmp_path):
    import json

    card = _card(metrics={"test_acc": 0.99}, seed=1, versions={"torch": torch.__version__})
    save_model(build_model("cnn", (1, 28, 28), 10), card, tmp_path)
    d = json.loads((tmp_path / "model.json").read_text())
    assert d["schema"] == "eviltwins.model/1"
    assert d["architecture"] == "cnn" and d["input_shape"] == [1, 28, 28]
    assert d["metrics"]["test_acc"] == 0.99 and d["seed"] == 1 and "torch" in d["versions"]
