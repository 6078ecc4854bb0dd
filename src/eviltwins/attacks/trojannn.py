"""TrojanNN (Liu et al., NDSS 2018), as used as the reference attack of Pang et al. (CCS 2020,
Section 5.1.1): a pre-shaped trigger whose pixels are optimised to drive selected internal
neurons to a target activation, then a re-training of the model with stamped inputs. Trigger
generation and re-training run independently; the trigger is never revisited (the weakness that
IMC removes, :mod:`eviltwins.attacks.imc`)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from eviltwins.attacks.base import ATTACKS, BackdoorAttack
from eviltwins.attacks.retrain import (
    POISON_SHARE,
    RETRAIN_CONSTRAINTS,
    TRIGGER_CONSTRAINTS,
    retrain,
)
from eviltwins.base import MAX_LR, MAX_MAGNITUDE, MAX_NEURONS, MAX_STEPS, Interval, OneOf
from eviltwins.data import DatasetSpec, load_all
from eviltwins.errors import OptimisationError, ParamError
from eviltwins.models import (
    activations,
    consumer_of,
    feature_tap,
    layer_or_feature_layer,
)
from eviltwins.triggers import Trigger, stamp
from eviltwins.utils import device_of, eval_mode, frozen_params


def trigger_response(
    model: nn.Module, layer: str, trigger: Trigger, x: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Which parts of ``layer`` the trigger's pixels can move, found exactly with two forward
    passes that stamp two different random patterns (opaque) on the same images.

    Returns the footprint (bool map of the layer's spatial positions whose value changed; a
    single true entry for a dense layer) and the responsive neurons (bool per channel/unit whose
    footprint activation changed; a dead ReLU channel never does)."""
    with torch.no_grad(), eval_mode(model):
        r1 = torch.rand(trigger.pattern.shape, generator=generator).to(x.device)
        r2 = torch.rand(trigger.pattern.shape, generator=generator).to(x.device)
        m = trigger.region.float().to(x.device)  # opaque on the whole region
        a1 = activations(model, layer, stamp(x[:16], m, r1))
        a2 = activations(model, layer, stamp(x[:16], m, r2))
    if not (torch.isfinite(a1).all() and torch.isfinite(a2).all()):
        raise OptimisationError(
            f"layer {layer!r} gives NaN/inf activations on stamped training images; check the "
            "model's outputs (weights or inputs not finite) before generating a trigger"
        )
    tol = 1e-6 * (1 + float(a1.abs().amax()))
    if a1.ndim == 2:
        footprint = torch.ones(1, dtype=torch.bool, device=x.device)
        responsive = (a1 - a2).abs().amax(0) > tol
    else:
        footprint = (a1 - a2).abs().amax(dim=(0, 1)) > tol
        responsive = (a1 - a2).abs().amax(dim=(0, 2, 3)) > tol
    if not footprint.any():
        raise ParamError(
            f"layer {layer!r} does not respond to the trigger region at all; choose a layer "
            "whose receptive field covers the trigger (eviltwins.models.layer_names lists them)"
        )
    return footprint, responsive


#: Training images drawn (seeded, at random) for neuron selection and trigger generation.
GENERATION_IMAGES = 2048


def benign_sample(data: DatasetSpec, n: int, generator: torch.Generator) -> Tensor:
    """``n`` training images drawn at random with ``generator`` (all when the split is
    smaller), in random order, so that every prefix (``x[:64]``, ``x[:1024]``) is itself a
    random sample: GTSRB's train split and image folders are sorted by class, and their first
    images are one class, often the target (so every subset a method takes is a seeded random
    one, never the first N)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    x, _ = load_all(data.subset(n, None, seed=seed).train)
    return x[torch.randperm(len(x), generator=generator)]


def neuron_activation(feat: Tensor, footprint: Tensor) -> Tensor:
    """Per-neuron activation (N, C): a dense unit's value, or a channel's mean over the
    trigger's footprint positions of a convolutional map."""
    if feat.ndim == 2:
        return feat
    return feat[:, :, footprint].mean(dim=2)


@ATTACKS.register("trojannn")
class TrojanNN(BackdoorAttack):
    """TrojanNN (Liu et al., NDSS 2018): neuron-driven trigger, then re-training.

    Neuron selection, trigger generation and re-training, with the IMC authors' defaults
    (Pang et al., CCS 2020, their code) and the original paper's rule as an option:

    1. The trigger's shape and position are fixed (square of ``size``, ``transparency``,
       ``position``).
    2. ``neurons`` (k = 2) neurons (channels) of ``layer`` (default: the model's last feature
       layer, e.g. ``net.features.conv2``, pre-activation) are selected:
       ``selection="least-activated"`` (default, IMC authors' code): lowest mean activation on
       1,024 benign training images, among neurons that respond to the trigger region;
       ``selection="most-connected"`` (original NDSS 2018 paper): largest sum of absolute outgoing
       weights into the next layer, i.e. the conv/linear layer that consumes ``layer``'s
       output in the forward pass (for ResNet ``layer4`` / VGG ``features`` that is the
       classifier, not the container's first child).
       A conv channel's activation is its mean over the positions whose receptive field covers
       the trigger (``footprint=True``, so the trigger can move it; ``False``: the whole map).
       Selection and generation read a seeded random sample of the training images
       (:func:`benign_sample`; ``seed``), never the first ones: class-sorted splits (GTSRB,
       image folders) would give one class, often the target.
    3. Trigger generation (model fixed): from a random pattern inside the mask, minimise
       sum_i (``target_value`` - a_i(psi(x, r; m)))^2 on 64 of those images, over the pixels
       of r only, with ``trigger_steps`` sign-gradient steps of ``trigger_lr`` (the IMC
       authors' code: 0.015, 20 steps, stop when the cost < ``cost_threshold`` = 5).
       A NaN/inf cost raises :class:`~eviltwins.errors.OptimisationError` instead of
       returning a half-optimised trigger.
    4. Re-training: fine-tune ``epochs`` epochs (or ``max_steps`` steps) on the training data,
       a ``poison_share`` (10%) of batches also carrying a stamped copy labelled ``target``
       (SGD lr ``lr`` 0.01, momentum 0.9, weight decay 2e-4, Nesterov).

    Result ``extra``: selected neurons, their mean activation under the initial random trigger
    and under the generated trigger, and the generation cost history.
    """

    name: ClassVar[str] = "trojannn"
    _constraints = {
        **{k: v for k, v in TRIGGER_CONSTRAINTS.items() if k != "pattern"},
        **RETRAIN_CONSTRAINTS,
        "neurons": Interval(int, 1, MAX_NEURONS),
        "selection": OneOf("least-activated", "most-connected"),
        "target_value": Interval(float, -MAX_MAGNITUDE, MAX_MAGNITUDE),
        "trigger_steps": Interval(int, 0, MAX_STEPS),
        "trigger_lr": Interval(float, 0, MAX_LR, closed="right"),
        "cost_threshold": Interval(float, 0, MAX_MAGNITUDE),
        "poison_share": POISON_SHARE,
        "footprint": OneOf(True, False),
    }
    fast_params: ClassVar[dict[str, Any]] = {"max_steps": 3, "trigger_steps": 2}

    def __init__(
        self,
        target: int = 0,
        size: float = 0.3,
        transparency: float = 0.0,
        position: str | tuple[int, int] = "bottom-right",
        layer: str | None = None,
        neurons: int = 2,
        selection: str = "least-activated",
        target_value: float = 10.0,
        trigger_steps: int = 20,
        trigger_lr: float = 0.015,
        cost_threshold: float = 5.0,
        footprint: bool = True,
        epochs: int = 2,
        max_steps: int | None = None,
        poison_share: float = 0.1,
        lr: float = 0.01,
        batch_size: int = 128,
        inplace: bool = False,
        seed: int = 0,
        quiet: bool | None = None,
    ) -> None:
        self.target = target
        self.size = size
        self.transparency = transparency
        self.position = position
        self.layer = layer
        self.neurons = neurons
        self.selection = selection
        self.target_value = target_value
        self.trigger_steps = trigger_steps
        self.trigger_lr = trigger_lr
        self.cost_threshold = cost_threshold
        self.footprint = footprint
        self.epochs = epochs
        self.max_steps = max_steps
        self.poison_share = poison_share
        self.lr = lr
        self.batch_size = batch_size
        self.inplace = inplace
        self.seed = seed
        self.quiet = quiet

    def retrain_budget(self) -> Any:
        """Step 4's re-training, ``min(epochs * N, max_steps)`` steps with N the training
        batches per epoch (a :class:`~eviltwins.attacks.budget.RetrainBudget`: the budget a fair
        comparison with TrojanNN* holds equal, as the IMC authors' code runs both)."""
        from eviltwins.attacks.budget import RetrainBudget

        return RetrainBudget.epochs(self.epochs, self.max_steps, self.batch_size)

    # --- steps 2 and 3, usable on their own (TrojanNN* starts from them) ---------------------
    def initial_trigger(
        self, model: nn.Module, data: DatasetSpec, generator: torch.Generator
    ) -> tuple[Trigger, dict[str, Any]]:
        """TrojanNN's generated trigger (:meth:`generate_trigger`): IMC's ``init="trojannn"``
        (TrojanNN*)."""
        return self.generate_trigger(model, data, generator)

    def generate_trigger(
        self, model: nn.Module, data: DatasetSpec, generator: torch.Generator
    ) -> tuple[Trigger, dict[str, Any]]:
        """Neuron selection and trigger generation on a fixed model; returns the trigger and
        a record of what happened (neurons, activations before/after, cost history)."""
        layer = layer_or_feature_layer(model, self.layer, self.quiet)
        device = device_of(model)
        init = Trigger.square(
            data.shape,
            self.size,
            self.transparency,
            self.position,
            "random",
            int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
        )
        x_all = benign_sample(data, GENERATION_IMAGES, generator).to(device)
        fp, responsive = trigger_response(model, layer, init, x_all, generator)
        if not self.footprint:
            fp = None
        neurons = self._select(model, layer, x_all, fp, responsive)
        x = x_all[:64]
        mask = init.mask.to(device)
        region = init.region.float().to(device)
        r = init.pattern.to(device).clone()
        costs: list[float] = []

        def act(r_: Tensor) -> Tensor:
            with feature_tap(model, layer) as tap:
                model(stamp(x, mask, r_))
            a = neuron_activation(tap["out"], fp if fp is not None else _all_positions(tap["out"]))
            return a[:, neurons].mean(0)

        with eval_mode(model), frozen_params(model):
            with torch.no_grad():
                before = act(r).tolist()
            for step in range(self.trigger_steps):
                r.requires_grad_(True)
                cost = ((self.target_value - act(r)) ** 2).sum()
                costs.append(float(cost.detach()))
                if not torch.isfinite(cost):
                    raise OptimisationError(
                        f"TrojanNN trigger generation: the cost became {costs[-1]} at step "
                        f"{step} (layer {layer!r}, neurons {neurons}); check the model's "
                        f"activations there (finite, of sane scale), or lower trigger_lr "
                        f"(now {self.trigger_lr}) or target_value (now {self.target_value})"
                    )
                if cost.item() < self.cost_threshold:
                    break
                (grad,) = torch.autograd.grad(cost, r)
                with torch.no_grad():
                    r = (r - self.trigger_lr * grad.sign() * region).clamp(0, 1)
            r = r.detach()
            with torch.no_grad():
                after = act(r).tolist()
        trigger = Trigger(init.mask.clone(), (r * region).cpu(), init.region.clone())
        info = {
            "layer": layer,
            "neurons": neurons,
            "activation_before": before,
            "activation_after": after,
            "generation_costs": costs,
        }
        return trigger, info

    def _select(
        self,
        model: nn.Module,
        layer: str,
        x_all: Tensor,
        fp: Tensor | None,
        responsive: Tensor,
    ) -> list[int]:
        if self.selection == "most-connected":
            return self._most_connected(model, layer, x_all[:1], len(responsive))
        # Least-activated on benign data, among neurons that the trigger region can move (a
        # dead ReLU channel has zero gradient and would leave generation stuck at noise).
        with torch.no_grad(), eval_mode(model):
            feats = activations(model, layer, x_all[:1024])
        where = fp if fp is not None else _all_positions(feats)
        mean_act = neuron_activation(feats, where).mean(0)
        if int(responsive.sum()) < self.neurons:
            raise ParamError(
                f"only {int(responsive.sum())} neurons of {layer!r} respond to the trigger "
                f"region but neurons={self.neurons}; use a pre-activation layer or fewer neurons"
            )
        ranked = torch.where(responsive, mean_act, torch.full_like(mean_act, float("inf")))
        return ranked.argsort()[: self.neurons].tolist()

    def _most_connected(
        self, model: nn.Module, layer: str, example: Tensor, n_channels: int
    ) -> list[int]:
        """Neurons with the largest sum of absolute outgoing weights (Liu et al., NDSS 2018,
        "most connected"): the weights of the layer that consumes ``layer``'s
        output, found by tracing a forward pass (:func:`eviltwins.models.consumer_of`)."""
        found = consumer_of(model, layer, example)
        if found is None:
            raise ParamError(
                f"no conv or linear layer consumes the output of {layer!r}; most-connected "
                "needs one (choose an earlier layer, or selection='least-activated')"
            )
        name, consumer = found
        score = connection_strength(consumer, n_channels, f"{name!r} (consumer of {layer!r})")
        return score.argsort(descending=True)[: self.neurons].tolist()

    # --- the whole attack --------------------------------------------------------------------
    def _fit(self, model: nn.Module, data: DatasetSpec, generator: torch.Generator):
        trigger, info = self.generate_trigger(model, data, generator)
        history = retrain(
            self,
            model,
            data,
            trigger,
            generator,
            share=self.poison_share,
            mode="append",
            schedule="constant",
            desc="trojannn re-train",
        )
        return trigger, history, info


def connection_strength(consumer: nn.Module, n_channels: int, what: str = "consumer") -> Tensor:
    """Per-neuron sum of absolute outgoing weights into ``consumer`` (the "most connected"
    score of Liu et al., NDSS 2018, neuron selection), for a layer of
    ``n_channels`` channels (conv) or units (dense) whose output ``consumer`` reads.

    A convolution sums ``|weight[:, c]|`` over output channels and kernel (grouped convs read
    only their group's rows); a linear layer sums its columns ``|weight[:, c]|``, grouped per
    channel when it reads a flattened (C, H, W) map (``in_features = C * H * W``)."""
    w = consumer.weight.detach().abs()
    if isinstance(consumer, nn.Linear):
        n_in = w.shape[1]
        if n_in % n_channels:
            raise ParamError(
                f"{what} has {n_in} input features, not a multiple of the layer's "
                f"{n_channels} channels; most-connected cannot map its weights to neurons"
            )
        return w.view(w.shape[0], n_channels, -1).sum(dim=(0, 2))
    groups = int(getattr(consumer, "groups", 1))
    in_channels = int(getattr(consumer, "in_channels", w.shape[1] * groups))
    if in_channels != n_channels:
        raise ParamError(
            f"{what} reads {in_channels} channels but the layer has {n_channels} (e.g. a "
            "concatenation in between); most-connected cannot map its weights to neurons"
        )
    # (out, in/groups, *k) -> (groups, out/groups, in/groups, k) -> per input channel
    per_group = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).sum(dim=(1, 3))
    return per_group.reshape(-1)


def _all_positions(feat: Tensor) -> Tensor:
    if feat.ndim == 2:
        return torch.ones(1, dtype=torch.bool, device=feat.device)
    return torch.ones(feat.shape[2:], dtype=torch.bool, device=feat.device)
