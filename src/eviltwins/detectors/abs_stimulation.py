"""ABS step 1 (stimulation analysis), batched: the stimulation levels of a layer and the logits of
seed images with one channel of it set to each level (Liu et al., CCS 2019, stimulation
analysis), and step 2's split of the levels into low and high."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from eviltwins.models import get_layer
from eviltwins.models.layout import CPU_FORWARD_IMAGES, MIN_PASS_IMAGES, pixel_scaled

# Stimulation batch bound: the stimulated copies of the layer's output, in floats (64 MB).
STIMULATION_ELEMENTS = 1 << 24
#: Images the layers before the stimulated one run on per batch of channels once the layer's
#: output is cached (:func:`stimulated`'s ``base``); two, so that a batch dimension of one
#: never broadcasts silently against the stimulated copies.
STUB_IMAGES = 2


def forward_images(x: Tensor) -> int:
    """Images per gradient-free forward of ABS (the plain stimulation path, the seeds' layer
    output, REASR) on inputs like ``x``: :data:`~eviltwins.models.layout.CPU_FORWARD_IMAGES`
    images of up to 32 x 32 pixels (or inputs that are not images), proportionally fewer for
    larger images, at least 16 (16 at 224 x 224), so that one forward's activations stay near
    those of a pass at 32 x 32."""
    pixels = x.shape[-2] * x.shape[-1] if x.ndim == 4 else 1024
    return pixel_scaled(CPU_FORWARD_IMAGES, pixels, MIN_PASS_IMAGES)


def low_high_split(n_levels: int) -> int:
    """How many of the (ascending) stimulation levels count as "low": ``n // 5`` as in
    TrojanZoo's ``find_min_max`` (low = levels[:n // 5], high = levels[n // 5:]), at least 1
    so the low side is never empty (5 levels 0, 1, 2, 4, 8: low = {0}, high = {1, 2, 4, 8})."""
    return max(1, n_levels // 5)


def stimulation_levels(base: Tensor, levels: Sequence[float]) -> Tensor:
    """ABS step 1's stimulation values (Liu et al., CCS 2019): ``levels`` (sorted
    ascending) times the *layer's* largest activation on the seed images, ``base`` (the layer's
    output on them): one scalar for the whole layer, as in the original ABS (``max_val`` over
    the layer's outputs) and TrojanZoo (``samp_k * k / n_samples * layer max``), so a channel
    that is nearly silent on clean images is still driven as hard as the loudest one. The
    maximum is floored at 1e-3 (a layer that is silent on every seed)."""
    top = base.detach().amax().clamp_min(1e-3)
    return torch.tensor(sorted(float(v) for v in levels), device=base.device) * top


@torch.no_grad()
def layer_output(model: nn.Module, layer: str, xs: Tensor) -> Tensor:
    """The output of ``layer`` on the seed images ``xs``, copied as the layer returns it
    (before any in-place operation of a later layer, such as a residual ``+=``, changes it),
    in forwards of :func:`forward_images` images."""
    store: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
        store.append(out.clone())

    per = forward_images(xs)
    handle = get_layer(model, layer).register_forward_hook(hook)
    try:
        for i in range(0, len(xs), per):
            model(xs[i : i + per])
    finally:
        handle.remove()
    return torch.cat(store)


@torch.no_grad()
def stimulated(
    model: nn.Module,
    layer: str,
    xs: Tensor,
    chans: Tensor,
    vals: Tensor,
    n_lv: int,
    expand: bool,
    base: Tensor | None = None,
) -> Tensor | None:
    """Logits with each channel of ``chans`` of ``layer`` set, over its whole map, to each of its
    ``n_lv`` values in ``vals`` (channel-major), for every seed image of ``xs``: rows ordered
    (channel, level, seed).

    ``expand``: run the model on the seeds once and replicate the layer's output inside the
    hook, so only the layers after ``layer`` run per copy (the layers before it would compute
    the same thing for every copy). Returns None when the model does not allow it (a layer
    after ``layer`` mixes in a tensor computed before it, e.g. a skip connection across it);
    the caller then uses the plain path (``expand=False``: the seeds repeated at the input,
    in forwards of :func:`forward_images` images). With ``base``, the layer's output on
    ``xs`` computed once by the caller, the expanded path replicates it instead and the
    model's layers before ``layer`` run on :data:`STUB_IMAGES` images only (their output is
    replaced), not on every seed for every batch of channels; a stub that changes the result
    (a later layer mixing in a tensor of the stub's batch) shows in the caller's check against
    the plain path.
    """
    n_s, n_rep = len(xs), len(vals)
    ch_all = chans.repeat_interleave(n_lv * n_s)
    val_all = vals.repeat_interleave(n_s)
    now = {"rows": slice(0, n_rep * n_s)}  # the copies the current forward holds

    def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        if expand:
            src = out if base is None else base.to(out.dtype)
            out = src.repeat(n_rep, *([1] * (src.ndim - 1)))
        else:
            out = out.clone()
        ch, val = ch_all[now["rows"]], val_all[now["rows"]]
        rows = torch.arange(len(out), device=out.device)
        if out.ndim == 2:
            out[rows, ch] = val
        else:
            out[rows, ch] = val[:, None, None].expand(-1, *out.shape[2:])
        return out

    handle = get_layer(model, layer).register_forward_hook(hook)
    try:
        if not expand:
            seed_of = torch.arange(n_rep * n_s, device=xs.device) % n_s
            per = forward_images(xs)
            outs = []
            for i in range(0, len(seed_of), per):
                now["rows"] = slice(i, i + per)
                outs.append(model(xs[seed_of[i : i + per]]))
            return torch.cat(outs)
        try:
            logits = model(xs if base is None else xs[:STUB_IMAGES])
        except RuntimeError:
            return None
        return logits if logits.shape[0] == n_rep * n_s else None
    finally:
        handle.remove()
