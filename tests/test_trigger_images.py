"""Triggers from elsewhere: a pattern image with a mask image or an alpha, placed by corner or
(row, col), equal to eviltwins' own square trigger when it is the same pixels; the CLI's
``--trigger PATTERN --trigger-mask/--trigger-alpha/--trigger-position`` on ``evaluate`` and
``detect strip``, and one line for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eviltwins.cli import main
from eviltwins.errors import DataError, ParamError
from eviltwins.triggers import Trigger, load_trigger

GREY = (1, 32, 32)
CPU = ["--device", "cpu", "-q"]


def _png(path: Path, arr) -> Path:
    """Write ``arr`` (H, W) grey or (H, W, 3) RGB uint8 as a PNG."""
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def _white(tmp_path: Path, h: int, w: int | None = None, name: str = "patch.png") -> Path:
    return _png(tmp_path / name, np.full((h, w or h), 255))


def _same(a: Trigger, b: Trigger) -> None:
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.pattern, b.pattern)
    assert torch.equal(a.region, b.region)


# --- the trigger ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "side", "size"), [(GREY, 5, 0.15), ((3, 32, 32), 3, 3 / 32)])
def test_an_opaque_white_patch_is_our_square_trigger(tmp_path, shape, side, size):
    """A BadNet-style trigger planted by another toolkit (white, opaque, bottom-right) is the
    same trigger as Trigger.square of the same pixels, and stamps the same images."""
    patch = _white(tmp_path, side)
    ours = Trigger.square(shape, size)
    theirs = Trigger.from_image(shape, patch)  # no mask, no alpha: opaque
    _same(theirs, ours)
    _same(Trigger.from_image(shape, patch, alpha=1.0, position="bottom-right"), ours)
    x = torch.rand(4, *shape)
    assert torch.equal(theirs.stamp(x), ours.stamp(x))
    assert theirs.l1 == ours.l1 == side * side


def test_a_mask_image_and_an_alpha_give_the_same_trigger(tmp_path):
    patch = _png(tmp_path / "p.png", np.arange(16).reshape(4, 4) * 16)
    grey = _png(tmp_path / "m.png", np.full((4, 4), 153))  # 153 / 255 = 0.6
    by_mask = Trigger.from_image(GREY, patch, mask=grey)
    by_alpha = Trigger.from_image(GREY, patch, alpha=0.6)
    assert torch.allclose(by_mask.mask, by_alpha.mask)
    assert torch.equal(by_mask.pattern, by_alpha.pattern)
    # alpha is the opacity m; our squares use the transparency p = 1 - m
    square = Trigger.square(GREY, 4 / 32, transparency=0.4, pattern=by_alpha.pattern)
    assert torch.allclose(square.mask, by_alpha.mask)
    assert torch.equal(square.pattern, by_alpha.pattern)
    # a mask image sets each pixel's opacity: black pixels leave the input as it is
    checker = _png(tmp_path / "c.png", (np.indices((4, 4)).sum(0) % 2) * 255)
    trig = Trigger.from_image(GREY, patch, mask=checker)
    assert trig.l1 == 8 and trig.region_pixels == 8
    x = torch.rand(2, *GREY)
    out = trig.stamp(x)
    assert torch.equal(out[:, :, 28, 28], x[:, :, 28, 28])  # m = 0 at the patch's (0, 0)
    assert torch.allclose(out[:, :, 28, 29], trig.pattern[:, 28, 29].expand(2, 1))


@pytest.mark.parametrize(
    ("position", "row", "col"),
    [
        (None, 30, 28),
        ("bottom-right", 30, 28),
        ("bottom-left", 30, 0),
        ("top-right", 0, 28),
        ("top-left", 0, 0),
        ("center", 15, 14),
        ((3, 5), 3, 5),
        ("3,5", 3, 5),
        ((30, 28), 30, 28),
    ],
)
def test_patch_placement_by_corner_and_by_row_col(tmp_path, position, row, col):
    patch = _white(tmp_path, 2, 4)  # 2 rows, 4 columns
    trig = Trigger.from_image(GREY, patch, position=position)
    want = torch.zeros(1, 32, 32)
    want[:, row : row + 2, col : col + 4] = 1
    assert torch.equal(trig.mask, want) and torch.equal(trig.pattern, want)


def test_colours_follow_the_models_channels(tmp_path):
    red = np.zeros((2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    patch = _png(tmp_path / "red.png", red)
    rgb = Trigger.from_image((3, 8, 8), patch)
    assert rgb.pattern[:, 7, 7].tolist() == [1.0, 0.0, 0.0]
    grey = Trigger.from_image((1, 8, 8), patch)  # PIL's L: 0.299 R + 0.587 G + 0.114 B
    assert grey.pattern.shape == (1, 8, 8)
    assert grey.pattern[0, 7, 7].item() == pytest.approx(76 / 255)


def test_full_size_pattern_needs_a_mask_or_a_blend(tmp_path):
    full = _png(tmp_path / "full.png", np.full((32, 32), 200))
    with pytest.raises(ParamError, match="would replace every input"):
        Trigger.from_image(GREY, full)
    with pytest.raises(ParamError, match="would replace every input"):
        Trigger.from_image(GREY, full, alpha=1)
    blended = Trigger.from_image(GREY, full, alpha=0.2)  # the Blended attack's trigger
    assert torch.allclose(blended.mask, torch.full(GREY, 0.2))
    corner = np.zeros((32, 32))
    corner[-3:, -3:] = 255
    masked = Trigger.from_image(GREY, full, mask=_png(tmp_path / "m.png", corner))
    assert masked.region_pixels == 9 and masked.l1 == 9


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"pattern": "big"}, DataError, "larger than the model's 32x32"),
        ({"position": (31, 0)}, ParamError, "does not fit a 32x32 image"),
        ({"position": (-1, 0)}, ParamError, "does not fit"),
        ({"position": "middle"}, ParamError, "position must be one of"),
        ({"position": (1.5, 2)}, ParamError, "(row, col) ints"),
        ({"mask": "small"}, DataError, "pass a mask of the pattern's size"),
        ({"mask": "black"}, DataError, "black everywhere"),
        ({"mask": "ok", "alpha": 0.5}, ParamError, "not both"),
        ({"alpha": 0}, ParamError, "alpha must be a number in (0, 1]"),
        ({"alpha": 1.5}, ParamError, "alpha must be"),
        ({"alpha": float("nan")}, ParamError, "alpha must be"),
        ({"alpha": True}, ParamError, "alpha must be"),
        ({"pattern": "text"}, DataError, "not an image eviltwins reads"),
        ({"pattern": "missing"}, DataError, "does not exist"),
        ({"shape": (2, 32, 32)}, ParamError, "grey (1 channel) or RGB"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, kwargs, error, needle):
    files = {
        "big": _white(tmp_path, 40, name="big.png"),
        "small": _white(tmp_path, 2, name="small.png"),
        "black": _png(tmp_path / "black.png", np.zeros((3, 3))),
        "ok": _white(tmp_path, 3, name="ok.png"),
        "missing": tmp_path / "missing.png",
    }
    (tmp_path / "text.png").write_text("not an image")
    files["text"] = tmp_path / "text.png"
    kwargs = {k: files.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    shape = kwargs.pop("shape", GREY)
    pattern = kwargs.pop("pattern", files["ok"])
    with pytest.raises(error) as info:
        Trigger.from_image(shape, pattern, **kwargs)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_load_trigger_reads_either_kind(tmp_path):
    saved = Trigger.square(GREY, 0.15).save(tmp_path / "trig")
    _same(load_trigger(saved, GREY), Trigger.square(GREY, 0.15))
    _same(load_trigger(_white(tmp_path, 5), GREY), Trigger.square(GREY, 0.15))
    with pytest.raises(ParamError, match="applies to an image trigger"):
        load_trigger(saved, GREY, alpha=0.5)
    with pytest.raises(ParamError, match="nor an image"):
        load_trigger(tmp_path / "x.pt", GREY)
    with pytest.raises(DataError, match="made for images of shape"):
        load_trigger(saved, (1, 28, 28))
    # the preview PNG beside a saved trigger (enlarged): the hint names the trigger file
    with pytest.raises(DataError, match="preview of trig.safetensors"):
        load_trigger(tmp_path / "trig.png", GREY)


# --- the command line on a BadNet model ---------------------------------------------------------
@pytest.fixture(scope="module")
def badnet(digits_clean, tmp_path_factory):
    """A BadNet digits model (opaque white 5x5 square at the bottom-right, target 0), saved,
    and its own metrics."""
    import eviltwins as et

    _, clean = digits_clean
    out = tmp_path_factory.mktemp("badnet")
    res = et.attack("badnet", clean, params={"epochs": 5}, out=out / "m", device="cpu", quiet=True)
    return out / "m", res.metrics


def _cli(capsys, *argv):
    code = main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_evaluate_a_given_backdoor_from_a_patch_image(badnet, tmp_path, capsys):
    model, metrics = badnet
    patch = _white(tmp_path, 5)  # the same pixels as the attack's trigger, as another tool saw it
    code, out, err = _cli(
        capsys, "evaluate", "--model", model, "--trigger", patch, "--trigger-alpha", "1",
        "--target", "0", "--json", *CPU,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert res["target"] == 0 and res["trigger"] == str(patch)
    assert res["asr"] == pytest.approx(metrics["asr"], abs=1e-6) and res["asr"] > 0.8
    assert res["efficacy"] == pytest.approx(metrics["efficacy"], abs=1e-5)
    assert res["n_attack"] < res["n"]  # over the non-target inputs only
    # the summary line; and without --trigger, no backdoor fields
    code, out, _ = _cli(capsys, "evaluate", "--model", model, "--trigger", patch, *CPU)
    assert code == 0 and "ASR" in out and "efficacy" in out  # target from model.json
    code, out, _ = _cli(capsys, "evaluate", "--model", model, "--json", *CPU)
    assert code == 0 and json.loads(out)["asr"] is None


def test_detect_strip_with_a_patch_image(badnet, tmp_path, capsys):
    model, _ = badnet
    patch = _white(tmp_path, 5)
    code, out, err = _cli(
        capsys, "detect", "strip", "--model", model, "--trigger", patch,
        "--trigger-position", "bottom-right", "--n-clean", "150", "--json", *CPU,
    )  # fmt: skip
    assert code == 0, err
    d = json.loads(out)
    assert d["detector"] == "strip" and d["n_triggered"] > 0


@pytest.mark.parametrize(
    ("verb", "flags", "needle"),
    [
        ("evaluate", ["--trigger", "{big}"], "larger than the model's"),
        ("evaluate", ["--trigger", "{patch}", "--trigger-position", "30,30"], "does not fit"),
        ("evaluate", ["--trigger", "{patch}", "--trigger-position", "middle"], "position"),
        ("evaluate", ["--trigger", "{patch}", "--trigger-mask", "{big}"], "mask of the pattern"),
        ("evaluate", ["--trigger", "{patch}", "--trigger-alpha", "0"], "(0, 1]"),
        ("evaluate", ["--trigger", "{patch}", "--trigger-alpha", "nan"], "(0, 1]"),
        ("evaluate", ["--trigger", "{full}"], "would replace every input"),
        ("evaluate", ["--trigger", "{patch}", "--target", "12"], "not a class"),
        ("evaluate", ["--trigger-alpha", "0.5"], "pass its --trigger too"),
        ("evaluate", ["--target", "0"], "pass its --trigger too"),
        ("detect", ["--trigger", "{saved}", "--trigger-alpha", "0.5"], "image trigger"),
        ("detect", ["--trigger-mask", "{patch}"], "pass its --trigger too"),
        ("detect", ["--trigger", "{patch}", "--trigger-mask", "{big}", "--trigger-alpha", "1"], "not both"),
        ("detect", ["--trigger", "{text}"], "not an image"),
    ],
)  # fmt: skip
def test_bad_trigger_inputs_on_the_command_line_are_one_line(
    badnet, tmp_path, capsys, verb, flags, needle
):
    model, _ = badnet
    files = {
        "patch": _white(tmp_path, 5),
        "big": _white(tmp_path, 40, name="big.png"),
        "full": _white(tmp_path, 32, name="full.png"),
        "saved": model / "trigger.safetensors",
        "text": tmp_path / "notes.jpg",
    }
    files["text"].write_text("not an image")
    argv = [verb, *(["strip"] if verb == "detect" else []), "--model", model, *CPU]
    code, _, err = _cli(capsys, *argv, *(f.format(**files) for f in flags))
    assert code == 2, err
    assert err.startswith("eviltwins: error: ") and "\n" not in err and needle in err, err
