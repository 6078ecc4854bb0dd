"""Scans at scale: label / candidate scheduling (k-arm) reaches the full budget's result on the
labels it finishes, batch norm folded for inspection gives the same logits and gradients, and
bfloat16 runs only after its check."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from eviltwins.cli import main
from eviltwins.detectors import ABS, NeuralCleanse
from eviltwins.detectors.abs_reverse import seed_cycle, step_seeds
from eviltwins.detectors.abs_stimulation import forward_images
from eviltwins.detectors.nc_schedule import (
    default_keep,
    labels_to_finish,
    projected_norms,
    scheduled_index,
    screen_counts,
)
from eviltwins.detectors.tabor import TABOR
from eviltwins.metrics import anomaly_index
from eviltwins.models import build_model, layout
from eviltwins.models.fold import conv_bn_pairs, fold_batchnorm
from eviltwins.models.layout import pass_size, passes
from eviltwins.models.precision import checked_precision, native_bf16

NC_FAST = {"steps": 60, "n_inputs": 64, "check_every": 5, "patience": 2, "quiet": True}


# --- NeuralCleanse label schedule ----------------------------------------------------------
@pytest.fixture(scope="module")
def nc_pair(digits_badnet, digits_spec):
    full = NeuralCleanse(**NC_FAST).inspect(digits_badnet.model, digits_spec)
    # a screen of 45 steps: the masks have shrunk there (median L1 about 300 of the 512 they
    # start from; at 15 steps they have not)
    karm = NeuralCleanse(schedule="k-arm", keep=3, screen_steps=45, **NC_FAST).inspect(
        digits_badnet.model, digits_spec
    )
    return full, karm


def test_k_arm_finishes_labels_exactly_as_the_full_budget(nc_pair):
    full, karm = nc_pair
    d = karm.details
    assert d["schedule"] == "k-arm" and d["screen_at"] == 45
    unfinished = set(d["unfinished"])
    assert 1 <= len(unfinished) <= 7  # 3 kept (plus any the screen flags), the rest stop
    for lab in range(10):
        if lab in unfinished:
            assert d["steps"][lab] == 45
        else:  # the same steps, the same norm, to the last digit
            assert d["steps"][lab] == full.details["steps"][lab]
            assert karm.scores[lab] == full.scores[lab]
    # the unfinished norms: screen norm x the finished labels' median shrink
    shrink = d["shrink"][0]
    for lab in unfinished:
        assert karm.scores[lab] == pytest.approx(d["screen_norms"][lab] * shrink, rel=1e-5)
    assert 0 < shrink <= 1.0  # the finished labels' masks only shrink after the screen
    # each index: the smaller of the end norms' and the screen norms' (both over all labels)
    assert d["screen_counted"] is True
    both = np.minimum(anomaly_index(karm.scores), anomaly_index(d["screen_norms"]))
    assert karm.anomaly == pytest.approx(both.tolist(), abs=1e-9)


def test_k_arm_flags_the_backdoor_like_the_full_budget(nc_pair):
    full, karm = nc_pair
    assert 0 in full.flagged and karm.flagged == full.flagged
    assert 0 not in karm.details["unfinished"]


def test_k_arm_stops_every_label_at_a_screen_that_flags_nothing(digits_clean, digits_spec):
    res, _ = digits_clean
    # at 50 of 60 steps the clean model's largest screen index is 2.3: below a threshold of 3
    nc = NeuralCleanse(schedule="k-arm", keep=3, screen_steps=50, threshold=3.0, **NC_FAST)
    rep = nc.inspect(res.model, digits_spec)
    d = rep.details
    assert d["screen_counted"] and rep.flagged == [] and d["shrink"] == [1.0]
    assert max(d["steps"]) == 50  # no label ran past the screen
    assert sorted(d["unfinished"]) == [lab for lab in range(10) if d["steps"][lab] == 50]
    both = np.minimum(anomaly_index(rep.scores), anomaly_index(d["screen_norms"]))
    assert rep.anomaly == pytest.approx(both.tolist(), abs=1e-9)


def test_the_full_schedule_is_the_default_and_spends_every_step(nc_pair):
    full, _ = nc_pair
    assert NeuralCleanse().schedule == "full" and NeuralCleanse().precision == "fp32"
    assert full.details["unfinished"] == [] and full.details["screen_at"] is None
    assert set(full.details["steps"]) == {60}  # early stop off the table at this budget


def test_labels_to_finish_keeps_the_smallest_and_what_the_screen_flags():
    screen = torch.tensor([50.0, 10.0, 52.0, 49.0, 51.0, 48.0, 53.0, 47.0])
    running = torch.ones(8, dtype=torch.bool)
    running[3] = False  # stopped early: already finished, not re-kept
    keep = labels_to_finish(screen, running, 2, threshold=2.0)
    assert keep.tolist() == [False, True, False, False, False, False, False, True]
    norms = torch.tensor([40.0, 5.0, 40.0, 49.0, 40.0, 40.0, 40.0, 23.5])
    unfinished = running & ~keep
    shrink = projected_norms(norms, screen, keep, unfinished)
    assert shrink == pytest.approx(0.5)  # median of 5/10 and 23.5/47
    assert norms[0] == pytest.approx(25.0) and norms[3] == 49.0  # finished: untouched
    assert [default_keep(n) for n in (3, 10, 20, 43, 100)] == [3, 3, 3, 5, 7]
    # a screen that counts and flags nothing finishes no label; one that flags finishes as above
    no_outlier = torch.tensor([50.0, 46.0, 52.0, 49.0, 51.0, 48.0, 53.0, 47.0])
    assert not labels_to_finish(no_outlier, running, 2, threshold=2.0, counts=True).any()
    assert (
        labels_to_finish(screen, running, 2, threshold=2.0, counts=True).tolist() == keep.tolist()
    )
    # the screen by default: a fifth of the budget, rounded up to a check
    assert NeuralCleanse(schedule="k-arm", **NC_FAST).screen_at(5) == 15


def test_a_label_is_flagged_only_as_an_outlier_at_the_screen_and_at_the_end():
    # the clean labels' norms spread out after the screen; projected with one shrink they do
    # not, and label 0 (finished, exact) would pass the threshold on the end norms alone
    screen = [130.0, 160.0, 150.0, 170.0, 140.0, 180.0, 165.0, 155.0]
    end = [65.0, 96.0, 90.0, 102.0, 84.0, 108.0, 99.0, 93.0]  # all but 0 projected at 0.6
    assert anomaly_index(end)[0] > 2.0 >= anomaly_index(screen)[0]
    idx = scheduled_index(end, screen)
    assert idx[0] == pytest.approx(anomaly_index(screen)[0]) and idx[0] <= 2.0
    # a backdoor's label, an outlier at the screen and at the end, keeps its end index
    screen[0], end[0] = 40.0, 12.0
    idx = scheduled_index(end, screen)
    assert idx[0] == min(anomaly_index(end)[0], anomaly_index(screen)[0]) and idx[0] > 2.0
    # no screen (the full schedule): the end norms' index
    assert scheduled_index(end, None).tolist() == anomaly_index(end).tolist()


def test_the_screen_counts_once_its_masks_have_shrunk():
    # the digits BadNet's screen norms (target 0, 32x32: random masks start at L1 512): after
    # 15 of 60 steps the masks have grown to reach the success rate and the target is no
    # outlier yet; after 100 of 500 steps they have shrunk and it is
    early = [562.0, 618.0, 593.0, 577.0, 589.0, 576.0, 621.0, 612.0, 573.0, 582.0]
    late = [64.0, 198.0, 157.0, 162.0, 161.0, 159.0, 199.0, 188.0, 162.0, 156.0]
    assert not screen_counts(early, 32 * 32) and screen_counts(late, 32 * 32)
    assert anomaly_index(early)[0] < 2.0 < anomaly_index(late)[0]
    # the cut: a median at 0.75 of the start does not count yet, just below it does
    assert not screen_counts([384.0] * 3, 32 * 32) and screen_counts([383.0] * 3, 32 * 32)


def test_tabor_accepts_the_label_schedule():
    t = TABOR(schedule="k-arm", screen_steps=10, keep=2, precision="bf16")
    assert t.get_params()["schedule"] == "k-arm" and t.precision == "bf16"


# --- ABS candidate schedule ----------------------------------------------------------------
def test_abs_k_arm_finishes_candidates_exactly_as_the_full_budget(digits_badnet, digits_spec):
    fast = {"steps": 20, "n_eval": 100, "top_k": 6, "quiet": True}
    full = ABS(**fast).inspect(digits_badnet.model, digits_spec)
    karm = ABS(schedule="k-arm", keep=2, **fast).inspect(digits_badnet.model, digits_spec)
    assert karm.details["candidates"] == full.details["candidates"]
    stopped = set(karm.details["unfinished_candidates"])
    assert stopped and len(stopped) <= len(full.details["candidates"]) - 2
    for i, (a, b) in enumerate(
        zip(full.details["candidate_reasr"], karm.details["candidate_reasr"], strict=True)
    ):
        if i not in stopped:
            assert a == b
    assert karm.flagged == full.flagged


# --- batch norm folded ---------------------------------------------------------------------
def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10, width=4).eval()
    for m in model.modules():  # running statistics far from (0, 1): folding must matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_folding_gives_the_same_logits_and_gradients_and_restores_the_model():
    model = _bn_model()
    x = torch.rand(6, 3, 32, 32)
    before = {n: p for n, p in model.named_parameters()}
    mods = dict(model.named_modules())
    xi = x.clone().requires_grad_(True)
    ref = model(xi)
    (ref_g,) = torch.autograd.grad(ref.logsumexp(-1).sum(), xi)
    with fold_batchnorm(model, x[:2]) as n:
        assert n == 20  # every conv -> bn pair of a ResNet-18, shortcuts included
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (g,) = torch.autograd.grad(out.logsumexp(-1).sum(), xi)
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
        assert torch.allclose(g, ref_g, rtol=1e-3, atol=1e-6)
    assert {n: p for n, p in model.named_parameters()} == before  # the same objects
    assert all(dict(model.named_modules())[k] is m for k, m in mods.items())


def test_folding_leaves_kept_names_and_training_models_alone():
    model = _bn_model()
    pairs = conv_bn_pairs(model)
    name = pairs[0][1]
    assert len(conv_bn_pairs(model, keep=(name,))) == len(pairs) - 1
    model.train()
    with fold_batchnorm(model, torch.rand(2, 3, 32, 32)) as n:
        assert n == 0
    with fold_batchnorm(model.eval(), torch.rand(2, 3, 32, 32), enabled=False) as n:
        assert n == 0


def test_neural_cleanse_folds_a_batch_norm_model(digits_spec):
    model = build_model("resnet-small", digits_spec.shape, 10).eval()
    pairs = conv_bn_pairs(model)
    assert len(pairs) == 7  # stem, two blocks of two plus a shortcut each
    rep = NeuralCleanse(steps=2, n_inputs=16, labels=[0, 1, 2], quiet=True).inspect(
        model, digits_spec
    )
    assert rep.details["rewrites"]["fold_batchnorm"] == 7


# --- bfloat16 ------------------------------------------------------------------------------
class Sensitive(nn.Module):
    """Logits that bfloat16 rounding changes completely (a tiny difference scaled up)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.linear(x.flatten(1), torch.ones(2, x[0].numel()) * 1e-3)
        return (z - z.detach().float().round(decimals=2)) * 1e4


def test_bfloat16_runs_only_when_asked_and_checked():
    model = _bn_model()
    x = torch.rand(4, 3, 32, 32)
    assert checked_precision(model, x, "fp32") == "fp32"
    assert checked_precision(model, x, "bf16") == "bf16"
    assert checked_precision(model, x, "auto") == ("bf16" if native_bf16(x.device) else "fp32")
    assert checked_precision(Sensitive(), x, "bf16") == "fp32"  # the check refuses it


def test_bfloat16_neural_cleanse_flags_the_same_label(digits_badnet, digits_spec, nc_pair):
    full, _ = nc_pair
    half = NeuralCleanse(precision="bf16", **NC_FAST).inspect(digits_badnet.model, digits_spec)
    assert half.details["precision"] == "bf16" and half.flagged == full.flagged
    assert half.scores[0] == pytest.approx(full.scores[0], rel=0.2)


# --- from the command line -----------------------------------------------------------------
def test_detect_cli_takes_the_schedule(digits_badnet_folder, tmp_path, capsys):
    argv = ["detect", "neural-cleanse", "--model", str(digits_badnet_folder), "--steps", "60"]
    argv += ["--n-inputs", "64", "--check-every", "5", "--patience", "2"]
    argv += ["--schedule", "k-arm", "--keep", "3", "--json"]
    code = main([*argv, "--out", str(tmp_path / "nc")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert '"schedule": "k-arm"' in (tmp_path / "nc" / "report.json").read_text()
    d = json.loads(out.out)
    assert d["flagged"] == [0]
    code = main([*argv[:-1], "--schedule", "sometimes"])
    err = capsys.readouterr().err
    assert code == 2 and "k-arm" in err and "Traceback" not in err


def test_a_copy_is_not_needed_to_keep_the_model(digits_badnet, digits_spec):
    model = copy.deepcopy(digits_badnet.model)
    ref = {n: p.clone() for n, p in model.state_dict().items()}
    NeuralCleanse(schedule="k-arm", precision="bf16", **NC_FAST).inspect(model, digits_spec)
    assert all(torch.equal(ref[n], p) for n, p in model.state_dict().items())


def test_larger_images_get_smaller_cpu_passes():
    nc, cpu = NeuralCleanse(), torch.device("cpu")
    assert nc.pass_images_on(cpu, 28 * 28) == nc.pass_images_on(cpu, 32 * 32) == 64
    assert nc.pass_images_on(cpu, 32 * 32, torch.bfloat16) == 128  # the same bytes
    assert nc.pass_images_on(cpu, 64 * 64) == 16
    assert nc.pass_images_on(cpu, 64 * 64, torch.bfloat16) == 32
    assert nc.pass_images_on(cpu, 224 * 224) == 16  # a label's 32 images in two passes
    assert NeuralCleanse(pass_images=8).pass_images_on(cpu, 224 * 224) == 8
    assert nc.pass_images_on(torch.device("cuda"), 224 * 224) > 10**6


# --- ABS seed batches and bounded passes ---------------------------------------------------
def test_seed_cycle_interleaves_the_classes_and_batches_wrap():
    ys = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    cycle = seed_cycle(ys)
    assert ys[cycle].tolist() == [0, 1, 2] * 3
    assert sorted(cycle.tolist()) == list(range(9))  # every seed once per cycle
    assert step_seeds(cycle, 0, None).tolist() == cycle.tolist()
    assert step_seeds(cycle, 0, 20).tolist() == cycle.tolist()  # a batch that covers them
    for step in range(5):
        batch = step_seeds(cycle, step, 4)
        counts = torch.bincount(ys[batch], minlength=3)
        assert len(batch) == 4 and int(counts.max() - counts.min()) <= 1, (step, counts)
    assert step_seeds(cycle, 2, 4).tolist() == cycle[[8, 0, 1, 2]].tolist()  # wraps around


def test_passes_cover_every_candidate_image_pair_once():
    rows = torch.tensor([0, 2, 3])
    whole = passes(rows, 10, 64)  # six candidates of 10 images fit: all three together
    assert [(k.tolist(), s) for k, s in whole] == [([0, 2, 3], slice(0, 10))]
    split = passes(rows, 50, 16)  # one candidate at a time, its images in 16s
    pairs = [(int(k), i) for ks, s in split for k in ks for i in range(50)[s]]
    assert sorted(pairs) == [(k, i) for k in (0, 2, 3) for i in range(50)]
    assert max(s.stop - s.start for _, s in split) == 16
    cpu = torch.device("cpu")
    assert pass_size(cpu, 32 * 32) == 64 and pass_size(cpu, 32 * 32, torch.bfloat16) == 128
    assert pass_size(cpu, 224 * 224) == pass_size(cpu, 224 * 224, torch.bfloat16) == 16
    assert pass_size(torch.device("cuda"), 224 * 224) > 10**6
    sizes = [forward_images(torch.empty(1, 3, s, s)) for s in (28, 32, 224)]
    assert sizes == [128, 128, 16] and forward_images(torch.empty(1, 20)) == 128


def test_abs_image_chunks_and_seed_batches(digits_badnet, digits_spec, monkeypatch):
    """Splitting a candidate's images over passes (mask penalty once) gives the steps of one
    pass; a ``seed_batch`` that covers every seed is the default; a smaller one runs."""
    fast = {"steps": 6, "n_eval": 100, "top_k": 3, "quiet": True}
    ref = ABS(**fast).inspect(digits_badnet.model, digits_spec)
    monkeypatch.setattr(layout, "CPU_PASS_IMAGES", 7)
    monkeypatch.setattr(layout, "MIN_PASS_IMAGES", 7)  # 50 seeds: 8 passes per candidate
    chunked = ABS(**fast).inspect(digits_badnet.model, digits_spec)
    monkeypatch.undo()
    assert chunked.details["candidates"] == ref.details["candidates"]
    assert (chunked.masks - ref.masks).abs().max() < 1e-3
    assert chunked.details["candidate_reasr"] == pytest.approx(
        ref.details["candidate_reasr"], abs=0.02
    )
    same = ABS(seed_batch=50, **fast).inspect(digits_badnet.model, digits_spec)
    assert torch.equal(same.masks, ref.masks)
    half = ABS(seed_batch=20, **fast).inspect(digits_badnet.model, digits_spec)
    assert half.details["params"]["seed_batch"] == 20
    assert not torch.equal(half.masks, ref.masks)
    assert ABS.scan_params["seed_batch"] == 50


class _PlainDataset(torch.utils.data.Dataset):
    """A dataset with no tensor access: items one at a time, as a user's own class gives them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.x[i], int(self.y[i])


def test_inspectors_convert_only_the_images_they_use(digits_badnet, digits_spec, monkeypatch):
    """NeuralCleanse and ABS pick their random subsets by position and convert only those
    images to float: a held-out split of uint8 images (an image folder) is never converted
    whole. ``load_at`` and ``load_labels`` give what indexing the whole split gives."""
    from dataclasses import replace

    from eviltwins.data import TensorImageDataset, load_all, load_at, load_labels
    from eviltwins.utils import CHECK_IMAGES

    x, y = load_all(digits_spec.test)
    u8 = TensorImageDataset((x * 255).round().to(torch.uint8), y)
    idx = torch.tensor([7, 0, 31, 7])
    whole_x, whole_y = load_all(u8)
    for ds in (u8, _PlainDataset(whole_x, whole_y)):
        at_x, at_y = load_at(ds, idx)
        assert torch.equal(at_x, whole_x[idx]) and torch.equal(at_y, whole_y[idx])
        assert torch.equal(load_labels(ds), whole_y)
    spec = replace(digits_spec, test=u8)
    model = digits_badnet.model
    ref = NeuralCleanse(**NC_FAST).inspect(model, spec)

    def refuse(self: TensorImageDataset) -> None:
        raise AssertionError("the whole held-out split was converted to float")

    monkeypatch.setattr(TensorImageDataset, "tensors", refuse)
    nc = NeuralCleanse(**NC_FAST).inspect(model, spec)
    ABS(steps=2, n_eval=50, top_k=2, quiet=True).inspect(model, spec)
    assert nc.scores == ref.scores
    # a dataset read item by item: NeuralCleanse's pick needs only the split's length, so it
    # reads its 64 images and the 64 of the finite-output check, and no other
    plain = _PlainDataset(whole_x, whole_y)
    again = NeuralCleanse(**NC_FAST).inspect(model, replace(digits_spec, test=plain))
    assert plain.reads == CHECK_IMAGES + NC_FAST["n_inputs"] < len(plain)
    assert again.scores == ref.scores


@pytest.mark.parametrize("det_cls", [NeuralCleanse, TABOR])
def test_label_image_chunks_give_the_one_pass_step(det_cls, digits_badnet, digits_spec):
    """A label's mini-batch split over passes (as at 224x224), each chunk's loss weighted by
    its share of the batch, gives the masks, norms and success of the one-pass run (TABOR's
    image terms are means over the images too)."""
    fast = {**NC_FAST, "steps": 30, "labels": [0, 1, 2]}
    model = digits_badnet.model
    whole = det_cls(**fast).inspect(model, digits_spec)
    sizes: list[int] = []  # the batches of the optimisation's passes (gradients on)
    hook = model.register_forward_pre_hook(
        lambda _, args: sizes.append(len(args[0])) if torch.is_grad_enabled() else None
    )
    try:
        chunked = det_cls(pass_images=10, **fast).inspect(model, digits_spec)
    finally:
        hook.remove()
    assert max(sizes) <= 10 and 2 in sizes  # 32 images: chunks of 10, 10, 10 and 2
    assert (chunked.masks - whole.masks).abs().max() < 1e-3
    assert chunked.scores == pytest.approx(whole.scores, rel=1e-3)
    assert chunked.details["success"] == pytest.approx(whole.details["success"], abs=1e-6)
