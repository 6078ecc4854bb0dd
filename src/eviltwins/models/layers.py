"""Which internal layer an attack or detector works on, for any model: the layers a forward
pass goes through (with their output shapes), and the feature layer picked when a model
declares none.

TrojanNN (neuron selection), TrojanNN* and ABS (neuron stimulation) work on one internal layer
(TrojanNN, Liu et al. NDSS 2018, and ABS, Liu et al. CCS 2019: "the last convolutional layer" by default).
Our architectures declare it (``feature_layer``); for any other model it is found by tracing
one forward pass, by the rule of :func:`auto_feature_layer`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from eviltwins.errors import ParamError
from eviltwins.models.base import get_layer

#: The layer types whose presence makes a module a "convolutional block".
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerInfo:
    """One module a forward pass went through: its name (as :func:`get_layer` takes it), type,
    output shape (batch of one; ``None`` when it returns no tensor), own parameter count and
    whether it is or holds a convolution."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    parameters: int
    convolutional: bool

    def to_dict(self) -> dict[str, Any]:
        shape = list(self.output_shape) if self.output_shape is not None else None
        return {
            "name": self.name,
            "type": self.kind,
            "output_shape": shape,
            "parameters": self.parameters,
        }


def _example(model: nn.Module, example_input: Tensor | None) -> Tensor:
    if example_input is not None:
        return example_input
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ParamError("tracing layers needs example_input for a model without input_shape")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(1, *shape, device=device)


def trace_layers(model: nn.Module, example_input: Tensor | None = None) -> list[LayerInfo]:
    """Every named sub-module a forward pass of ``example_input`` (default: one zero image of
    ``model.input_shape``) calls, in the order their outputs are produced (a block comes right
    after its last child), each listed once (its first call)."""
    x = _example(model, example_input)
    seen: dict[str, LayerInfo] = {}
    named = [(n, m) for n, m in model.named_modules() if n]

    def hook_for(name: str, module: nn.Module) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if name in seen:
                return
            shape = tuple(out.shape[1:]) if isinstance(out, Tensor) else None
            seen[name] = LayerInfo(
                name,
                type(module).__name__,
                shape,
                sum(p.numel() for p in module.parameters(recurse=False)),
                any(isinstance(m, CONV_TYPES) for m in module.modules()),
            )

        return hook

    handles = [m.register_forward_hook(hook_for(n, m)) for n, m in named]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return list(seen.values())


def auto_feature_layer(model: nn.Module, example_input: Tensor | None = None) -> str:
    """The feature layer of a model that declares none, by this rule: the last module of the
    forward pass that is or holds a convolution and outputs a feature map (N, C, H, W), i.e.
    the last convolutional block's output before global pooling / flatten (``net.layer4`` for a
    torchvision ResNet, ``net.features`` for VGG, DenseNet or MobileNet). A model without
    convolutions gets its last linear layer before the logits. Raises :class:`ParamError`
    when neither exists.
    """
    layers = trace_layers(model, example_input)
    maps = [info for info in layers if info.convolutional and _is_map(info.output_shape)]
    if maps:
        return maps[-1].name
    linear = [i for i in layers if i.kind == "Linear"]
    if len(linear) >= 2:
        return linear[-2].name
    raise ParamError(
        "the model has no convolutional block or hidden linear layer to work on; choose a "
        "layer with --layer NAME (Python: layer='NAME'); 'eviltwins layers --model ...' lists them"
    )


def _is_map(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 3


def default_feature_layer(model: nn.Module) -> tuple[str, bool]:
    """The layer TrojanNN / ABS use when none is chosen: the model's declared feature layer,
    else :func:`auto_feature_layer`. Returns ``(name, picked)``; ``picked`` is true when the
    rule chose it."""
    declared = getattr(model, "feature_layer", None)
    if declared:
        return str(declared), False
    return auto_feature_layer(model), True


def layer_or_feature_layer(model: nn.Module, layer: str | None, quiet: bool | None = None) -> str:
    """``layer``, else the model's declared feature layer, else the one
    :func:`auto_feature_layer` picks (named in one stderr line unless ``quiet``); checked to
    exist."""
    if layer:
        get_layer(model, layer)
        return layer
    name, picked = default_feature_layer(model)
    get_layer(model, name)
    if picked and not quiet:
        print(
            f"eviltwins: note: the model declares no feature layer; using {name!r} (the last "
            "convolutional block's output); choose another with --layer NAME",
            file=sys.stderr,
        )
    return name
