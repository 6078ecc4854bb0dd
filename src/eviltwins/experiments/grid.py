"""A sweep's cells: the grid of a :class:`~eviltwins.experiments.spec.SweepSpec` as the runner
executes it, with the seeded draws that turn a grid into a population of models.

Every cell's key names its result file (readable fields plus a digest of everything that
changes its result). A population draws some of its settings per cell, each from a generator
seeded by the cell's identity (the same spec always gives the same population, on any machine
and executor):

- ``target: random``: each attacked model's target label, uniform over the dataset's classes
  (drawn when the cell runs, where the number of classes is known; the result records it);
- ``position: random``: each trigger's corner (or the centre), among attacks with a position;
- ``sample: K``: each clean model gets K backdoored twins instead of the whole attack grid:
  the attacks in turn over the clean models (in grid order, so each attack gets its share;
  K is at most the number of attacks, so a model's twins are different attacks), the size
  and transparency drawn from the grid's lists.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any

from eviltwins.data import dataset_slug, is_path_dataset
from eviltwins.experiments.spec import CLEAN_ATTACK, RANDOM, AttackEntry, SweepSpec
from eviltwins.triggers import POSITIONS


@dataclass(frozen=True)
class Cell:
    """One point of the grid. ``key`` names its result file: readable fields plus a hash of
    everything that changes its result, so an edited sweep never reuses a stale cell.
    ``position`` is the drawn trigger position (``position: random``), else ``None``."""

    dataset: str
    model: str
    attack: AttackEntry
    size: float | None
    transparency: float | None
    seed: int
    position: str | None = None

    def config(self, spec: SweepSpec) -> dict[str, Any]:
        """Everything the cell's result depends on (JSON-safe)."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "attack": self.attack.name,
            "label": self.attack.display,
            "params": self.attack_params(spec),
            "size": self.size,
            "transparency": self.transparency,
            "seed": self.seed,
            "detectors": [d.to_dict() for d in spec.detectors],
            "clean": clean_config(spec, self.dataset, self.model, self.seed),
            "n_clean": spec.n_clean,
        }

    def attack_params(self, spec: SweepSpec) -> dict[str, Any]:
        params = self.attack.grid_params(
            self.dataset, self.size, self.transparency, spec.target, self.seed
        )
        if self.position is not None and self.attack.takes("position"):
            params["position"] = self.position
        return params

    def key(self, spec: SweepSpec) -> str:
        digest = _digest(self.config(spec))
        slug = _slug(self.attack.display)
        ds = dataset_slug(self.dataset, dataset_options(spec, self.dataset))
        if self.attack.name == CLEAN_ATTACK:
            return f"{ds}__{self.model}__{slug}__seed{self.seed}__{digest}"
        return (
            f"{ds}__{self.model}__{slug}__size{_g(self.size)}__tr{_g(self.transparency)}"
            f"__seed{self.seed}__{digest}"
        )


def _g(value: float | None) -> str:
    """A grid value in a cell's key; ``na`` where the attack does not take the parameter."""
    return "na" if value is None else f"{value:g}"


def clean_config(spec: SweepSpec, dataset: str, model: str, seed: int) -> dict[str, Any]:
    """The :func:`eviltwins.train` arguments of a clean model (its cache key); a path dataset
    adds its ``dataset_options`` (registered ones add nothing, so their keys never change)."""
    options = dataset_options(spec, dataset)
    return {
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "train_limit": spec.train_limit,
        "test_limit": spec.test_limit,
        **spec.clean,
        **({"dataset_options": options} if is_path_dataset(dataset) else {}),
    }


def clean_key(spec: SweepSpec, dataset: str, model: str, seed: int) -> str:
    cfg = clean_config(spec, dataset, model, seed)
    ds = dataset_slug(dataset, dataset_options(spec, dataset))
    return f"{ds}__{model}__seed{seed}__{_digest(cfg)}"


def dataset_options(spec: SweepSpec, dataset: str) -> dict[str, Any]:
    """The loading options of ``dataset`` in ``spec``: the spec's for a path, none else."""
    return dict(spec.dataset_options) if is_path_dataset(dataset) else {}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label.replace("*", "-star")).strip("-") or "attack"


def seeded_rng(*identity: Any) -> random.Random:
    """A generator seeded by ``identity`` (JSON-serialisable parts): the same on every machine
    and process (Python's ``hash`` is salted per process, so it is not used)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return random.Random(int(hashlib.sha256(blob).hexdigest()[:16], 16))


def cell_target(cfg: dict[str, Any], num_classes: int) -> int:
    """The target label of the cell whose config is ``cfg`` (:meth:`Cell.config`): its
    ``params.target``, or for ``target: random`` a draw over ``num_classes`` labels seeded by
    the cell's identity."""
    target = cfg["params"].get("target", 0)
    if target != RANDOM:
        return int(target)
    who = [cfg[k] for k in ("dataset", "model", "seed", "label", "size", "transparency")]
    return seeded_rng("target", *who, cfg["params"].get("position")).randrange(num_classes)


def cells(spec: SweepSpec) -> list[Cell]:
    """The grid in a fixed order (datasets, models, seeds, attacks, sizes, transparencies).
    A ``none`` attack (detectors on the clean model) is one cell per dataset/model/seed; an
    attack without a ``size`` (or ``transparency``) parameter runs once over that axis (its
    cells hold ``None`` there). ``sample`` keeps that many attacked cells per clean model
    (module docstring); ``position: random`` draws each attacked cell's trigger position."""
    out: list[Cell] = []
    turn = 0  # the next attack in turn (sample)
    attacks = [a for a in spec.attacks if not a.is_clean]
    for ds in spec.datasets:
        for model in spec.models:
            for seed in spec.seeds:
                if spec.sample is None:
                    chosen = [c for atk in spec.attacks for c in _grid(spec, ds, model, atk, seed)]
                else:
                    clean = [a for a in spec.attacks if a.is_clean]
                    chosen = [c for a in clean for c in _grid(spec, ds, model, a, seed)]
                    for _ in range(spec.sample):
                        atk = attacks[turn % len(attacks)]
                        turn += 1
                        rng = seeded_rng("sample", ds, model, seed, atk.display)
                        chosen.append(rng.choice(_grid(spec, ds, model, atk, seed)))
                out += [_placed(spec, c) for c in chosen]
    return out


def _grid(spec: SweepSpec, ds: str, model: str, atk: AttackEntry, seed: int) -> list[Cell]:
    if atk.is_clean:
        return [Cell(ds, model, atk, None, None, seed)]
    sizes = spec.sizes if atk.takes("size") else [None]
    trs = spec.transparencies if atk.takes("transparency") else [None]
    return [Cell(ds, model, atk, size, tr, seed) for size in sizes for tr in trs]


def _placed(spec: SweepSpec, cell: Cell) -> Cell:
    """``cell`` with its drawn trigger position (``position: random``)."""
    if spec.position != RANDOM or not cell.attack.takes("position"):
        return cell
    who = (cell.dataset, cell.model, cell.seed, cell.attack.display, cell.size, cell.transparency)
    pos = seeded_rng("position", *who).choice(POSITIONS)
    return Cell(cell.dataset, cell.model, cell.attack, cell.size, cell.transparency, cell.seed, pos)
