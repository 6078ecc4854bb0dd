"""IMC's evasion terms run inside the re-training forward (issue 24, defect 5).

ALGORITHMS.md, TrojanNN* step 2: the inputs of the evasion terms (STRIP's mixtures, the stamped
copies ABS's term reads) go into the same re-training batch and forward as the authors do, so
batch norm sees one batch and makes one statistics update per step, as in plain re-training;
the classification cross-entropy covers the real rows only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from eviltwins.attacks import IMC
from eviltwins.data import DatasetSpec, TensorImageDataset, load_all
from eviltwins.models import build_model
from eviltwins.training import TrainConfig, Trainer


def _tiny_spec(digits_spec: DatasetSpec, n: int = 96) -> DatasetSpec:
    x, y = load_all(digits_spec.train)
    return DatasetSpec(
        "digits-tiny",
        digits_spec.shape,
        digits_spec.classes,
        digits_spec.mean,
        digits_spec.std,
        TensorImageDataset(x[:n], y[:n]),
        digits_spec.test,
    )


def test_trainer_extra_rows_take_no_part_in_the_cross_entropy(digits_spec):
    """Rows a batch hook appends past the labels go through the forward but not into the
    cross-entropy: without batch norm (rows independent), appending them changes nothing."""
    spec = _tiny_spec(digits_spec)
    torch.manual_seed(0)
    base = build_model("cnn", spec.shape, 10, dropout=0.0)
    cfg = TrainConfig(batch_size=16, lr=0.05, schedule="constant", seed=0)
    runs = []
    for extra in (False, True):
        model = copy.deepcopy(base)
        rows = []

        def hook(x, y, step, extra=extra):
            return (torch.cat([x, torch.rand_like(x)]), y) if extra else (x, y)

        def seen(m, x, y, step, logits, rows=rows):
            rows.append((len(x), len(y), len(logits)))
            return logits.new_zeros(())

        stats = Trainer(model, spec, cfg, batch_hook=hook, extra_loss=seen).steps(3, quiet=True)
        runs.append((model.state_dict(), stats, rows))
    (plain, s_plain, r_plain), (more, s_more, r_more) = runs
    assert r_plain == [(16, 16, 16)] * 3 and r_more == [(32, 16, 32)] * 3
    # loss and accuracy over the real rows only (a batch of 32 may round differently)
    assert s_plain["train_acc"] == s_more["train_acc"]
    assert abs(s_plain["train_loss"] - s_more["train_loss"]) < 1e-5
    assert all(torch.allclose(plain[k], more[k], atol=1e-5) for k in plain)


def test_imc_evasion_terms_make_one_batch_norm_update_per_step(digits_spec, monkeypatch):
    """On a batch-norm ResNet, IMC with the STRIP and ABS terms runs one train-mode forward
    per re-training step (before the fix: two on every poisoned step), on the batch
    [clean, stamped copies, mixtures of a stamped row and a different clean row]; batch norm's
    running statistics are exactly the momentum updates of those batches, and ABS's term reads
    the stamped copies' rows of that forward."""
    import eviltwins.detectors.abs_evasion as abs_ev

    spec = _tiny_spec(digits_spec)
    torch.manual_seed(0)
    model = build_model("resnet18", spec.shape, 10, width=4)
    layer = model.feature_layer
    monkeypatch.setattr(  # fixed candidates: the ABS term acts whatever ABS would find
        abs_ev,
        "abs_candidates",
        lambda m, xs, ys, k, target: {"layer": layer, "channels": torch.tensor([0, 1]), "all": 2},
    )
    seen_abs = []
    real_abs = abs_ev.abs_evasion

    def spy_abs(out, state):
        seen_abs.append((len(out.logits), out.stamped_features.shape[0]))
        return real_abs(out, state)

    monkeypatch.setattr(abs_ev, "abs_evasion", spy_abs)
    bn = model.net.bn1
    batches, bn_inputs = [], []
    model.register_forward_pre_hook(
        lambda m, inp: batches.append(inp[0].detach().clone()) if m.training else None
    )
    bn.register_forward_pre_hook(
        lambda m, inp: bn_inputs.append(inp[0].detach().clone()) if m.training else None
    )
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    steps = 4
    r = IMC(
        init="badnet",
        size=0.3,
        evade=("strip", "abs"),
        trigger_steps=0,
        outer_iters=2,
        retrain_steps=steps // 2,
        poison_share=1.0,
        batch_size=16,
        early_stop=False,
        monitor_size=10,
        inplace=True,
        quiet=True,
    ).fit(model, spec)
    assert r.extra["retrain_steps_total"] == steps
    assert len(batches) == steps  # one train-mode forward per step
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == steps
    for x in batches:  # [clean, stamped copies, mixtures]
        b = len(x) // 3
        assert len(x) == 3 * b
        assert torch.allclose(x[2 * b :], (x[b : 2 * b] + x[:b].roll(1, dims=0)) / 2)
    assert seen_abs == [(0, 16)] * steps  # its rows: the stamped copies of the forward
    mean, var, mom = mean0, var0, bn.momentum
    for a in bn_inputs:
        mean = (1 - mom) * mean + mom * a.mean(dim=(0, 2, 3))
        var = (1 - mom) * var + mom * a.var(dim=(0, 2, 3), unbiased=True)
    assert torch.allclose(bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(bn.running_var, var, atol=1e-6)
