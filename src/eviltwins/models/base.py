"""Model plumbing: the normalising wrapper, the model registry, user models, and feature taps.

Every model takes images in [0, 1]; :class:`Classifier` puts the dataset's normalisation in front
of the network as its first layer, so attacks and detectors never deal with normalised inputs.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from eviltwins.errors import ParamError, UnknownNameError
from eviltwins.registry import Registry

# A model factory takes (in_channels, num_classes, input_size, **kwargs) -> nn.Module (logits).
MODELS: Registry[nn.Module] = Registry("model")

_USER_MODEL = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: ``torchvision:NAME`` names any torchvision classification model (``torchvision.models``).
TORCHVISION_PREFIX = "torchvision:"
#: ``timm:NAME`` names any timm classification model (``timm.list_models()``; an optional
#: ``.tag`` is allowed and ignored: no pretrained weights are fetched). The name is checked by
#: this pattern first, so timm's ``hf-hub:`` / ``local-dir:`` names (downloads, files) never pass.
TIMM_PREFIX = "timm:"
_TIMM_NAME = re.compile(r"^timm:[A-Za-z_]\w{0,99}(\.\w{1,100})?$")
#: ``timm.create_model`` options that fetch or read weights: a received card's ``arch_kwargs``
#: must never make eviltwins download, or unpickle a ``checkpoint_path``.
TIMM_LOADING_KWARGS = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}
)
TIMM_INSTALL = "pip install 'eviltwins[timm]'"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every :class:`Classifier`."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ParamError(
                f"normalisation needs matching mean/std with std > 0; got {mean}, {std}"
            )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``net(normalize(x))``: a classifier over images in [0, 1].

    Layer names seen by :func:`layer_names` / :func:`activations` are prefixed ``net.``
    (e.g. ``net.features.conv4`` for the small CNN).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        input_shape: Sequence[int],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))

    @property
    def feature_layer(self) -> str | None:
        """The network's last feature layer (TrojanNN's and ABS's default), when it declares one."""
        name = getattr(self.net, "feature_layer", None)
        return f"net.{name}" if name else None


def is_user_model(name: str) -> bool:
    """True for ``package.module:ClassName`` specs (the user's own code; not ``torchvision:``
    nor ``timm:``)."""
    return bool(_USER_MODEL.match(name)) and not (
        is_torchvision_model(name) or name.startswith(TIMM_PREFIX)
    )


def is_torchvision_model(name: str) -> bool:
    """True for ``torchvision:NAME`` specs (a torchvision classification model, no user code)."""
    return name.startswith(TORCHVISION_PREFIX) and name[len(TORCHVISION_PREFIX) :].isidentifier()


def torchvision_models() -> list[str]:
    """The torchvision classification models ``torchvision:NAME`` may name."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_timm_model(name: str) -> bool:
    """True for ``timm:NAME`` specs (a timm classification model, no user code). timm is not
    imported: the name is checked against timm's list when the model is built."""
    return bool(_TIMM_NAME.match(name))


def is_architecture(name: str) -> bool:
    """True for a name :func:`build_model` can build: registered, ``torchvision:NAME``,
    ``timm:NAME`` or ``package.module:ClassName``. Nothing is imported (the torchvision and
    timm names are checked when the model is built)."""
    return (
        name in MODELS or is_torchvision_model(name) or is_timm_model(name) or is_user_model(name)
    )


def _torchvision_net(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(NAME, weights=None, num_classes=...)``: the architecture
    only (weights come from the user's file)."""
    import torchvision

    arch = name[len(TORCHVISION_PREFIX) :]
    known = torchvision_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(
            f"torchvision has no classification model {arch!r}{hint}; "
            "torchvision.models.list_models(module=torchvision.models) lists them"
        )
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        raise ParamError(f"model {name!r} does not take these options: {err}") from None


def _import_timm(name: str) -> Any:
    """The ``timm`` module; without it, one line saying how to install it."""
    try:
        import timm
    except ModuleNotFoundError as err:
        missing = "is not installed" if err.name == "timm" else f"cannot be imported ({err})"
        raise ParamError(
            f"the architecture {name} needs the timm package, which {missing}: {TIMM_INSTALL}"
        ) from None
    return timm


def _timm_net(
    name: str, in_channels: int, num_classes: int, size: tuple[int, int], **kwargs: Any
) -> nn.Module:
    """``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=...)``: the
    architecture only (weights come from the user's file; nothing is downloaded or read).
    ``img_size`` (H, W) is passed too where the model takes it (ViT, Swin, ...)."""
    timm = _import_timm(name)
    arch = name[len(TIMM_PREFIX) :]  # checked by _TIMM_NAME: no hf-hub: / local-dir: name
    if not timm.is_model(arch):
        known = timm.list_models()
        close = difflib.get_close_matches(arch.split(".")[0], known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(f"timm has no model {arch!r}{hint}; timm.list_models() lists them")
    loading = sorted(
        k for k in kwargs if k in TIMM_LOADING_KWARGS and (kwargs[k] or k != "pretrained")
    )
    if loading:
        raise ParamError(
            f"model {name!r}: arch_kwargs {', '.join(loading)} would fetch or read weights; a "
            "timm model is built without them and takes its weights from your file"
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    base = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    try:
        if "img_size" not in kwargs:
            try:
                return timm.create_model(arch, **base, img_size=size, **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
        return timm.create_model(arch, **base, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, NotImplementedError) as err:
        # timm's own checks (sizes, options) are one line, like a torchvision model's
        raise ParamError(f"timm cannot build {name!r} with these options: {err}") from None


def is_keyword_mapping(value: Any) -> bool:
    """True for a dict whose keys can be keyword-argument names (an ``arch_kwargs``)."""
    return isinstance(value, dict) and all(isinstance(k, str) and k.isidentifier() for k in value)


def _import_here(module_name: str) -> Any:
    """Import ``module_name``; when its top package is found nowhere, from the working folder
    too (as ``python -m`` would: the console script does not put that folder on the path)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if err.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
    sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ImportError:
        sys.path.remove(here)
        raise


def import_user_model(spec: str) -> type[nn.Module]:
    """Import ``package.module:ClassName`` (the user's own code, imported on their request).

    Importing runs the module's code: call this only for a spec the user named. A model card
    received with a model never reaches here unless the user trusted its architecture
    (``trust_arch``, ``--trust-arch``; see :func:`eviltwins.io.check_trust`).
    """
    if not is_user_model(spec):
        raise ParamError(f"a user model must be given as package.module:ClassName; got {spec!r}")
    module_name, cls_name = spec.split(":")
    try:
        module = _import_here(module_name)
    except ImportError as err:
        raise UnknownNameError(
            f"cannot import module {module_name!r} for model {spec!r} ({err}); "
            "install the package that provides it, or run from the folder that holds it"
        ) from None
    cls = getattr(module, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise UnknownNameError(f"{module_name} has no nn.Module class {cls_name!r} (from {spec!r})")
    return cls


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> Classifier:
    """Build a registered architecture, a ``torchvision:NAME`` or ``timm:NAME`` classification
    model or a user ``package.module:ClassName`` for ``input_shape`` (C, H, W) and
    ``num_classes``, wrapped in :class:`Classifier`.

    ``mean`` / ``std`` default to the identity (0, 1) per channel. A user class is called with
    ``**kwargs`` only and must accept images of ``input_shape``; a torchvision model gets
    ``num_classes`` and ``**kwargs``; a timm model ``num_classes``, ``in_chans`` (C),
    ``img_size`` (H, W) where it takes one, and ``**kwargs`` (never pretrained weights).
    """
    c, h, w = (int(v) for v in input_shape)
    mean = tuple(mean) if mean is not None else (0.0,) * c
    std = tuple(std) if std is not None else (1.0,) * c
    if len(mean) != c:
        raise ParamError(f"mean/std have {len(mean)} channels but the input has {c}")
    if is_torchvision_model(name):
        net = _torchvision_net(name, num_classes, **kwargs)
    elif is_timm_model(name):
        net = _timm_net(name, c, num_classes, (h, w), **kwargs)
    elif is_user_model(name):
        cls = import_user_model(name)
        try:
            net = cls(**kwargs)
        except TypeError as err:
            raise ParamError(f"model {name!r} does not take these options: {err}") from None
    else:
        factory = MODELS.get(name)
        try:
            net = factory(in_channels=c, num_classes=num_classes, input_size=(h, w), **kwargs)
        except TypeError as err:
            raise ParamError(f"model {name!r} does not take these options: {err}") from None
    return Classifier(net, mean, std, (c, h, w), num_classes)


def layer_names(model: nn.Module) -> list[str]:
    """Names of all sub-modules, usable with :func:`get_layer` and :func:`activations`."""
    return [n for n, _ in model.named_modules() if n]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name`` (as in ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    close = difflib.get_close_matches(name, list(modules), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(
        f"the model has no layer {name!r}{hint} (eviltwins.models.layer_names(model) lists them)"
    )


CONSUMER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def consumer_of(
    model: nn.Module, layer: str, example_input: Tensor | None = None
) -> tuple[str, nn.Module] | None:
    """The first linear or convolution layer that consumes the output of ``layer`` (its "next
    layer" in the data flow), found by tracing one forward pass; ``None`` when none does.

    ``named_modules()`` order is not data flow: the module after a container (ResNet
    ``layer4``, VGG ``features``) is its own first child, and a residual block calls its
    shortcut convolution after the main branch, on the block's input. Here the output of
    ``layer`` is made the only tensor that carries gradient (model parameters frozen, input
    without gradient) and the first linear/conv layer called with an input that carries
    gradient, i.e. a function of that output, is the consumer (TrojanNN,
    step 2, "next layer"). Normalisation layers in between (batch norm) are passed over.
    ``example_input`` defaults to one zero image of ``model.input_shape``.

    >>> consumer_of(build_model("vgg11", (3, 32, 32), 10), "net.features")[0]
    'net.classifier'
    """
    from eviltwins.utils import device_of, eval_mode, frozen_params

    target = get_layer(model, layer)
    if example_input is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ParamError(
                "consumer_of needs example_input for a model without an input_shape attribute"
            )
        example_input = torch.zeros(1, *shape, device=device_of(model))
    found: list[str] = []

    def mark(_module: nn.Module, _inp: Any, out: Any) -> Tensor:
        if not isinstance(out, Tensor):
            raise ParamError(f"layer {layer!r} returns {type(out).__name__}, not a tensor")
        return out.detach().requires_grad_(True).clone()  # clone: in-place ReLUs may follow

    def spot(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if not found and any(isinstance(a, Tensor) and a.requires_grad for a in args):
                found.append(name)

        return pre_hook

    named = dict(model.named_modules())
    handles = [target.register_forward_hook(mark)]
    handles += [
        m.register_forward_pre_hook(spot(n))
        for n, m in named.items()
        if n and isinstance(m, CONSUMER_TYPES)
    ]
    try:
        with torch.enable_grad(), eval_mode(model), frozen_params(model):
            model(example_input.detach())
    finally:
        for h in handles:
            h.remove()
    return (found[0], named[found[0]]) if found else None


@contextlib.contextmanager
def feature_tap(model: nn.Module, layer: str) -> Iterator[dict[str, Tensor]]:
    """Record the output of ``layer`` on every forward inside the block.

    >>> with feature_tap(model, "net.features.conv4") as tap:
    ...     logits = model(x)
    >>> tap["out"].shape   # (N, 64, 7, 7): gradients flow through it
    """
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _inp: Any, out: Tensor) -> None:
        store["out"] = out

    handle = get_layer(model, layer).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def activations(
    model: nn.Module, layer: str, x: Tensor, batch_size: int = 256, grad: bool = False
) -> Tensor:
    """The output of ``layer`` for images ``x`` (batched; no gradient unless ``grad``)."""
    outs = []
    ctx: Callable[[], Any] = contextlib.nullcontext if grad else torch.no_grad
    with ctx(), feature_tap(model, layer) as tap:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
            outs.append(tap["out"])
    return torch.cat(outs)
