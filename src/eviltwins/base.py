"""The estimator base of every attack and detector (scikit-learn conventions).

Parameters live in ``__init__`` as keyword arguments with defaults and are only stored there;
the verb (``fit`` / ``inspect`` / ``score``) validates them against ``_constraints`` first and
raises a one-line :class:`~eviltwins.errors.ParamError` naming the parameter, the rule and the
value. ``get_params`` / ``set_params`` read the ``__init__`` signature, so repr, configs, sweeps
and JSON results share one set of names, and a misspelled name is refused.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from eviltwins.errors import ParamError


class Constraint:
    """A rule on one parameter; ``describe`` completes "must be ..."."""

    def ok(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def invalid_example(self) -> Any:
        """A value this rule rejects (used by the common tests)."""
        return object()

    def check(self, owner: str, name: str, value: Any) -> None:
        if not self.ok(value):
            raise ParamError(
                f"The {name!r} parameter of {owner} must be {self.describe()}. Got {value!r} instead."
            )


class Interval(Constraint):
    """A real (or integer) number in an interval; ``closed`` in both/left/right/neither."""

    def __init__(
        self,
        kind: type,
        low: float | None,
        high: float | None,
        closed: str = "both",
        allow_none: bool = False,
    ) -> None:
        self.kind, self.low, self.high, self.closed, self.allow_none = (
            kind,
            low,
            high,
            closed,
            allow_none,
        )

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.allow_none
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.kind is float and not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False  # NaN, and inf whatever the bounds
        lo_ok = self.low is None or (
            value >= self.low if self.closed in ("both", "left") else value > self.low
        )
        hi_ok = self.high is None or (
            value <= self.high if self.closed in ("both", "right") else value < self.high
        )
        return lo_ok and hi_ok

    def describe(self) -> str:
        kind = "an int" if self.kind is int else "a float"
        if self.low is None and self.high is None:
            text = kind
        elif self.high is None:
            text = f"{kind} {'>=' if self.closed in ('both', 'left') else '>'} {self.low}"
        elif self.low is None:
            text = f"{kind} {'<=' if self.closed in ('both', 'right') else '<'} {self.high}"
        else:
            lb = "[" if self.closed in ("both", "left") else "("
            rb = "]" if self.closed in ("both", "right") else ")"
            text = f"{kind} in {lb}{self.low}, {self.high}{rb}"
        return text + (" or None" if self.allow_none else "")

    def invalid_example(self) -> Any:
        if self.high is not None:
            return self.high + 1
        if self.low is not None:
            return self.low - 1
        return "not a number"


#: Seeds: torch generators take 64-bit integers; eviltwins keeps them non-negative.
SEED_RANGE = Interval(int, 0, 2**63 - 1)

# --- Upper bounds of every numeric parameter and option: one home, stated by each ``--help``
# (the constraints' ``describe()``) and checked before any work. Far above what a real run
# needs, yet finite: a received config cannot ask for a run that never ends.
#: Training epochs (clean training, the re-training attacks, NeuralCleanse's epochs).
MAX_EPOCHS = 10_000
#: Steps or iterations of one optimisation loop (max_steps, trigger / NeuralCleanse / ABS
#: steps, IMC rounds, patience and check intervals, ABS stimulation levels).
MAX_STEPS = 1_000_000
#: Images in one training or optimisation batch (batch_size).
MAX_BATCH = 65_536
#: Images drawn from a dataset or made per input (train/test limits, n_inputs, n_eval,
#: monitor_size, seeds_per_class, STRIP overlays, images per NeuralCleanse pass).
MAX_IMAGES = 10_000_000
#: Held-out clean images an input filter is fitted on (and as many evaluated): n_clean.
MAX_N_CLEAN = 1_000_000
#: Classes of a model (class indices such as target lie below it; model cards, dataset labels,
#: --num-classes, NeuralCleanse's label lists and label_chunk).
MAX_CLASSES = 100_000
#: Neurons of a layer selected or ranked (TrojanNN / IMC neurons, ABS top_k).
MAX_NEURONS = 1_000_000
#: Learning rates (1e6 still runs: the divergence checks are tested with it).
MAX_LR = 1_000_000
#: The absolute value of any other real: loss weights, costs, weight decay, thresholds,
#: TrojanNN's activation target, ABS stimulation levels, normalisation mean / std.
MAX_MAGNITUDE = 1_000_000
#: Worker processes (--jobs) and torch threads per task (--threads).
MAX_WORKERS = 1024
#: A model's input: channels, pixels a side, values (C x H x W); model cards, --input-shape.
MAX_CHANNELS = 64
MAX_SIDE = 8192
MAX_INPUT_VALUES = 2**24
#: The side of the square a path dataset's images are resized to (image_size).
MAX_IMAGE_SIZE = 4096

#: A class index (an attack's target, a given backdoor's target).
CLASS_INDEX = Interval(int, 0, MAX_CLASSES - 1)
#: Held-out clean images an input filter is fitted on (and as many evaluated).
N_CLEAN = Interval(int, 1, MAX_N_CLEAN)
#: A random subset of a dataset split (train_limit / test_limit; None keeps every image).
SUBSET_SIZE = Interval(int, 1, MAX_IMAGES, allow_none=True)
#: A real of at most MAX_MAGNITUDE in size: a number among an architecture's constructor
#: options (arch_kwargs: widths, rates, ...), a channel's normalisation mean or std.
BOUNDED_REAL = Interval(float, -MAX_MAGNITUDE, MAX_MAGNITUDE)
#: The side a path dataset's images may be resized to (image_size, --image-size).
IMAGE_SIZE = Interval(int, 1, MAX_IMAGE_SIZE)
#: What a model's input (C, H, W) may be at most, as refusals and --help say it.
INPUT_LIMITS = (
    f"at most {MAX_CHANNELS} channels, {MAX_SIDE} pixels a side and {MAX_INPUT_VALUES:,} values"
)


def input_fits(c: int, h: int, w: int) -> bool:
    """Whether an input of ``c`` channels and ``h`` x ``w`` pixels is within
    :data:`INPUT_LIMITS` (a received card's, or ``--input-shape``)."""
    return c <= MAX_CHANNELS and max(h, w) <= MAX_SIDE and c * h * w <= MAX_INPUT_VALUES


def check_numbers(options: dict[str, Any], what: str) -> None:
    """Each number among ``options`` (an ``arch_kwargs`` mapping) within :data:`BOUNDED_REAL`,
    else one :class:`ParamError` line naming it; other values are left to their consumer."""
    for key, value in options.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and not BOUNDED_REAL.ok(value):
            raise ParamError(
                f"{what} option {key!r} must be {BOUNDED_REAL.describe()}; got {value!r}"[:300]
            )


class IntervalOr(Interval):
    """An :class:`Interval`, or one of the words ``also`` (``target: random``)."""

    def __init__(self, kind: type, low: float, high: float, also: tuple[str, ...]) -> None:
        super().__init__(kind, low, high)
        self.also = also

    def ok(self, value: Any) -> bool:
        return value in self.also if isinstance(value, str) else super().ok(value)

    def describe(self) -> str:
        return f"{super().describe()} or {' or '.join(repr(a) for a in self.also)}"


class OneOf(Constraint):
    """One of a fixed set of values."""

    def __init__(self, *options: Any) -> None:
        self.options = options

    def ok(self, value: Any) -> bool:
        return any(value == o and type(value) is type(o) for o in self.options)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def invalid_example(self) -> Any:
        return "__not_an_option__"


class SubsetOf(Constraint):
    """A list/tuple whose items all come from ``options`` (e.g. evasion terms)."""

    def __init__(self, *options: str) -> None:
        self.options = options

    def ok(self, value: Any) -> bool:
        return isinstance(value, list | tuple) and all(v in self.options for v in value)

    def describe(self) -> str:
        return "a list drawn from " + ", ".join(repr(o) for o in self.options)

    def invalid_example(self) -> Any:
        return ("__not_an_option__",)


class Check(Constraint):
    """Any predicate with its description (positions, patterns, ...)."""

    def __init__(self, predicate: Any, description: str, bad: Any = object()) -> None:
        self.predicate, self.description, self.bad = predicate, description, bad

    def ok(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except Exception:
            return False

    def describe(self) -> str:
        return self.description

    def invalid_example(self) -> Any:
        return self.bad


def init_param_names(cls: type) -> list[str]:
    """Names of the keyword parameters of ``cls.__init__`` (no *args / **kwargs allowed)."""
    sig = inspect.signature(cls.__init__)
    names = []
    for p in list(sig.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{cls.__name__}.__init__ must not take *args or **kwargs")
        names.append(p.name)
    return names


#: The ``quiet`` parameter of an estimator (progress bars; None: off when not a terminal).
QUIET = OneOf(True, False, None)


class Estimator:
    """Base of attacks and detectors: parameters in ``__init__``, work in the verb."""

    _constraints: ClassVar[dict[str, Constraint]] = {}
    #: The smallest configuration that runs the estimator end to end on a few hundred small
    #: images in seconds (what the common checks run every registered estimator with; merged
    #: over the defaults, with ``seed`` and ``quiet`` set by the caller).
    fast_params: ClassVar[dict[str, Any]] = {}
    #: ``(parameter naming a preset, {preset: {parameter: value}})``: a parameter left
    #: ``None`` runs with the chosen preset's value (:meth:`resolved`); None: no presets.
    _presets: ClassVar[tuple[str, Mapping[str, Mapping[str, Any]]] | None] = None

    def resolved(self, name: str) -> Any:
        """The value parameter ``name`` runs with: its own, or where it is ``None`` the
        chosen preset's (a preset may also fix values that are not parameters)."""
        value = getattr(self, name, None)
        if value is None and self._presets is not None:
            key, table = self._presets
            return table[getattr(self, key)].get(name)
        return value

    def resolved_params(self) -> dict[str, Any]:
        """Every parameter with the preset's values filled in: what the estimator runs with,
        as its reports record it."""
        return {n: self.resolved(n) for n in init_param_names(type(self))}

    def get_params(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in init_param_names(type(self))}

    def set_params(self, **params: Any) -> Estimator:
        known = init_param_names(type(self))
        for name, value in params.items():
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ParamError(
                    f"{type(self).__name__} has no parameter {name!r}{hint}; known: "
                    f"{', '.join(known)}"
                )
            setattr(self, name, value)
        return self

    @classmethod
    def from_params(cls, **params: Any) -> Estimator:
        """Build from a mapping, refusing unknown names with a suggestion."""
        obj = cls()
        return obj.set_params(**params)

    def _validate_params(self) -> None:
        owner = type(self).__name__
        for name, rule in self._constraints.items():
            rule.check(owner, name, getattr(self, name))
        if "seed" in self._constraints:  # every RNG eviltwins seeds takes 63 bits
            SEED_RANGE.check(owner, "seed", self.seed)  # type: ignore[attr-defined]
        if "quiet" in init_param_names(type(self)):  # set by --quiet; a config may give it too
            QUIET.check(owner, "quiet", self.quiet)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        defaults = {
            n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if not _same(v, defaults.get(k, inspect.Parameter.empty))
        ]
        return f"{type(self).__name__}({', '.join(changed)})"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b"`` / ``["a", "b"]`` / ``None`` -> ``("a", "b")`` / ``()``."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)
