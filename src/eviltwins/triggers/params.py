"""The tanh change of variables by which the optimisers (IMC, NeuralCleanse) learn a trigger."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eviltwins.triggers.trigger import Trigger, stamp


def _atanh_of_unit(v: Tensor, eps: float = 0.02) -> Tensor:
    """The w with (tanh(w) + 1) / 2 = v, v clamped to [eps, 1 - eps] so that optimisation does
    not start in tanh's flat tails (changes an initial value by at most ``eps / 2``)."""
    return torch.atanh((2 * v - 1).clamp(-1 + eps, 1 - eps))


class TriggerParams(nn.Module):
    """The tanh change of variables of Algorithm 2 (Pang et al., Section 5.1.2):
    r = (tanh(w_r) + 1) / 2 and, when ``learn_mask``, m = max_mask * (tanh(w_m) + 1) / 2,
    confined to the trigger's ``region`` (outside it m = 0 and r does not matter).

    ``learn_mask=False``: the mask stays as given (human-vision mode). ``shared_mask=True``: one
    opacity shared by every covered pixel (Section 5.1.2, "all the non-zero elements of m share
    the same transparency"); ``False``: each pixel's opacity on its own, so pixels can drop out
    and the trigger shrinks. ``max_mask`` caps the opacity (1 - the given transparency).
    """

    def __init__(
        self,
        init: Trigger,
        learn_mask: bool = False,
        max_mask: float = 1.0,
        shared_mask: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("region", init.region.float())
        self.register_buffer("fixed_mask", init.mask.detach().clone())
        self.w_pattern = nn.Parameter(_atanh_of_unit(init.pattern.detach()))
        self.learn_mask = learn_mask
        self.max_mask = float(max_mask)
        rel = (init.mask.detach() / max(self.max_mask, 1e-8)).clamp(0, 1)
        if shared_mask:
            covered = init.region
            start = rel[covered].mean() if covered.any() else torch.tensor(1.0)
            rel = start.reshape(1, 1, 1)
        self.w_mask = nn.Parameter(_atanh_of_unit(rel), requires_grad=learn_mask)

    def mask(self) -> Tensor:
        if not self.learn_mask:
            return self.fixed_mask
        return (torch.tanh(self.w_mask) + 1) / 2 * self.max_mask * self.region

    def pattern(self) -> Tensor:
        return (torch.tanh(self.w_pattern) + 1) / 2

    def forward(self, x: Tensor) -> Tensor:
        """Stamp ``x`` with the current (differentiable) trigger."""
        return stamp(x, self.mask(), self.pattern())

    def trigger(self) -> Trigger:
        """The current trigger, detached, with the pattern zeroed outside the region."""
        with torch.no_grad():
            m = self.mask().detach().clone()
            r = (self.pattern() * self.region).detach().clone()
        return Trigger(m.clamp(0, 1), r.clamp(0, 1), self.region.bool().clone())
