"""Name -> factory registries (datasets, models, attacks, detectors).

One :class:`Registry` per kind, filled by a decorator where each entry is defined. Lookups of an
unknown name raise :class:`~eviltwins.errors.UnknownNameError` with the closest match.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from eviltwins.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories of one kind (``kind`` is used in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that files ``factory`` under ``name`` (hyphenated, as the CLI spells it)."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return deco

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Callable[..., T]:
        """The factory filed under ``name``; unknown names raise with a suggestion."""
        if not isinstance(name, str):
            raise UnknownNameError(
                f"a {self.kind} must be named by a string; got {name!r}"[:200]
                + f"; known: {', '.join(self.names())}"
            )
        key = name.strip().lower().replace("_", "-")
        if key in self._entries:
            return self._entries[key]
        close = difflib.get_close_matches(key, list(self._entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}"
        )

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the entry ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def build(
        self, name: str, params: Mapping[str, Any] | None = None, quiet: bool | None = None
    ) -> T:
        """The estimator ``name`` configured with ``params`` and validated, before any data or
        model is loaded: parameter names may use hyphens (as on the command line), a misspelled
        one is refused with a suggestion, a value breaking its constraint raises one
        :class:`~eviltwins.errors.ParamError` line. ``quiet`` (when not ``None``) sets the
        estimator's ``quiet`` parameter if it has one."""
        est: Any = self.get(name)()
        est.set_params(**{str(k).replace("-", "_"): v for k, v in (params or {}).items()})
        if quiet is not None and "quiet" in est.get_params():
            est.set_params(quiet=quiet)
        est._validate_params()
        return est

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries
