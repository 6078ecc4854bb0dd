"""Rewrites of a frozen model for the detectors' hot loops: ReLU after max-pooling (exact), and
the input gradient of a thin first convolution as one matrix product (same sums, other order).

Max-pooling commutes with ReLU: ``relu(maxpool(x)) == maxpool(relu(x))`` element for element
(ReLU is monotone, so the window's largest element stays the largest, and NaN stays NaN), and
the gradient reaches the same input element: where the window's maximum is positive both orders
pick the same (first) argmax, and where it is not, ReLU's gradient is zero in both. Run with the
pooling first, the ReLU's forward and backward touch a quarter of the elements (2x2 pooling).

On the small CNN in NHWC (see :mod:`eviltwins.models.layout`) NeuralCleanse's forward and
backward pass at 64 MNIST images took 10.7 ms in this order against 14.1 ms in the model's own
(plain NCHW: 18.8 ms), measured in one process; in NCHW the order makes no difference, as
PyTorch's NCHW max-pool kernel dominates there.

The reordering only touches children of an ``nn.Sequential`` (where a child's output reaches only
the next child) and only where neither module carries a hook; the model's logits are checked
against the original order before the rewritten model is used, and the order is put back on
exit.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as nn_module

from eviltwins.models.layout import same_logits

_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _hooked(m: nn.Module) -> bool:
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
    )


def _global_hooks() -> bool:
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(bool(getattr(nn_module, n, None)) for n in names)


def relu_pool_pairs(model: nn.Module) -> list[tuple[nn.Sequential, str, str]]:
    """The (sequential, ReLU child's name, max-pool child's name) pairs of ``model`` where a
    hook-free ``nn.ReLU`` is directly followed by a hook-free max-pool without
    ``return_indices``."""
    pairs = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        items = list(seq._modules.items())
        for (k1, a), (k2, b) in zip(items, items[1:], strict=False):
            if (
                type(a) is nn.ReLU
                and isinstance(b, _POOLS)
                and not b.return_indices
                and not _hooked(a)
                and not _hooked(b)
            ):
                pairs.append((seq, k1, k2))
    return pairs


# A convolution this thin on its input side (grey or colour images) gets its input gradient
# from :class:`_ThinConvInputGrad`.
THIN_IN_CHANNELS = 4


class _ThinConvInputGrad(torch.autograd.Function):
    """``conv2d(x, w, b, stride 1, padding)`` whose backward gives only the input gradient,
    computed as ``T = W^T G`` (one (C_in k_h k_w) x C_out by C_out x (N H W) matrix product)
    and k_h k_w shifted additions of T's rows. oneDNN's backward-data kernel runs a 1-channel
    output at a few GFLOP/s (2.3-2.8 ms for the small CNN's first layer at 64 MNIST images);
    this takes about 0.9 ms. The sums are the same, in another order (float rounding)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, pad: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(w)
        ctx.meta = (x.shape, pad, x.dtype)
        return nn.functional.conv2d(x, w, b, 1, pad)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        (w,) = ctx.saved_tensors
        (n, ci, h, wd), (ph, pw), dtype = ctx.meta
        co, _, kh, kw = w.shape
        ho, wo = g.shape[-2:]
        g = g.to(w.dtype)  # a bfloat16 gradient under autocast: the product runs in w's dtype
        gm = g.permute(1, 0, 2, 3).reshape(co, -1)  # C_out x (N H W); a view for NHWC g
        t = (w.reshape(co, -1).t() @ gm).view(ci, kh, kw, n, ho, wo)
        dxp = g.new_zeros(ci, n, ho + kh - 1, wo + kw - 1)
        for a in range(kh):
            for b in range(kw):
                dxp[:, :, a : a + ho, b : b + wo] += t[:, a, b]
        dx = dxp[:, :, ph : ph + h, pw : pw + wd].permute(1, 0, 2, 3)
        return dx.to(dtype), None, None, None


def _thin_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """The zero padding of a stride-1, undilated, ungrouped, thin-input ``nn.Conv2d`` (one this
    rewrite handles), else None."""
    if type(m) is not nn.Conv2d or _hooked(m) or m.in_channels > THIN_IN_CHANNELS:
        return None
    if m.groups != 1 or tuple(m.stride) != (1, 1) or tuple(m.dilation) != (1, 1):
        return None
    if m.padding_mode != "zeros":
        return None
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        kh, kw = m.kernel_size
        return (kh // 2, kw // 2) if kh % 2 and kw % 2 else None
    return (int(m.padding[0]), int(m.padding[1]))


def thin_convolutions(model: nn.Module) -> list[tuple[nn.Conv2d, tuple[int, int]]]:
    """The ``nn.Conv2d`` modules of ``model`` with at most :data:`THIN_IN_CHANNELS` input
    channels that :class:`_ThinConvInputGrad` handles, with their padding."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and (pad := _thin_padding(m)) is not None:
            out.append((m, pad))
    return out


def _thin_forward(m: nn.Conv2d, pad: tuple[int, int]) -> Any:
    plain = m.forward

    def forward(x: Tensor) -> Tensor:
        frozen = not m.weight.requires_grad and (m.bias is None or not m.bias.requires_grad)
        if frozen and x.requires_grad and x.ndim == 4:
            return _ThinConvInputGrad.apply(x, m.weight, m.bias, pad)
        return plain(x)

    return forward


def input_gradient(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``model``'s logits on ``x`` and the gradient of their log-sum-exp with respect to ``x``:
    what a rewrite is checked against before it is used."""
    xi = x.detach().clone().requires_grad_(True)
    out = model(xi)
    (grad,) = torch.autograd.grad(out.float().logsumexp(-1).sum(), xi)
    return out.detach(), grad


@contextlib.contextmanager
def used_if(ok: bool, count: int, restore: Any) -> Iterator[int]:
    """Yield ``count`` and call ``restore`` on exit when the rewrite passed its check (``ok``);
    else restore at once and yield 0."""
    if not ok:
        restore()
        yield 0
        return
    try:
        yield count
    finally:
        restore()


@contextlib.contextmanager
def thin_conv_grads(model: nn.Module, example: Tensor, enabled: bool = True) -> Iterator[int]:
    """For the block, back-propagate to the input through each thin convolution of ``model``
    (see :func:`thin_convolutions`) with :class:`_ThinConvInputGrad` while its weights are
    frozen; yields how many convolutions use it (0 when ``enabled`` is False, when there is
    none, or when the model's input gradient on ``example`` differs from the plain one by more
    than 1e-4 of its scale). The model must be frozen inside the block (its weights do not
    require gradients); the modules' own ``forward`` is back on exit.
    """
    convs = thin_convolutions(model) if enabled and not _global_hooks() else []
    if not convs:
        yield 0
        return
    ref_out, ref_grad = input_gradient(model, example)
    for m, pad in convs:
        m.forward = _thin_forward(m, pad)  # type: ignore[method-assign]

    def restore() -> None:
        for m, _ in convs:
            m.__dict__.pop("forward", None)

    try:
        out, grad = input_gradient(model, example)
        scale = ref_grad.abs().max().clamp_min(1e-12)
        ok = torch.equal(out, ref_out) and bool((grad - ref_grad).abs().max() <= 1e-4 * scale)
    except RuntimeError:
        ok = False
    with used_if(ok, len(convs), restore) as n:
        yield n


@contextlib.contextmanager
def pool_before_relu(model: nn.Module, example: Tensor, enabled: bool = True) -> Iterator[int]:
    """For the block, run each ReLU -> max-pool pair of ``model`` (see :func:`relu_pool_pairs`)
    as max-pool -> ReLU; yields how many pairs were reordered (0 when ``enabled`` is False, when
    there is none, when a global module hook is registered, or when the model's logits on
    ``example`` differ in the new order or it fails there, e.g. a ``forward`` that indexes
    its sequential's children). The model must be used frozen inside the block (no hooks added
    to the reordered modules); the original order is restored on exit.
    """
    pairs = relu_pool_pairs(model) if enabled and not _global_hooks() else []
    if not pairs:
        yield 0
        return
    keys_of: dict[int, tuple[nn.Sequential, list[str]]] = {}
    for seq, k1, _ in pairs:
        keys = keys_of.setdefault(id(seq), (seq, list(seq._modules)))[1]
        i = keys.index(k1)
        keys[i], keys[i + 1] = keys[i + 1], keys[i]
    # (sequential, its own children, the reordered ones)
    plans = [
        (seq, seq._modules, OrderedDict((k, seq._modules[k]) for k in keys))
        for seq, keys in keys_of.values()
    ]

    def use(reordered: bool) -> None:
        for seq, own, new in plans:
            seq._modules = new if reordered else own

    with torch.no_grad():
        ref = model(example)
        use(True)
        try:
            ok = same_logits(model(example), ref, 1e-6)
        except (RuntimeError, TypeError, ValueError, IndexError, AttributeError):
            ok = False
    if not ok:
        use(False)
        yield 0
        return
    try:
        yield len(pairs)
    finally:
        use(False)
