"""Constraint handling in each strategy family (optuna, nevergrad, PSO) on a closed form.

Maximise ``x0 + x1`` on the unit square subject to ``kl = x0^2 + x1^2 <= 0.3`` (optimum
``2 sqrt(0.15) = 0.775`` on the arc).  A strategy told the constraint must put more of its
later candidates inside it than the same strategy told nothing, and find a better feasible point
than random search at the same budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from blackbox.multiobjective import ObjectiveSpec, SideColumn
from blackbox.strategies import Box, make_strategy

BOX = Box(np.zeros(2), np.ones(2), np.array([False, False]))
CONSTRAINED = ObjectiveSpec("f", (SideColumn("kl", 0, bound=0.3, objective=False),))
PARETO = ObjectiveSpec("f", (SideColumn("kl", 0, bound=0.3),))
GENERATIONS, POP = 12, 8


def _run(name: str, settings: dict, spec: ObjectiveSpec | None, seed: int = 0) -> np.ndarray:
    s = make_strategy(name, BOX, seed=seed, population=POP, **settings)
    if spec is not None:
        s.set_objectives(spec)
    rows = []
    for _ in range(GENERATIONS):
        x = s.ask()
        f, kl = x.sum(1), (x**2).sum(1)
        s.tell(x, f, extra=kl[:, None])
        rows.append(np.c_[f, kl])
    return np.concatenate(rows)  # (n, 2)


def _late_feasible(rows: np.ndarray) -> float:
    return float((rows[len(rows) // 2 :, 1] <= 0.3).mean())


def _best_feasible(rows: np.ndarray) -> float:
    ok = rows[:, 1] <= 0.3
    return float(rows[ok, 0].max()) if ok.any() else -np.inf


FAMILIES = [
    ("optuna", {"sampler": "tpe"}),
    ("optuna", {"sampler": "nsga2"}),
    ("nevergrad", {"optimizer": "DE"}),
    ("pso", {}),
]


@pytest.mark.parametrize(("name", "settings"), FAMILIES, ids=lambda v: str(v))
def test_constraint_steers_the_search_into_the_feasible_region(name: str, settings: dict) -> None:
    told = _run(name, settings, CONSTRAINED)
    blind = _run(name, settings, None)
    rand = _run("random", {}, None)
    assert _late_feasible(told) > _late_feasible(blind)
    assert _best_feasible(told) > _best_feasible(rand)
    assert _best_feasible(told) <= 2 * np.sqrt(0.15) + 1e-9


@pytest.mark.parametrize(("name", "settings"), FAMILIES, ids=lambda v: str(v))
def test_pareto_mode_keeps_feasible_points_near_the_optimum(name: str, settings: dict) -> None:
    rows = _run(name, settings, PARETO)
    assert _best_feasible(rows) > 0.7


def test_optuna_study_is_multi_objective_with_constraints() -> None:
    s = make_strategy("optuna", BOX, seed=0, population=4, sampler="nsga2")
    s.set_objectives(PARETO)
    x = s.ask()
    s.tell(x, x.sum(1), extra=(x**2).sum(1)[:, None])
    trials = s.study.trials
    assert [d.name for d in s.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(len(t.values) == 2 for t in trials)
    assert all(t.constraints["kl"] == pytest.approx(t.values[1] - 0.3) for t in trials)


def test_cmaes_refuses_side_effects() -> None:
    s = make_strategy("optuna", BOX, seed=0, population=4, sampler="cmaes")
    with pytest.raises(ValueError, match="single-objective"):
        s.set_objectives(PARETO)
