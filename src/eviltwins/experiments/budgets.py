"""A sweep's attacks checked up front: every attack's parameters at every grid point (with the
``dataset_params`` of each dataset), and equal re-training budgets for the pairs the claims
compare.

Equal budgets (Pang et al., CCS 2020, Section 5: TrojanNN* against TrojanNN): the attacks compared in one
claim re-train for the same number of steps, and a sweep refuses a pair that does not, unless
the spec says so (``unequal_budgets: true``). A pair is an attack with an ``init`` (IMC:
TrojanNN*, BadNet*) and each attack of the sweep that its ``init`` names
(:func:`eviltwins.attacks.budget.compared_with`, the rule the report pairs rows by). Budgets
are compared as each attack declares them
(:meth:`~eviltwins.attacks.base.BackdoorAttack.retrain_budget`), as functions of the training
batches per epoch, so no dataset is read.
"""

from __future__ import annotations

from typing import Any

from eviltwins.errors import ParamError


def check_attacks(spec: Any) -> None:
    """Build every attack of ``spec`` (an :class:`~eviltwins.experiments.spec.SweepSpec`) with
    its parameters on every dataset (``dataset_params`` applied) at every size and
    transparency, then refuse a TrojanNN* / baseline pair whose declared re-training budgets
    differ on some dataset (unless ``spec.unequal_budgets``). Raises one
    :class:`~eviltwins.errors.ParamError` line on the first problem."""
    from eviltwins.attacks import ATTACKS

    built: dict[tuple[str, str], Any] = {}  # (attack label, dataset) -> the built attack
    for atk in spec.attacks:
        if atk.is_clean:
            if atk.params or atk.dataset_params:
                raise ParamError("the 'none' attack (clean-model cells) takes no params")
            continue
        checked: list[tuple[dict[str, Any], Any]] = []  # parameters built at every grid point
        for ds in spec.datasets:
            params = atk.params_on(ds)
            same = [est for p, est in checked if p == params]
            if same:
                built[(atk.display, ds)] = same[0]
                continue
            where = f"attack {atk.display!r}" + (f" on {ds}" if ds in atk.dataset_params else "")
            for size in spec.sizes:
                for tr in spec.transparencies:
                    target = 0 if spec.target == "random" else spec.target  # drawn per cell
                    grid = atk.grid_params(ds, size, tr, target, 0)
                    try:
                        built[(atk.display, ds)] = ATTACKS.build(atk.name, grid, True)
                    except ParamError as err:
                        raise ParamError(f"{where}: {err}") from None
            checked.append((params, built[(atk.display, ds)]))
    if not spec.unequal_budgets:
        _check_budgets(spec, built)


def _check_budgets(spec: Any, built: dict[tuple[str, str], Any]) -> None:
    from eviltwins.attacks.budget import compared_with

    attacks = [a for a in spec.attacks if not a.is_clean]
    for ds in spec.datasets:
        for star in attacks:
            est = built[(star.display, ds)]
            base_name = compared_with(type(est), est.get_params())
            for base in attacks:
                if base is star or type(built[(base.display, ds)]).name != base_name:
                    continue
                _same_budget(base, built[(base.display, ds)], star, est, ds, len(spec.datasets))


def _same_budget(base: Any, b: Any, star: Any, s: Any, dataset: str, n_datasets: int) -> None:
    """Refuse (one line) when the two declared budgets differ for some training-set size."""
    mine, theirs = b.retrain_budget(), s.retrain_budget()
    if mine is None or theirs is None or mine.same_as(theirs):
        return
    on = f" on {dataset}" if n_datasets > 1 else ""
    raise ParamError(
        f"attacks {base.display!r} and {star.display!r} are compared in the claims but "
        f"re-train for different budgets{on}: {base.display} {mine.describe()}, {star.display} "
        f"{theirs.describe()} (N: training batches per epoch); give both the same budget "
        "(TrojanNN epochs = TrojanNN* outer_iters of one epoch, as the IMC authors run both, or "
        "one max_steps for both), or set 'unequal_budgets: true' in the spec to compare them "
        "anyway"
    )
