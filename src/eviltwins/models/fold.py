"""Batch norm folded into the convolution before it, for a frozen model in eval mode.

In eval mode a ``BatchNorm2d`` after a ``Conv2d`` is an affine map per channel,
``y = (conv(x) - mean) / sqrt(var + eps) * gamma + beta``, so it can be folded into the
convolution: ``w' = w * s`` and ``b' = (b - mean) * s + beta`` per output channel, with
``s = gamma / sqrt(var + eps)``. The detectors' hot loops then skip one read and write of every
feature map of a batch-norm network, forward and backward. The sums are the same; the order of the arithmetic is not,
so logits and input gradients agree to float rounding, which is checked before the folded
model is used.

The pairs come from a symbolic trace of the model (:mod:`torch.fx`): a ``Conv2d`` whose only
use is a ``BatchNorm2d`` with running statistics. A model that cannot be traced keeps its batch
norm. The model's own modules are changed in place for the block (the convolution's weight and
bias replaced, the batch norm swapped for ``nn.Identity``) and put back on exit, so hooks on
other modules, such as ABS's on its feature layer, keep working; a pair whose convolution or
batch norm is one of the names to keep is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator

import torch
from torch import Tensor, nn

from eviltwins.models.layout import same_logits
from eviltwins.models.rewrite import input_gradient, used_if

#: The folded model's input gradient must lie within this share of the plain one's largest
#: entry (its logits within 1e-4 of their scale): rounding through a dozen layers of an
#: untrained network reached 1.2e-4.
GRAD_RTOL = 1e-3


def conv_bn_pairs(model: nn.Module, keep: Collection[str] = ()) -> list[tuple[str, str]]:
    """The (convolution, batch norm) qualified names of ``model`` where a ``Conv2d``'s only use
    is an eval-foldable ``BatchNorm2d`` (running statistics tracked, none of them in ``keep``);
    empty when the model cannot be traced symbolically."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure means "do not fold"
        return []
    mods = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn = mods.get(users[0].target)
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        if node.target in keep or users[0].target in keep or node.target == users[0].target:
            continue
        pairs.append((str(node.target), str(users[0].target)))
    return pairs


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_b = (bias - bn.running_mean) * scale
        if bn.bias is not None:
            new_b = new_b + bn.bias
        return conv.weight * scale.view(-1, 1, 1, 1), new_b


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, last = name.rpartition(".")
    return (model.get_submodule(head) if head else model), last


@contextlib.contextmanager
def fold_batchnorm(
    model: nn.Module, example: Tensor, enabled: bool = True, keep: Collection[str] = ()
) -> Iterator[int]:
    """For the block, fold each batch norm of ``model`` into its convolution (see
    :func:`conv_bn_pairs`); yields how many were folded: 0 when ``enabled`` is False, when
    there is none or when the folded model's logits or input gradient on ``example`` differ
    from the model's own by more than 1e-4 (logits) or :data:`GRAD_RTOL` (gradient) of their
    scale. The model must be frozen and in
    eval mode inside the block; its own modules and parameters are back on exit."""
    pairs = conv_bn_pairs(model, keep) if enabled and example.ndim == 4 else []
    if not pairs or model.training:
        yield 0
        return
    saved = []
    ref_out, ref_grad = input_gradient(model, example)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        parent, attr = _parent(model, bn_name)
        saved.append(
            (conv, conv._parameters["weight"], conv._parameters.get("bias"), parent, attr, bn)
        )
        w, b = _folded(conv, bn)
        conv._parameters["weight"] = nn.Parameter(w, requires_grad=False)
        conv._parameters["bias"] = nn.Parameter(b, requires_grad=False)
        setattr(parent, attr, nn.Identity())

    def restore() -> None:
        for conv, w, b, parent, attr, bn in reversed(saved):
            conv._parameters["weight"] = w
            conv._parameters["bias"] = b
            setattr(parent, attr, bn)

    try:
        out, grad = input_gradient(model, example)
        scale = ref_grad.abs().max().clamp_min(1e-12)
        ok = same_logits(out, ref_out, 1e-4) and bool(
            (grad - ref_grad).abs().max() <= GRAD_RTOL * scale
        )
    except RuntimeError:
        ok = False
    with used_if(ok, len(pairs), restore) as n:
        yield n


__all__ = ["conv_bn_pairs", "fold_batchnorm"]
