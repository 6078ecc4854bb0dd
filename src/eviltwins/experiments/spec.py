"""Sweep specifications: the grid of a paper figure as one validated YAML file.

A sweep is ``datasets x models x attacks x sizes x transparencies x seeds``; every cell runs one
attack on the cached clean model of its (dataset, model, seed) and then every detector on the
poisoned model. Everything is validated up front, before any data is read or model trained:
names against the registries (with typo hints) and every attack/detector parameter against the
estimator's own constraints, so a bad sweep fails in a second with one line, not after an hour.

Example (``configs/quick/fig12.yaml``)::

    name: fig12-quick
    datasets: [fashion-mnist]
    train_limit: 10000
    attacks:
      - {name: trojannn, label: TrojanNN, params: {max_steps: 200}}
      - {name: imc, label: TrojanNN*, params: {max_steps: 200, retrain_steps: 50}}
    sizes: [0.1, 0.2, 0.3]
    transparencies: [0.0, 0.7]

An attack's ``dataset_params`` replace some of its ``params`` on one dataset (``{gtsrb:
{evade: {strip: 0.2}}}``); a TrojanNN* / baseline pair must re-train for the same budget
(:mod:`eviltwins.experiments.budgets`; ``unequal_budgets: true`` to compare them anyway).

A dataset may be a path (a ``.npz`` file or an image folder, relative to the working folder);
the top-level ``dataset_options`` (``image_size``, ``channels``, ``normalize``) apply to every
path dataset, and cell keys name a path by its stem and a digest (``mydata-1a2b3c4d``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from eviltwins.base import (
    CLASS_INDEX,
    N_CLEAN,
    SEED_RANGE,
    SUBSET_SIZE,
    Check,
    Interval,
    IntervalOr,
    check_numbers,
)
from eviltwins.config import Validated, grid_list, read_yaml, unit_grid_list, validate
from eviltwins.data import check_dataset_options, is_path_dataset
from eviltwins.errors import ParamError
from eviltwins.experiments.archs import check_arch_kwargs, check_user_model_name
from eviltwins.experiments.budgets import check_attacks
from eviltwins.report.figures import FIGURES as PAPER_FIGURES

SPEC_SCHEMA = "eviltwins.sweep/1"
CLEAN_ATTACK = "none"  # the attack name of the "no attack" cells (detectors on the clean model)
CLEAN_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "augment",
    "arch_kwargs",
)
FIGURES = tuple(PAPER_FIGURES)  # the report's figure registry
GRID_PARAMS = ("size", "transparency", "target", "seed")  # an attack's parameters the grid sets
MAX_SAMPLE = 64  # backdoored twins per clean model (``sample``)
RANDOM = "random"  # ``target: random`` / ``position: random``: drawn per cell (grid.py)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


@dataclass(frozen=True)
class Entry(Validated):
    """One attack or detector of the sweep: a registry name, a display label and its
    parameters (an attack's size, transparency, target and seed come from the grid)."""

    name: str
    label: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    _constraints: ClassVar[dict[str, Any]] = {
        "name": Check(_is_str, "a registry name (a string)"),
        "label": Check(lambda v: v is None or isinstance(v, str), "a string or None"),
        "params": Check(
            lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
            "a mapping of parameter names to values",
        ),
    }

    @property
    def display(self) -> str:
        """The label, else ``clean`` for the ``none`` attack, else the name."""
        return self.label or ("clean" if self.is_clean else self.name)

    @property
    def is_clean(self) -> bool:
        """The ``none`` attack: detectors on the clean model."""
        return self.name == CLEAN_ATTACK


def _param_name(name: str) -> str:
    return name.replace("-", "_")  # as the registry reads it (``trigger-lr``)


@dataclass(frozen=True)
class AttackEntry(Entry):
    """An attack of the sweep: an :class:`Entry` whose ``dataset_params`` replace some of its
    ``params`` on the datasets they name, e.g. ``{gtsrb: {evade: {strip: 0.2}}}`` (the authors'
    STRIP evasion weight on GTSRB)."""

    dataset_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    _constraints: ClassVar[dict[str, Any]] = {
        **Entry._constraints,
        "dataset_params": Check(
            lambda v: (
                isinstance(v, dict)
                and all(
                    isinstance(k, str)
                    and isinstance(p, dict)
                    and all(isinstance(n, str) for n in p)
                    for k, p in v.items()
                )
            ),
            "a mapping of dataset names to mappings of parameter names to values",
        ),
    }

    def _check(self) -> None:
        names = {_param_name(n) for p in self.dataset_params.values() for n in p}
        grid = sorted(names & set(GRID_PARAMS))
        if grid:
            raise ParamError(
                f"attack {self.display!r}: dataset_params cannot set {grid[0]!r}; the sweep's "
                "grid sets it (sizes, transparencies, target, seeds)"
            )

    def params_on(self, dataset: str) -> dict[str, Any]:
        """``params`` with the ``dataset_params`` of ``dataset`` in place of theirs."""
        over = {_param_name(k): v for k, v in self.dataset_params.get(dataset, {}).items()}
        return {**{k: v for k, v in self.params.items() if _param_name(k) not in over}, **over}

    def grid_params(
        self, dataset: str, size: float | None, transparency: float | None, target: int, seed: int
    ) -> dict[str, Any]:
        """The attack's parameters at one grid point (none for the ``none`` attack): the grid
        sets only the parameters the attack takes (Blended has no ``size``)."""
        if self.is_clean:
            return {}
        grid = {"size": size, "transparency": transparency, "target": target, "seed": seed}
        return {**self.params_on(dataset), **{k: v for k, v in grid.items() if self.takes(k)}}

    def takes(self, param: str) -> bool:
        """Whether the attack has the parameter ``param`` (the ``none`` attack has none)."""
        from eviltwins.attacks import ATTACKS
        from eviltwins.base import init_param_names

        return not self.is_clean and param in init_param_names(ATTACKS.get(self.name))


@dataclass(frozen=True)
class SweepSpec(Validated):
    """A validated sweep. ``clean`` holds :func:`eviltwins.train` options of the clean models
    (``epochs``, ``lr``, ...); ``n_clean`` the held-out clean test images input filters are
    calibrated on (and as many evaluated); ``figures`` the report's figures (default: every
    figure the grid supports); ``unequal_budgets: true`` lets a TrojanNN* / baseline pair
    re-train for different budgets (refused otherwise: :mod:`eviltwins.experiments.budgets`)."""

    name: str
    description: str = ""
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["cnn"])
    attacks: list[AttackEntry] = field(default_factory=list)
    sizes: list[float] = field(default_factory=lambda: [0.2])
    transparencies: list[float] = field(default_factory=lambda: [0.7])
    seeds: list[int] = field(default_factory=lambda: [0])
    detectors: list[Entry] = field(default_factory=list)
    target: int | str = 0
    position: str | None = None
    sample: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    clean: dict[str, Any] = field(default_factory=dict)
    n_clean: int = 500
    save_models: bool = False
    figures: list[str] | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    unequal_budgets: bool = False

    _constraints: ClassVar[dict[str, Any]] = {
        "name": Check(
            lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v),
            "letters, digits, '.', '_' or '-' (it names the run folder)",
        ),
        "description": Check(_is_str, "a string"),
        "datasets": grid_list(_is_str, "dataset names or paths"),
        "models": grid_list(_is_str, "model names"),
        "attacks": Check(
            lambda v: (
                isinstance(v, list) and len(v) >= 1 and all(isinstance(e, AttackEntry) for e in v)
            ),
            "a non-empty list of attacks ({name, label, params, dataset_params})",
        ),
        "sizes": unit_grid_list(True, False, "trigger sizes"),
        "transparencies": unit_grid_list(False, True, "transparencies"),
        "seeds": grid_list(SEED_RANGE.ok, f"seeds ({SEED_RANGE.describe()})"),
        "detectors": Check(
            lambda v: isinstance(v, list) and all(isinstance(e, Entry) for e in v),
            "a list of detectors ({name, label, params})",
        ),
        "target": IntervalOr(int, CLASS_INDEX.low, CLASS_INDEX.high, (RANDOM,)),
        "position": Check(lambda v: v in (None, RANDOM), f"{RANDOM!r} (or absent)"),
        "sample": Interval(int, 1, MAX_SAMPLE, allow_none=True),
        "train_limit": SUBSET_SIZE,
        "test_limit": SUBSET_SIZE,
        "clean": Check(lambda v: isinstance(v, dict), "a mapping of training options"),
        "n_clean": N_CLEAN,
        "save_models": Check(lambda v: isinstance(v, bool), "true or false"),
        "figures": Check(
            lambda v: v is None or (isinstance(v, list) and all(f in FIGURES for f in v)),
            f"a list of figures among {', '.join(FIGURES)}",
        ),
        "dataset_options": Check(
            lambda v: isinstance(v, dict), "a mapping of image_size, channels, normalize"
        ),
        "unequal_budgets": Check(lambda v: isinstance(v, bool), "true or false"),
    }

    def _check(self) -> None:
        n_attacks = sum(not a.is_clean for a in self.attacks)
        if self.sample is not None and self.sample > n_attacks:
            raise ParamError(
                f"sample: {self.sample} twins per clean model, but the sweep has {n_attacks} "
                "attack(s); each twin is a different attack, so sample is at most their number"
            )
        for kind, entries in (("attack", self.attacks), ("detector", self.detectors)):
            labels = [e.display for e in entries]
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ParamError(
                    f"{kind} labels of the sweep must be unique; {dup[0]!r} repeats (set 'label')"
                )

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SPEC_SCHEMA, **super().to_dict()}


def load_spec(source: str | os.PathLike[str] | dict[str, Any] | SweepSpec) -> SweepSpec:
    """A :class:`SweepSpec` from a YAML path, a mapping or a spec, fully validated: every
    name resolved in its registry and every attack/detector parameter checked by the estimator
    (one-line :class:`~eviltwins.errors.EviltwinsError` on the first problem)."""
    if isinstance(source, SweepSpec):
        spec = source
    else:
        raw = read_yaml(source) if not isinstance(source, dict) else dict(source)
        raw.pop("schema", None)
        spec = validate(SweepSpec, **raw)
    return check_names(spec)


def check_names(spec: SweepSpec) -> SweepSpec:
    """Resolve every dataset, model, attack and detector name and build every estimator with
    its parameters (nothing is loaded or trained); returns ``spec`` with its registered models
    in their registry spelling."""
    from eviltwins.data import DATASETS
    from eviltwins.detectors import DETECTORS
    from eviltwins.models import MODELS
    from eviltwins.models.base import is_user_model
    from eviltwins.training import TrainConfig

    check_dataset_options(spec.dataset_options)
    datasets = []
    for ds in spec.datasets:
        if not is_path_dataset(ds):
            DATASETS.get(ds)
            datasets.append(ds)
            continue
        path = Path(_dataset_key(ds))
        if not path.exists():
            raise ParamError(f"dataset {ds} does not exist; pass a .npz file or an image folder")
        datasets.append(str(path))  # absolute: the cells name the same data from anywhere
    if spec.dataset_options and not any(map(is_path_dataset, datasets)):
        raise ParamError("dataset_options apply to .npz files and image folders; none is named")
    if len(set(datasets)) < len(datasets):
        raise ParamError("datasets must be unique; a path is named twice")
    spec = replace(spec, datasets=datasets)
    unknown = sorted(set(spec.clean) - set(CLEAN_OPTIONS))
    if unknown:
        raise ParamError(
            f"unknown clean-training option {unknown[0]!r}; known: {', '.join(CLEAN_OPTIONS)}"
        )
    arch_kwargs = spec.clean.get("arch_kwargs", {})
    if arch_kwargs is None:
        arch_kwargs = {}
    if not isinstance(arch_kwargs, dict):
        raise ParamError(
            "clean.arch_kwargs must be a mapping of model option names to values; "
            f"got {type(arch_kwargs).__name__}"
        )
    check_numbers(arch_kwargs, "clean.arch_kwargs")
    models = []
    for m in spec.models:
        if is_user_model(m):
            check_user_model_name(m)
            models.append(m)
            continue
        if ":" in m:
            check_user_model_name(m)  # raises: a malformed package.module:ClassName
        factory = MODELS.get(m)
        name = next(n for n in MODELS.names() if MODELS.get(n) is factory)
        check_arch_kwargs(name, factory, arch_kwargs)
        models.append(name)
    dup = sorted({m for m in models if models.count(m) > 1})
    if dup:
        raise ParamError(f"models must be unique; {dup[0]!r} repeats")
    spec = replace(spec, models=models)  # registry spelling (stable cell keys)
    validate(TrainConfig, **{k: v for k, v in spec.clean.items() if k != "arch_kwargs"})
    spec = replace(spec, attacks=[_on_datasets(a, spec.datasets) for a in spec.attacks])
    check_attacks(spec)  # every attack's parameters, and equal budgets in compared pairs
    for det in spec.detectors:
        try:
            DETECTORS.build(det.name, det.params, True)
        except ParamError as err:
            raise ParamError(f"detector {det.display!r}: {err}") from None
    return spec


def user_models(spec: SweepSpec) -> list[str]:
    """The spec's user architectures (``package.module:ClassName``): their modules are
    imported only when the sweep runs (validation never imports user code)."""
    from eviltwins.models.base import is_user_model

    return [m for m in spec.models if is_user_model(m)]


def _dataset_key(ds: str) -> str:
    """How the cells name dataset ``ds``: a path absolute, a registered name as written."""
    return str(Path(ds).expanduser().resolve()) if is_path_dataset(ds) else ds


def _on_datasets(atk: AttackEntry, datasets: list[str]) -> AttackEntry:
    """``atk`` with its ``dataset_params`` keyed like the cells name the datasets; a key
    naming no dataset of the sweep is refused."""
    keyed = {_dataset_key(k): v for k, v in atk.dataset_params.items()}
    unknown = [k for k in atk.dataset_params if _dataset_key(k) not in datasets]
    if unknown or len(keyed) < len(atk.dataset_params):
        what = f"names {unknown[0]!r}, not a dataset" if unknown else "names a dataset twice"
        raise ParamError(
            f"attack {atk.display!r}: dataset_params {what} of the sweep; its datasets: "
            f"{', '.join(datasets)}"[:400]
        )
    return replace(atk, dataset_params=keyed)
