"""NeuralCleanse's schedules: the cost schedule (Wang et al., S&P 2019, and their released
code), one check at a time for a batch of labels, as Wang et al.'s ``visualizer.py`` runs it;
and the label schedule, which spends the budget on the labels whose triggers shrink fastest
(after K-Arm, Shen et al., ICML 2021).

Label schedule ``k-arm``: every label is optimised for a short screen (``screen_steps``); the
rest of the budget goes to the ``keep`` labels whose masks are then smallest and to any label
the screen's own outlier test would flag (:func:`labels_to_finish`); the others stop there.
When the screen counts and flags nothing, every label stops there (no label could be flagged).
Each label's optimisation depends only on its own mask, pattern, cost and Adam state and the
shared mini-batches, so a finished label runs exactly the steps, and reaches exactly the norm,
it reaches when every label gets the whole budget. An unfinished label enters the MAD test
with its screen norm scaled by the finished labels' median shrink from the screen to the end
(:func:`projected_norms`): the anomaly index is scale-free, so when the clean labels shrink
alike after the screen the finished labels' indices are those of the full run. They do not
shrink alike: the clean labels' norms spread out as the optimisation goes on, so on clean
models both the index on the projected end norms and the index on the screen's norms (every
label after the same steps, nothing projected) run above the full run's; a label's index is the
smaller of the two (:func:`scheduled_index`), once the masks have shrunk at the screen. A label
is thus flagged only when it is an outlier at the screen *and* at the end; one the screen flags
is always finished.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from eviltwins.metrics import anomaly_index

#: The cost is multiplied by this after ``patience`` successful checks (``cost_multiplier_up``).
COST_UP = 1.5
#: ... and divided by this after ``patience`` failing ones (``cost_multiplier_down`` = 1.5^1.5).
COST_DOWN = 1.5**1.5


class CostState(NamedTuple):
    """Per-label schedule state (one entry per label): the cost, the counters of consecutive
    checks (``set_cnt`` at cost 0 with success, ``up_cnt`` with success, ``down_cnt``
    without) and whether the cost was ever raised / lowered since it was set."""

    cost: Tensor
    set_cnt: Tensor
    up_cnt: Tensor
    down_cnt: Tensor
    up_flag: Tensor
    down_flag: Tensor

    @classmethod
    def start(cls, n: int, device: torch.device | str = "cpu") -> CostState:
        """The state of ``n`` labels before the first check: cost 0, counters 0, flags off."""
        cnt = torch.zeros(n, dtype=torch.long, device=device)
        flag = torch.zeros(n, dtype=torch.bool, device=device)
        return cls(torch.zeros(n, device=device), cnt, cnt.clone(), cnt.clone(), flag, flag.clone())


def next_cost(state: CostState, ok: Tensor, init_cost: float, patience: int) -> CostState:
    """The schedule after one check, ``ok`` per label = attack success >= the threshold
    (Wang et al.'s ``visualizer.py``, in its order):

    1. at cost 0, ``patience`` successful checks in a row set the cost to ``init_cost`` and
       reset the up/down counters and flags (a failing check, or a non-zero cost, resets
       ``set_cnt``);
    2. then, *in the same check*, the up/down counters count it: success adds one to
       ``up_cnt`` and clears ``down_cnt``, failure the reverse; so the check that sets the cost
       already counts as the first successful one, and the first raise comes ``patience - 1``
       checks after the cost was set;
    3. ``up_cnt`` reaching ``patience`` multiplies the cost by 1.5 (and clears ``up_cnt``),
       else ``down_cnt`` reaching it divides the cost by 1.5^1.5 (and clears ``down_cnt``);
       each sets its flag (early stopping needs both).

    At cost 0 a lowering leaves it 0 (as in the original, where it only sets the flag, cleared
    again when the cost is set)."""
    cost, set_cnt, up_cnt, down_cnt, up_flag, down_flag = state
    zero_ok = (cost == 0) & ok
    set_cnt = torch.where(zero_ok, set_cnt + 1, torch.zeros_like(set_cnt))
    start = zero_ok & (set_cnt >= patience)
    cost = torch.where(start, torch.full_like(cost, init_cost), cost)
    up_cnt = torch.where(start, 0, up_cnt)
    down_cnt = torch.where(start, 0, down_cnt)
    up_flag = up_flag & ~start
    down_flag = down_flag & ~start
    up_cnt = torch.where(ok, up_cnt + 1, 0)
    down_cnt = torch.where(ok, 0, down_cnt + 1)
    go_up = up_cnt >= patience
    go_down = ~go_up & (down_cnt >= patience)
    cost = torch.where(go_up, cost * COST_UP, torch.where(go_down, cost / COST_DOWN, cost))
    return CostState(
        cost,
        set_cnt,
        torch.where(go_up, 0, up_cnt),
        torch.where(go_down, 0, down_cnt),
        up_flag | go_up,
        down_flag | go_down,
    )


#: The screen's norms count once their median is below this share of the masks' starting L1
#: (:func:`screen_counts`).
SCREEN_SHRUNK = 0.75

#: NeuralCleanse's label schedules: every label the whole budget, or K-Arm-style scheduling.
LABEL_SCHEDULES = ("full", "k-arm")


def default_keep(n_labels: int) -> int:
    """Labels finished after the screen by default (besides those the screen's outlier test
    flags): the nearest integer to sqrt(n / 2), at least 3, so that the median shrink of the
    finished labels (:func:`projected_norms`) is a clean label's even when one of them is a
    backdoor's (3 of 10 or of 20, 5 of 43, 7 of 100)."""
    return max(3, round((n_labels / 2) ** 0.5))


def screen_norms(best_l1: Tensor, last_l1: Tensor) -> Tensor:
    """Each label's norm at the end of the screen: its best mask's L1 so far, else (no check
    reached the success rate yet) the L1 of its mask at the last check."""
    return torch.where(torch.isfinite(best_l1), best_l1, last_l1)


def labels_to_finish(
    screen: Tensor, running: Tensor, keep: int, threshold: float, counts: bool = False
) -> Tensor:
    """The labels that get the rest of the budget after the screen (K-Arm's arms worth pulling):
    among those still ``running``, the ``keep`` with the smallest screen norms (the triggers
    that shrank most), and every one whose anomaly index on the screen norms of all labels
    exceeds ``threshold`` (a label the screen alone would flag is always finished). None when
    the screen ``counts`` (:func:`screen_counts`) and flags no label: a label's index is then
    at most its screen index (:func:`scheduled_index`), so finishing could flag none."""
    flagged = torch.zeros_like(running)
    if len(screen) > 2:
        flagged = torch.tensor(anomaly_index(screen.tolist()), device=screen.device) > threshold
        if counts and not bool((flagged & running).any()):
            return torch.zeros_like(running)
    finish = flagged.clone()
    order = torch.where(running, screen, torch.full_like(screen, float("inf"))).argsort()
    finish[order[: min(keep, int(running.sum()))]] = True
    return finish & running


def projected_norms(norms: Tensor, screen: Tensor, finished: Tensor, unfinished: Tensor) -> float:
    """Put the unfinished labels' norms on the finished labels' footing, in place: each becomes
    its screen norm x the median over the labels finished after the screen of (final norm /
    screen norm); returns that shrink factor (1.0 when no label ran past the screen)."""
    if not bool(unfinished.any()) or not bool(finished.any()):
        return 1.0
    ratio = (norms[finished] / screen[finished].clamp_min(1e-12)).median()
    norms[unfinished] = screen[unfinished] * ratio
    return float(ratio)


def screen_counts(screen: list[float], pixels: int) -> bool:
    """Whether the screen's norms enter the anomaly index (:func:`scheduled_index`): once their
    median is below :data:`SCREEN_SHRUNK` x the L1 of the random masks the labels start from
    (uniform in [0, 1]: half the ``pixels``). Before, the cost schedule has not held the masks
    under the L1 penalty for long: they have grown to reach the success rate, hold about the
    same L1, and a backdoor's label is not yet an outlier."""
    return float(np.median(np.asarray(screen, dtype=np.float64))) < SCREEN_SHRUNK * pixels / 2


def scheduled_index(norms: list[float], screen: list[float] | None) -> np.ndarray:
    """Each label's anomaly index under the ``k-arm`` label schedule: the smaller of its index
    on the end norms (``norms``: the finished labels' exact, the others projected) and its
    index on the ``screen`` norms of every label; the end norms' index alone when ``screen``
    is None (the ``full`` schedule, a screen as long as the budget, or one that does not
    count yet: :func:`screen_counts`)."""
    end = anomaly_index(norms)
    return end if screen is None else np.minimum(end, anomaly_index(screen))


def merged_schedules(parts: list[dict]) -> dict:
    """The report's record of the label schedule over the label chunks: the screen's end
    (``screen_at``, None when no screen ran), the ``unfinished`` labels, the ``shrink`` factor
    of each chunk that screened and the ``screen_norms`` of its labels."""
    ran = [p for p in parts if p.get("screen_norms") is not None]
    return {
        "screen_at": parts[0]["screen_at"] if ran else None,
        "unfinished": [lab for p in parts for lab in p["unfinished"]],
        "shrink": [p["shrink"] for p in ran],
        "screen_norms": [v for p in ran for v in p["screen_norms"]] if ran else None,
    }


__all__ = [
    "COST_DOWN",
    "COST_UP",
    "LABEL_SCHEDULES",
    "SCREEN_SHRUNK",
    "CostState",
    "default_keep",
    "labels_to_finish",
    "merged_schedules",
    "next_cost",
    "projected_norms",
    "scheduled_index",
    "screen_counts",
    "screen_norms",
]
