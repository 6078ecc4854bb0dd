"""TrojanNN* = IMC over TrojanNN (Pang et al., CCS 2020, Algorithm 2, Eqn 15).

min over theta, r, m of  E_x[ l(psi(x, r; m), t; theta) ] + lambda * l_f(m) + nu * l_s(theta),
solved by alternating a trigger perturbation (Adam on the tanh parameters of r, and of m when it
is optimised; the model fixed) with a model perturbation (re-training on clean batches plus
stamped copies labelled t, plus the evasion terms; the trigger fixed), starting from TrojanNN's
generated trigger (``init="trojannn"``: TrojanNN*) or a fixed BadNet trigger (BadNet*).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.attacks.base import ATTACKS, BackdoorAttack, poison_hook
from eviltwins.attacks.retrain import (
    POISON_SHARE,
    RETRAIN_CONSTRAINTS,
    TRIGGER_CONSTRAINTS,
    retrain_config,
)
from eviltwins.base import (
    MAX_IMAGES,
    MAX_LR,
    MAX_NEURONS,
    MAX_STEPS,
    Constraint,
    Interval,
    OneOf,
    init_param_names,
)
from eviltwins.data import DatasetSpec, TensorImageDataset, iter_batches, load_all
from eviltwins.errors import OptimisationError, ParamError
from eviltwins.evasion import EvadeSpec, ModelStep, evasion_terms
from eviltwins.metrics import attack_metrics
from eviltwins.training import Trainer, evaluate
from eviltwins.triggers import Trigger, TriggerParams
from eviltwins.utils import CHECK_IMAGES, device_of, eval_mode, frozen_params

MODES = ("fixed", "opacity", "size")


class InitSpec(Constraint):
    """IMC's ``init``: a registered attack that provides ``initial_trigger`` (its starting
    trigger: TrojanNN's generated one, BadNet's square, Blended's full-image pattern)."""

    def ok(self, value: Any) -> bool:
        return value in ATTACKS and callable(getattr(ATTACKS.get(value), "initial_trigger", None))

    def describe(self) -> str:
        return "one of " + ", ".join(n for n in ATTACKS.names() if self.ok(n))

    def invalid_example(self) -> Any:
        return "imc"  # IMC itself has no starting trigger of its own


#: IMC's trigger parameters that ``init``'s attack takes (when it declares them).
_INIT_PARAMS = {
    "target": "target",
    "size": "size",
    "transparency": "transparency",
    "position": "position",
    "layer": "layer",
    "neurons": "neurons",
    "selection": "selection",
    "init_trigger_steps": "trigger_steps",
    "seed": "seed",
    "quiet": "quiet",
}


@ATTACKS.register("imc")
class IMC(BackdoorAttack):
    """IMC (Pang et al., CCS 2020): co-optimise the trigger and the model.

    IMC's co-optimisation of trigger and model (Algorithm 2); ``init="trojannn"`` is
    TrojanNN*, ``init="badnet"`` is BadNet*.

    Initialisation (Alg. 2 lines 1-2): theta(0) = the given model; (r(0), m(0)) = the starting
    trigger of the attack ``init`` names, built from those of IMC's trigger parameters it
    takes: ``trojannn`` (TrojanNN's generated trigger in the square mask of ``size`` /
    ``transparency`` / ``position``; neuron selection in ``layer``, ``neurons``,
    ``selection``, ``init_trigger_steps`` sign steps), ``badnet`` (a white square) or
    ``blended`` (Blended's full-image pattern at ``transparency``; ``size`` and ``position``
    do not apply).

    Each of at most ``outer_iters`` (40) outer iterations runs
    (line 4) ``trigger_steps`` Adam steps (lr ``trigger_lr`` 0.1, betas (0.5, 0.9)) on
    CE(f(psi(x, r; m)), t) + lambda * l_f(m) over shuffled batches of non-target training
    inputs, warm-started from the previous trigger; ``trigger_steps=None`` (default) runs as
    many as the outer iteration has re-training steps, i.e. one pass over the training data
    when ``retrain_steps`` is one epoch, as the authors' TrojanZoo IMC
    (``attack_remask_epochs=1``, ``attack_remask_lr=0.1``); an int sets the count (a few steps
    at lr 0.01 are far weaker than the authors' budget; 0 freezes the trigger). Then
    (line 5) ``retrain_steps`` (default: one epoch) SGD steps (lr ``lr`` 0.01, momentum 0.9,
    weight decay 2e-4, Nesterov) on clean batches, a ``poison_share`` of which also carry
    stamped copies labelled t, plus nu * l_s(theta). Algorithm 2's line 5 reads r(k), m(k);
    like the authors' code, the model step re-trains with the trigger that line 4 just
    produced (r(k+1), m(k+1)). It stops early (``early_stop``) once the efficacy on a monitor
    subset of training inputs reaches ``kappa`` (0.95) with the clean accuracy drop (same
    subset) within ``max_acc_drop`` (0.015). Every subset (monitor, seed images, trigger and
    re-training batches) is a seeded random draw, never the first images of a split.

    Modes: ``mode="fixed"`` (r only; the human-vision experiments, Figs. 10-13),
    ``mode="opacity"`` (one opacity shared by the square's pixels), ``mode="size"`` (each
    pixel's opacity on its own, so the square can shrink). Opacity never exceeds 1 -
    ``transparency``.

    Evasion (``evade``; Pang et al., Section 5.3 and Appendix C): the registered evasion terms
    (:mod:`eviltwins.evasion`), each defined beside its detector, by name with an optional
    weight: ``["neural-cleanse", "strip"]``, ``"neural-cleanse,strip=0.2"`` or
    ``{"neural-cleanse": 1.0, "strip": 0.2}`` (no weight: the term's default). A
    trigger-step term (NeuralCleanse's lambda * l_f(m) = ||m||_1 / trigger pixels, lambda 1)
    is added to line 4's loss; a model-step term (STRIP's nu * l_s(theta), l_s = -H(f((x* +
    x') / 2)), nu 0.6, the authors' 0.2 on GTSRB; ABS's re-mask loss of its candidate neurons
    of the target, found each outer iteration on ``seeds_per_class`` (5) training images per
    class, subtracted at 1e-4) to line 5's, only on the re-training batches that carry stamped
    copies. The terms' inputs (the mixtures; the stamped copies) go into the re-training batch
    and its one forward, as the authors do: batch norm sees one batch and one statistics
    update per step, and the added rows take no part in the cross-entropy
    (:class:`~eviltwins.evasion.ModelStep`). A term that acts only through the mask
    (NeuralCleanse's) needs ``mode="opacity"`` or ``mode="size"``. Adam at ``trigger_lr`` 0.1
    takes full steps along a mask term's steady gradient and can erase a small mask in the first
    round, before the model has learned the trigger: ``mask_l1`` and efficacy in the history
    show it, and a lower ``trigger_lr`` keeps the mask.

    Result ``history``: per outer iteration, ASR / efficacy / clean accuracy on the monitor
    subset, mask L1, the trigger and re-training steps so far, each evasion term's mean
    unweighted loss (``<name>_loss``; 0.0: the term contributed nothing that iteration) and
    what the terms record (``abs_candidates``: the target's candidate neurons the ABS term
    acts on). ``extra`` repeats the terms' records as lists, one value per outer iteration, and
    ``evasion_weights`` the weight each term was run with.
    """

    name: ClassVar[str] = "imc"
    _constraints = {
        **{k: v for k, v in TRIGGER_CONSTRAINTS.items() if k != "pattern"},
        **{k: v for k, v in RETRAIN_CONSTRAINTS.items() if k != "epochs"},
        "init": InitSpec(),
        "mode": OneOf(*MODES),
        "evade": EvadeSpec(),
        "outer_iters": Interval(int, 1, MAX_STEPS),
        "trigger_steps": Interval(int, 0, MAX_STEPS, allow_none=True),
        "trigger_lr": Interval(float, 0, MAX_LR, closed="right"),
        "retrain_steps": Interval(int, 1, MAX_STEPS, allow_none=True),
        "poison_share": POISON_SHARE,
        "kappa": Interval(float, 0, 1),
        "max_acc_drop": Interval(float, 0, 1),
        "early_stop": OneOf(True, False),
        "neurons": Interval(int, 1, MAX_NEURONS),
        "selection": OneOf("least-activated", "most-connected"),
        "init_trigger_steps": Interval(int, 0, MAX_STEPS),
        "monitor_size": Interval(int, 10, MAX_IMAGES),
        "seeds_per_class": Interval(int, 1, MAX_IMAGES),
    }
    fast_params: ClassVar[dict[str, Any]] = {
        "outer_iters": 1,
        "retrain_steps": 3,
        "trigger_steps": 2,
        "init_trigger_steps": 2,
        "monitor_size": 50,
    }

    def __init__(
        self,
        init: str = "trojannn",
        target: int = 0,
        size: float = 0.3,
        transparency: float = 0.0,
        position: str | tuple[int, int] = "bottom-right",
        mode: str = "fixed",
        evade: Mapping[str, float | None] | Sequence[str] | str = (),
        outer_iters: int = 40,
        trigger_steps: int | None = None,
        trigger_lr: float = 0.1,
        retrain_steps: int | None = None,
        max_steps: int | None = None,
        poison_share: float = 0.1,
        lr: float = 0.01,
        batch_size: int = 128,
        kappa: float = 0.95,
        max_acc_drop: float = 0.015,
        early_stop: bool = True,
        layer: str | None = None,
        neurons: int = 2,
        selection: str = "least-activated",
        init_trigger_steps: int = 20,
        monitor_size: int = 1000,
        seeds_per_class: int = 5,
        inplace: bool = False,
        seed: int = 0,
        quiet: bool | None = None,
    ) -> None:
        self.init = init
        self.target = target
        self.size = size
        self.transparency = transparency
        self.position = position
        self.mode = mode
        self.evade = evade
        self.outer_iters = outer_iters
        self.trigger_steps = trigger_steps
        self.trigger_lr = trigger_lr
        self.retrain_steps = retrain_steps
        self.max_steps = max_steps
        self.poison_share = poison_share
        self.lr = lr
        self.batch_size = batch_size
        self.kappa = kappa
        self.max_acc_drop = max_acc_drop
        self.early_stop = early_stop
        self.layer = layer
        self.neurons = neurons
        self.selection = selection
        self.init_trigger_steps = init_trigger_steps
        self.monitor_size = monitor_size
        self.seeds_per_class = seeds_per_class
        self.inplace = inplace
        self.seed = seed
        self.quiet = quiet

    def _validate_params(self) -> None:
        super()._validate_params()
        for term, _ in evasion_terms(self.evade):  # an unknown name raises with the closest
            if term.needs_learned_mask and self.mode == "fixed":
                raise ParamError(
                    f"evading {term.name} works through the mask's opacity, which a fixed mask "
                    f"cannot change; use mode 'opacity' or 'size' with evade {term.name!r}"
                )

    def retrain_budget(self) -> Any:
        """The model steps of Alg. 2 line 5 over every outer iteration, as :meth:`_fit` counts
        them: ``min(outer_iters * (retrain_steps or N), max_steps)``, N the training batches
        per epoch (a :class:`~eviltwins.attacks.budget.RetrainBudget`; the budget a fair
        comparison with TrojanNN holds equal, as the authors' code runs both). An early stop at
        ``kappa`` spends less: the declared budget is what a sweep compares."""
        from eviltwins.attacks.budget import RetrainBudget

        if self.retrain_steps:
            steps = int(self.outer_iters) * int(self.retrain_steps)
            return RetrainBudget(0, steps, self.max_steps, self.batch_size)
        return RetrainBudget(int(self.outer_iters), 0, self.max_steps, self.batch_size)

    def _initial_trigger(
        self, model: nn.Module, data: DatasetSpec, generator: torch.Generator
    ) -> tuple[Trigger, dict[str, Any]]:
        """Alg. 2 lines 1-2: r(0), m(0) from the attack named by ``init`` (its
        ``initial_trigger``), configured with those of IMC's trigger parameters it takes."""
        cls = ATTACKS.get(self.init)
        taken = set(init_param_names(cls))
        params = {dst: getattr(self, src) for src, dst in _INIT_PARAMS.items() if dst in taken}
        return cls(**params).initial_trigger(model, data, generator)

    def _seed_images(
        self, data: DatasetSpec, generator: torch.Generator, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``seeds_per_class`` training images of every class, drawn once: the inputs on which
        a model-step term refreshes its state (ABS's stimulation analysis, as in the authors'
        per-epoch candidate search on seed data)."""
        x, y = load_all(data.train)
        perm = torch.randperm(len(y), generator=generator)
        idx = torch.cat(
            [perm[y[perm] == k][: self.seeds_per_class] for k in range(data.num_classes)]
        )
        return x[idx].to(device), y[idx].to(device)

    def _fit(self, model: nn.Module, data: DatasetSpec, generator: torch.Generator):
        device = device_of(model)
        init_trigger, init_info = self._initial_trigger(model, data, generator)
        learn_mask = self.mode != "fixed"
        params = TriggerParams(
            init_trigger,
            learn_mask=learn_mask,
            max_mask=1.0 - self.transparency,
            shared_mask=self.mode == "opacity",
        ).to(device)
        n_px = init_trigger.region_pixels
        terms = evasion_terms(self.evade)
        trig_terms = [(t, w) for t, w in terms if t.trigger_loss is not None]
        model_terms = ModelStep(terms)
        opt_t = torch.optim.Adam(
            [params.w_pattern] + ([params.w_mask] if learn_mask else []),
            lr=self.trigger_lr,
            betas=(0.5, 0.9),
        )
        current: dict[str, Any] = {"trigger": init_trigger.to(device)}
        poison = poison_hook(
            lambda: current["trigger"], self.target, self.poison_share, generator, "append"
        )

        def batch_hook(x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
            """Poison the batch; on a batch that carries stamped copies, append the model-step
            terms' rows (each input stamped once, beside clean partners) to the same batch."""
            xp, yp = poison(x, y, step)
            if len(xp) == len(x):
                model_terms.skip()
                return xp, yp
            return torch.cat([xp, model_terms.extend(x, xp[len(x) :])]), yp

        n_batches = math.ceil(len(data.train) / self.batch_size)
        per_iter = self.retrain_steps or n_batches
        budget = self.outer_iters * per_iter
        if self.max_steps is not None:
            budget = min(budget, self.max_steps)
        trainer = Trainer(
            model,
            data,
            # IMC counts its own step budget (outer_iters x retrain_steps, max_steps)
            retrain_config(self, "constant", epochs=1, max_steps=None),
            batch_hook=batch_hook if model_terms else poison,
            extra_loss=model_terms.loss if model_terms else None,
            total_steps=budget,
        )
        # Monitor subset of training inputs (never the test set) for early stopping.
        x_mon, y_mon = load_all(data.train)
        pick = torch.randperm(len(y_mon), generator=generator)[: self.monitor_size]
        monitor = TensorImageDataset(x_mon[pick], y_mon[pick])
        x_check = x_mon[pick][:CHECK_IMAGES]
        benign_mon = evaluate(model, monitor)["accuracy"]
        trig_batches = self._trigger_batches(data, generator, device)
        seeds = self._seed_images(data, generator, device) if model_terms.refreshing else None
        records: dict[str, list[float]] = {}
        trigger_total = 0

        history: list[dict[str, float]] = []
        for k in range(1, self.outer_iters + 1):
            if trainer.step_count >= budget:
                break
            n_retrain = min(per_iter, budget - trainer.step_count)
            n_trig = n_retrain if self.trigger_steps is None else self.trigger_steps
            losses = self._trigger_step(
                model, params, opt_t, trig_batches, trig_terms, n_px, n_trig
            )
            trigger_total += n_trig
            # Alg. 2 line 5 re-trains with the trigger line 4 just produced (authors' code).
            current["trigger"] = params.trigger().to(device)
            term_record: dict[str, float] = {}
            if seeds is not None:
                with eval_mode(model), frozen_params(model):
                    term_record = model_terms.refresh(model, *seeds, data.num_classes, self.target)
            for key, value in term_record.items():
                records.setdefault(key, []).append(value)
            with model_terms.tapping(model):
                stats = trainer.steps(
                    n_retrain, desc=f"imc {k}/{self.outer_iters}", quiet=self.quiet
                )
            trainer.check_finite(x_check)  # finite weights can still overflow the outputs
            m = attack_metrics(model, monitor, current["trigger"], self.target)
            clean = evaluate(model, monitor)["accuracy"]
            record = {
                "iteration": float(k),
                "retrain_steps": float(trainer.step_count),
                "trigger_steps": float(trigger_total),
                "asr": m["asr"],
                "efficacy": m["efficacy"],
                "clean_acc": clean,
                "mask_l1": current["trigger"].l1,
                **losses,
                **stats,
                **(model_terms.take_record() if model_terms else {}),
                **term_record,
            }
            history.append(record)
            if (
                self.early_stop
                and m["efficacy"] >= self.kappa
                and benign_mon - clean <= self.max_acc_drop
            ):
                break
        final = current["trigger"].detach().to("cpu")
        covered = final.mask[final.region] > 0.5 * (1.0 - self.transparency)
        extra = {
            "init": self.init,
            "init_trigger": init_info,
            "iterations": len(history),
            "retrain_steps_total": trainer.step_count,
            "trigger_steps_total": trigger_total,
            "evasion_weights": {t.name: w for t, w in terms},
            **records,
            "effective_size": math.sqrt(int(covered.sum())) / data.shape[2],
            "mean_opacity": float(final.mask[final.region].mean()) if n_px else 0.0,
        }
        return final, history, extra

    def _trigger_batches(self, data: DatasetSpec, generator: torch.Generator, device: torch.device):
        """An endless stream of non-target training batches for the trigger step."""
        while True:
            for x, y in iter_batches(
                data.train, self.batch_size, shuffle=True, generator=generator, device=device
            ):
                keep = y != self.target
                if keep.any():
                    yield x[keep]

    def _trigger_step(
        self,
        model: nn.Module,
        params: TriggerParams,
        opt: torch.optim.Optimizer,
        batches: Any,
        terms: list[tuple[Any, float]],
        n_px: int,
        n_steps: int,
    ) -> dict[str, float]:
        """Alg. 2 line 4: ``n_steps`` Adam steps on (w_r, w_m) with the model fixed, on
        CE(f(psi(x, r; m)), t) plus the weighted trigger-step evasion ``terms``; returns the
        mean CE and each term's mean unweighted loss (``<name>_loss``)."""
        sums = {"trigger_ce": 0.0, **{f"{t.name}_loss": 0.0 for t, _ in terms}}
        if n_steps == 0:
            return sums
        target = self.target
        with eval_mode(model), frozen_params(model):
            for _ in range(n_steps):
                x = next(batches)
                stamped = params(x)
                logits = model(stamped)
                ce = nn.functional.cross_entropy(
                    logits, torch.full((len(x),), target, device=x.device)
                )
                mask = params.mask()
                loss = ce
                for term, w in terms:
                    value = term.trigger_loss(model, stamped, x, mask, n_px)
                    sums[f"{term.name}_loss"] += value.item()
                    loss = loss + w * value
                if not torch.isfinite(loss):
                    raise OptimisationError(
                        f"IMC trigger loss became {loss.item()}; lower trigger_lr "
                        f"(now {self.trigger_lr})"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums["trigger_ce"] += ce.item()
        return {k: v / n_steps for k, v in sums.items()}
