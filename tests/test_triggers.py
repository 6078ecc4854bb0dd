"""Trigger stamping, the square factory, tanh parameters and persistence (property-based)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eviltwins.errors import DataError, ParamError
from eviltwins.triggers import Trigger, TriggerParams, side_pixels, stamp

shapes = st.sampled_from([(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 17, 23)])
sizes = st.floats(min_value=0.01, max_value=1.0)
transparencies = st.floats(min_value=0.0, max_value=0.99)
positions = st.sampled_from(["bottom-right", "bottom-left", "top-right", "top-left", "center"])


def _images(shape, n=4, seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_zero_mask_is_identity(shape, seed):
    x = _images(shape, seed=seed)
    pattern = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1))
    out = Trigger(torch.zeros(1, *shape[1:]), pattern).stamp(x)
    assert torch.equal(out, x)


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    size=sizes,
    position=positions,
    pattern=st.sampled_from(["white", "black", "random"]),
)
def test_opaque_mask_reproduces_pattern_on_covered_pixels(shape, size, position, pattern):
    trig = Trigger.square(shape, size, 0.0, position, pattern, seed=3)
    x = _images(shape)
    out = trig.stamp(x)
    covered = trig.region[0]
    assert torch.equal(out[:, :, covered], trig.pattern[:, covered].expand(len(x), -1, -1))
    assert torch.equal(out[:, :, ~covered], x[:, :, ~covered])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, size=sizes, p=transparencies, position=positions)
def test_outputs_in_unit_interval_and_area_matches_size(shape, size, p, position):
    trig = Trigger.square(shape, size, p, position, "random")
    out = trig.stamp(_images(shape))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    side = min(side_pixels(size, shape[2]), shape[1])
    assert trig.region_pixels == side * side
    assert trig.l1 == pytest.approx(side * side * (1 - p), rel=1e-5)
    # Mask values: 1 - p inside, 0 outside.
    assert torch.allclose(trig.mask[trig.region], torch.full((side * side,), 1 - p))


def test_transparency_blends():
    x = torch.zeros(1, 1, 10, 10)
    out = Trigger.square((1, 10, 10), 0.2, 0.7).stamp(x)
    assert out[0, 0, -1, -1].item() == pytest.approx(0.3)
    assert out[0, 0, 0, 0].item() == 0


def test_positions_and_explicit_row_col():
    t = Trigger.square((1, 10, 10), 0.3, position="top-left")
    assert t.region[0, :3, :3].all() and t.region.sum() == 9
    t = Trigger.square((1, 10, 10), 0.3, position="2,5")
    assert t.region[0, 2:5, 5:8].all() and t.region.sum() == 9
    t = Trigger.square((1, 10, 10), 0.2, position="center")
    assert t.region[0, 4:6, 4:6].all()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"size": 0.0}, "size"),
        ({"size": 1.5}, "size"),
        ({"transparency": 1.0}, "transparency"),
        ({"transparency": -0.1}, "transparency"),
        ({"position": "middle"}, "position"),
        ({"position": "9,9"}, "does not fit"),
        ({"pattern": "/no/such.png"}, "no such file"),
        ({"pattern": torch.ones(1, 5, 5)}, "shape"),
    ],
)
def test_validation_one_line(kwargs, needle):
    with pytest.raises(ParamError, match=needle) as err:
        Trigger.square((1, 10, 10), **{"size": 0.3, **kwargs})
    assert "\n" not in str(err.value)


def test_wrong_image_shape_is_refused():
    with pytest.raises(DataError, match="made for"):
        Trigger.square((1, 28, 28), 0.2).stamp(torch.rand(2, 3, 32, 32))


def test_image_file_and_tensor_patterns(tmp_path):
    from PIL import Image

    Image.new("RGB", (7, 7), (255, 0, 0)).save(tmp_path / "red.png")
    t = Trigger.square((3, 16, 16), 0.25, pattern=tmp_path / "red.png")
    assert torch.allclose(t.pattern[:, t.region[0]].mean(1), torch.tensor([1.0, 0.0, 0.0]))
    pat = torch.rand(3, 4, 4)
    t = Trigger.square((3, 16, 16), 0.25, pattern=pat)
    assert torch.equal(t.pattern[:, 12:, 12:], pat)


def test_save_load_round_trip(tmp_path):
    t = Trigger.square((3, 32, 32), 0.2, 0.4, "top-right", "random", seed=5)
    path = t.save(tmp_path / "trig")
    assert path.suffix == ".safetensors" and (tmp_path / "trig.png").is_file()
    back = Trigger.load(path)
    assert torch.equal(back.mask, t.mask) and torch.equal(back.pattern, t.pattern)
    assert torch.equal(back.region, t.region)
    with pytest.raises(DataError, match="does not exist"):
        Trigger.load(tmp_path / "missing")


def test_stamp_function_is_the_batched_formula():
    x, m, r = torch.rand(5, 3, 4, 4), torch.rand(1, 4, 4), torch.rand(3, 4, 4)
    assert torch.allclose(stamp(x, m, r), x * (1 - m) + r * m)


def test_tanh_params_reproduce_and_stay_in_region():
    init = Trigger.square((1, 12, 12), 0.25, 0.3, pattern="random", seed=1)
    params = TriggerParams(init, learn_mask=True, max_mask=0.7)
    trig = params.trigger()
    assert torch.allclose(trig.mask, init.mask, atol=0.011)  # start clamped off tanh's tails
    assert torch.allclose(
        trig.pattern[:, init.region[0]], init.pattern[:, init.region[0]], atol=0.011
    )
    with torch.no_grad():
        params.w_mask.add_(5.0)
        params.w_pattern.sub_(5.0)
    trig = params.trigger()
    assert float(trig.mask.max()) <= 0.7 + 1e-6
    assert trig.mask[~init.region].abs().sum() == 0
    fixed = TriggerParams(init, learn_mask=False)
    assert not fixed.w_mask.requires_grad and torch.equal(fixed.mask(), init.mask)


def test_shared_mask_has_one_opacity():
    init = Trigger.square((1, 12, 12), 0.25, 0.3)
    params = TriggerParams(init, learn_mask=True, max_mask=0.7, shared_mask=True)
    assert params.w_mask.numel() == 1
    with torch.no_grad():
        params.w_mask.sub_(1.0)
    m = params.trigger().mask
    vals = m[init.region]
    assert torch.allclose(vals, vals[0].expand_as(vals)) and float(vals[0]) < 0.69
