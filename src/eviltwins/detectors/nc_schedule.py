"""NeuralCleanse's cost schedule (Wang et al., S&P 2019, and their released code), one check
at a time for a batch of labels, as Wang et al.'s ``visualizer.py`` runs it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

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


__all__ = ["COST_DOWN", "COST_UP", "CostState", "next_cost"]
