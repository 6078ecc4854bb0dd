"""TrojanNN* = IMC over TrojanNN (Pang et al., CCS 2020, Algorithm 2, Eqn 15).

min over theta, r, m of  E_x[ l(psi(x, r; m), t; theta) ] + lambda * l_f(m) + nu * l_s(theta),
solved by alternating a trigger perturbation (Adam on the tanh parameters of r, and of m when it
is optimised; the model fixed) with a model perturbation (re-training on clean batches plus
stamped copies labelled t, plus the evasion terms; the trigger fixed), starting from TrojanNN's
generated trigger (``init="trojannn"``: TrojanNN*) or a fixed BadNet trigger (BadNet*).
"""

from __future__ import annotations

import math
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
from eviltwins.attacks.trojannn import TrojanNN
from eviltwins.base import (
    MAX_IMAGES,
    MAX_LR,
    MAX_MAGNITUDE,
    MAX_NEURONS,
    MAX_STEPS,
    Check,
    Interval,
    OneOf,
    as_tuple,
)
from eviltwins.data import DatasetSpec, TensorImageDataset, iter_batches, load_all
from eviltwins.errors import OptimisationError, ParamError
from eviltwins.evasion import EVASIONS, neural_cleanse_fidelity
from eviltwins.metrics import attack_metrics
from eviltwins.training import Trainer, evaluate
from eviltwins.triggers import Trigger, TriggerParams
from eviltwins.utils import CHECK_IMAGES, device_of, eval_mode, frozen_params

MODES = ("fixed", "opacity", "size")


def _distinct_names(value: Any) -> bool:
    names = as_tuple(value)
    return all(isinstance(n, str) for n in names) and len(set(names)) == len(names)


@ATTACKS.register("imc")
class IMC(BackdoorAttack):
    """IMC co-optimisation of trigger and model (Algorithm 2); ``init="trojannn"`` is
    TrojanNN*, ``init="badnet"`` is BadNet*.

    Initialisation (Alg. 2 lines 1-2): theta(0) = the given model; m(0) = the square mask of
    ``size`` / ``transparency`` / ``position``; r(0) = TrojanNN's generated trigger (neuron
    selection in ``layer``, ``neurons``, ``selection``, ``init_trigger_steps`` sign steps) or a
    white BadNet square.

    Each of at most ``outer_iters`` (40) outer iterations runs
    (line 4) ``trigger_steps`` (20) Adam steps (lr ``trigger_lr`` 0.01, betas (0.5, 0.9)) on
    CE(f(psi(x, r; m)), t) + lambda * l_f(m) over batches of non-target training inputs, then
    (line 5) ``retrain_steps`` (default: one epoch) SGD steps (lr ``lr`` 0.01, momentum 0.9,
    weight decay 2e-4, Nesterov) on clean batches, a ``poison_share`` of which also carry
    stamped copies labelled t, plus nu * l_s(theta). It stops early (``early_stop``) once the
    efficacy on a monitor subset of training inputs reaches ``kappa`` (0.95) with the clean
    accuracy drop (same subset) within ``max_acc_drop`` (0.015).

    Modes: ``fixed`` (r only; the human-vision experiments, Figs. 10-13), ``opacity`` (one
    opacity shared by the square's pixels), ``size`` (each pixel's opacity on its own, so the
    square can shrink). Opacity never exceeds 1 - ``transparency``.

    Evasion (``evade``, any of ``neural-cleanse``, ``strip``, and ``abs`` once the ABS detector
    is installed; ALGORITHMS.md, "Evading ..."): NeuralCleanse adds l_f(m) = ||m||_1 / trigger
    pixels to the trigger step with weight ``fidelity_weight`` (lambda, default 1; it needs a
    learnable mask: mode opacity or size). STRIP adds nu * l_s(theta), l_s = -H(f((x* + x') /
    2)), to the model step with ``strip_weight`` (nu, default 0.6; the authors use 0.2 on
    GTSRB), only on the re-training batches that carry stamped copies, x* a clean input of the
    batch stamped once and x' a different clean input. ABS subtracts ``abs_weight`` (1e-4)
    times ABS's re-mask loss of its current candidate neurons, found each outer iteration on
    ``seeds_per_class`` (5) training images per class, on the stamped copies in the model step.

    Result ``history``: per outer iteration, ASR / efficacy / clean accuracy on the monitor
    subset, each loss term, mask L1 and the re-training steps so far.
    """

    name: ClassVar[str] = "imc"
    _constraints = {
        **{k: v for k, v in TRIGGER_CONSTRAINTS.items() if k != "pattern"},
        **{k: v for k, v in RETRAIN_CONSTRAINTS.items() if k != "epochs"},
        "init": OneOf("trojannn", "badnet"),
        "mode": OneOf(*MODES),
        "evade": Check(
            _distinct_names,
            "a list of evasion terms (neural-cleanse, strip, abs)",
            bad=("strip", "strip"),
        ),
        "fidelity_weight": Interval(float, 0, MAX_MAGNITUDE, allow_none=True),
        "strip_weight": Interval(float, 0, MAX_MAGNITUDE, allow_none=True),
        "abs_weight": Interval(float, 0, MAX_MAGNITUDE, allow_none=True),
        "outer_iters": Interval(int, 1, MAX_STEPS),
        "trigger_steps": Interval(int, 0, MAX_STEPS),
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

    def __init__(
        self,
        init: str = "trojannn",
        target: int = 0,
        size: float = 0.3,
        transparency: float = 0.0,
        position: str | tuple[int, int] = "bottom-right",
        mode: str = "fixed",
        evade: tuple[str, ...] | str = (),
        fidelity_weight: float | None = None,
        strip_weight: float | None = None,
        abs_weight: float | None = None,
        outer_iters: int = 40,
        trigger_steps: int = 20,
        trigger_lr: float = 0.01,
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
        self.fidelity_weight = fidelity_weight
        self.strip_weight = strip_weight
        self.abs_weight = abs_weight
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
        evade = as_tuple(self.evade)
        for name in evade:
            EVASIONS.get(name)  # an unknown name raises with the closest match
        if "neural-cleanse" in evade and self.mode == "fixed":
            raise ParamError(
                "evading NeuralCleanse works through the mask's L1 norm, which a fixed mask "
                "cannot change; use mode 'opacity' or 'size' with evade 'neural-cleanse'"
            )

    def _initial_trigger(
        self, model: nn.Module, data: DatasetSpec, generator: torch.Generator
    ) -> tuple[Trigger, dict[str, Any]]:
        if self.init == "badnet":
            return Trigger.square(
                data.shape, self.size, self.transparency, self.position, "white"
            ), {}
        trojannn = TrojanNN(
            target=self.target,
            size=self.size,
            transparency=self.transparency,
            position=self.position,
            layer=self.layer,
            neurons=self.neurons,
            selection=self.selection,
            trigger_steps=self.init_trigger_steps,
            seed=self.seed,
        )
        return trojannn.generate_trigger(model, data, generator)

    def _weights(self) -> tuple[float, list[tuple[Any, float]], list[tuple[Any, float]]]:
        """lambda, and the (term, weight) pairs of the trigger step and of the model step."""
        evade = as_tuple(self.evade)
        lam = 0.0
        if "neural-cleanse" in evade:
            lam = 1.0 if self.fidelity_weight is None else float(self.fidelity_weight)
        elif self.fidelity_weight is not None:
            lam = float(self.fidelity_weight)
        overrides = {"strip": self.strip_weight, "abs": self.abs_weight}
        trig_terms, model_terms = [], []
        for name in evade:
            if name == "neural-cleanse":
                continue
            term = EVASIONS.create(name)
            w = overrides.get(name)
            w = term.default_weight if w is None else float(w)
            if term.trigger_loss is not None:
                trig_terms.append((term, w))
            if term.model_loss is not None:
                model_terms.append((term, w))
        return lam, trig_terms, model_terms

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
        lam, trig_terms, model_terms = self._weights()
        opt_t = torch.optim.Adam(
            [params.w_pattern] + ([params.w_mask] if learn_mask else []),
            lr=self.trigger_lr,
            betas=(0.5, 0.9),
        )
        current: dict[str, Any] = {"trigger": init_trigger.to(device), "poisoned": None}
        states: dict[str, Any] = {}
        poison = poison_hook(
            lambda: current["trigger"], self.target, self.poison_share, generator, "append"
        )

        def batch_hook(x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
            """Poison the batch and remember its clean rows and their stamped copies, so the
            model-step terms see each input stamped once, beside clean partners."""
            xp, yp = poison(x, y, step)
            current["poisoned"] = (x, xp[len(x) :]) if len(xp) > len(x) else None
            return xp, yp

        def extra_loss(m: nn.Module, x: Tensor, y: Tensor, step: int) -> Tensor:
            """nu * l_s(theta) and the other model-step terms, only on batches that carry
            stamped copies (ALGORITHMS.md, "Evading STRIP" / "Evading ABS")."""
            if current["poisoned"] is None:
                return x.new_zeros(())
            clean, stamped = current["poisoned"]
            return sum(
                w * term.model_loss(m, stamped, clean, states.get(term.name))
                for term, w in model_terms
            )

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
            batch_hook=batch_hook,
            extra_loss=extra_loss if model_terms else None,
            total_steps=budget,
        )
        # Monitor subset of training inputs (never the test set) for early stopping.
        x_mon, y_mon = load_all(data.train)
        pick = torch.randperm(len(y_mon), generator=generator)[: self.monitor_size]
        monitor = TensorImageDataset(x_mon[pick], y_mon[pick])
        x_check = x_mon[pick][:CHECK_IMAGES]
        benign_mon = evaluate(model, monitor)["accuracy"]
        trig_batches = self._trigger_batches(data, generator, device)
        refreshing = [term for term, _ in model_terms if term.refresh is not None]
        seeds = self._seed_images(data, generator, device) if refreshing else None

        history: list[dict[str, float]] = []
        for k in range(1, self.outer_iters + 1):
            if trainer.step_count >= budget:
                break
            losses = self._trigger_step(model, params, opt_t, trig_batches, lam, trig_terms, n_px)
            current["trigger"] = params.trigger().to(device)
            for term in refreshing:
                with eval_mode(model), frozen_params(model):
                    states[term.name] = term.refresh(model, *seeds, data.num_classes)
            stats = trainer.steps(
                min(per_iter, budget - trainer.step_count),
                desc=f"imc {k}/{self.outer_iters}",
                quiet=self.quiet,
            )
            trainer.check_finite(x_check)  # finite weights can still overflow the outputs
            m = attack_metrics(model, monitor, current["trigger"], self.target)
            clean = evaluate(model, monitor)["accuracy"]
            record = {
                "iteration": float(k),
                "retrain_steps": float(trainer.step_count),
                "asr": m["asr"],
                "efficacy": m["efficacy"],
                "clean_acc": clean,
                "mask_l1": current["trigger"].l1,
                **losses,
                **stats,
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
            "fidelity_weight": lam,
            "evasion_weights": {t.name: w for t, w in trig_terms + model_terms},
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
        lam: float,
        terms: list[tuple[Any, float]],
        n_px: int,
    ) -> dict[str, float]:
        """Alg. 2 line 4: Adam on (w_r, w_m) with the model fixed."""
        sums = {"trigger_ce": 0.0, "fidelity": 0.0}
        if self.trigger_steps == 0:
            return sums
        target = self.target
        with eval_mode(model), frozen_params(model):
            for _ in range(self.trigger_steps):
                x = next(batches)
                stamped = params(x)
                logits = model(stamped)
                ce = nn.functional.cross_entropy(
                    logits, torch.full((len(x),), target, device=x.device)
                )
                mask = params.mask()
                fid = neural_cleanse_fidelity(model, stamped, x, mask, n_px)
                loss = ce + lam * fid
                for term, w in terms:
                    loss = loss + w * term.trigger_loss(model, stamped, x, mask, n_px)
                if not torch.isfinite(loss):
                    raise OptimisationError(
                        f"IMC trigger loss became {loss.item()}; lower trigger_lr "
                        f"(now {self.trigger_lr})"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums["trigger_ce"] += ce.item()
                sums["fidelity"] += fid.item()
        return {k: v / self.trigger_steps for k, v in sums.items()}
