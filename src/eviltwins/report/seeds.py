"""Claims over seeds (every compared figure is measured on several seeds): a claim is a statement over seeds,
read from the mean of one number per seed and its 95% Student t interval, and called holding
only when the interval lies on the claimed side; with fewer than :data:`MIN_SEEDS` seeds it is
not measured (it needs more seeds), never holding.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_SEEDS = 3  # the fewest seeds a claim's interval is read from
LEVEL = 0.95  # the interval's coverage


@dataclass(frozen=True)
class SeedInterval:
    """The mean of ``n`` per-seed values with its two-sided :data:`LEVEL` t interval
    ``[low, high]`` (n - 1 degrees of freedom; infinite with one value)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def enough(self) -> bool:
        """Whether there are at least :data:`MIN_SEEDS` seeds to read the interval from."""
        return self.n >= MIN_SEEDS

    def above(self, bound: float) -> bool | None:
        """The interval lies above ``bound`` (None: too few seeds to say)."""
        return bool(self.low > bound) if self.enough else None

    def below(self, bound: float) -> bool | None:
        """The interval lies below ``bound`` (None: too few seeds to say)."""
        return bool(self.high < bound) if self.enough else None

    def text(self, fmt: Callable[[float], str] = lambda v: f"{v:+.3f}") -> str:
        """``+0.120 (95% CI +0.050 to +0.190, 3 seeds)``; ``+0.120 (1 seed)`` without an
        interval."""
        if self.n == 0:
            return "no seed"
        noun = "seed" if self.n == 1 else "seeds"
        if self.n < 2:
            return f"{fmt(self.mean)} ({self.n} {noun})"
        pct = f"{100 * LEVEL:g}%"
        return f"{fmt(self.mean)} ({pct} CI {fmt(self.low)} to {fmt(self.high)}, {self.n} {noun})"

    def as_list(self) -> list[float | None]:
        """``[mean, low, high]`` as JSON takes them (None for a missing or infinite bound)."""
        return [v if math.isfinite(v) else None for v in (self.mean, self.low, self.high)]


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom
    (4.303 for df 2 at 95%)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def seed_interval(values: Sequence[float]) -> SeedInterval:
    """Mean and :data:`LEVEL` t interval of one value per seed; non-finite values (a NaN, an
    infinite anomaly index) are left out."""
    a = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if a.size == 0:
        return SeedInterval(math.nan, -math.inf, math.inf, 0)
    mean = float(a.mean())
    if a.size == 1:
        return SeedInterval(mean, -math.inf, math.inf, 1)
    half = t_quantile(a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return SeedInterval(mean, mean - half, mean + half, int(a.size))


def per_seed(items: Iterable[tuple[Hashable, float]]) -> list[float]:
    """One value per seed: the mean of the finite values given for it (the settings a claim
    covers averaged within each seed, so that seeds are the replicates)."""
    acc: dict[Hashable, list[float]] = defaultdict(list)
    for seed, v in items:
        if math.isfinite(v):
            acc[seed].append(v)
    return [float(np.mean(vs)) for vs in acc.values()]
