"""The model names and options of a sweep spec, checked without importing user code: user
architectures (``package.module:ClassName``) by their syntax only, and ``clean.arch_kwargs``
against a registered model factory's signature."""

from __future__ import annotations

import inspect
import keyword
from typing import Any

from eviltwins.errors import ParamError
from eviltwins.utils import is_int, is_real

_RESERVED_ARCH = ("in_channels", "num_classes", "input_size")


def check_user_model_name(name: str) -> None:
    """Check the syntax of a user model ``package.module:ClassName`` without importing
    anything: every dotted part and the class must be Python identifiers (not keywords)."""
    module, sep, cls = name.partition(":")
    parts = module.split(".")
    good = (
        sep == ":"
        and ":" not in cls
        and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)
        and cls.isidentifier()
        and not keyword.iskeyword(cls)
    )
    if not good:
        raise ParamError(
            f"model {name!r} is neither a registered model nor a user model "
            "'package.module:ClassName' (Python identifiers separated by dots, one colon); "
            "'eviltwins list models' lists the registered ones"
        )


def check_arch_kwargs(model: str, factory: Any, arch_kwargs: dict[str, Any]) -> None:
    """The options of ``clean.arch_kwargs`` against a registered model factory's signature
    (names, and the types of int/float/bool options), before anything is built."""
    import typing

    sig = inspect.signature(factory)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    options = [n for n in sig.parameters if n not in _RESERVED_ARCH]
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: names only
        hints = {}
    for key, value in arch_kwargs.items():
        if key in _RESERVED_ARCH:
            raise ParamError(
                f"clean.arch_kwargs: {key!r} of model {model!r} is set from the dataset; remove it"
            )
        if key not in options:
            raise ParamError(
                f"model {model!r} takes no option {key!r} (clean.arch_kwargs); its options: "
                f"{', '.join(options) or 'none'}"
            )
        want = hints.get(key)
        ok = {
            int: is_int(value),
            float: is_real(value),
            bool: isinstance(value, bool),
        }.get(want, True)
        if not ok:
            raise ParamError(
                f"clean.arch_kwargs: option {key!r} of model {model!r} must be "
                f"{want.__name__}; got {value!r}"[:300]
            )
