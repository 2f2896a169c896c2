"""Pareto fronts, the feasibility-rule scalarisation and the selection rule (pure)."""

from __future__ import annotations

import numpy as np

from blackbox.multiobjective import (
    INFEASIBLE,
    ObjectiveSpec,
    SideColumn,
    choose,
    pareto_mask,
    scalarise,
)

SPEC = ObjectiveSpec(
    "acc",
    (
        SideColumn("kl", 0, bound=0.2, select_bound=0.1),
        SideColumn("drop:rte", 1, bound=1.0),
    ),
)


def test_selection_rule_best_score_within_every_bound() -> None:
    values = np.array([0.90, 0.80, 0.75, 0.75, 0.60])
    extra = np.array(
        [
            [0.50, 0.0],  # best score, KL too high
            [0.05, 3.0],  # guard drop too high
            [0.08, 0.0],  # feasible
            [0.02, 0.0],  # feasible, same score, smaller side effects: chosen
            [0.01, 0.0],  # feasible, lower score
        ]
    )
    assert choose(values, extra, SPEC) == 3
    # the selection bound (0.1) is tighter than the search bound (0.2)
    extra[3, 0] = 0.15
    assert choose(values, extra, SPEC) == 2


def test_selection_without_feasible_member_takes_least_violation() -> None:
    values = np.array([0.9, 0.8, np.nan])
    extra = np.array([[0.4, 0.0], [0.12, 0.0], [0.0, 0.0]])
    assert choose(values, extra, SPEC) == 1
    assert choose(np.array([np.nan]), np.zeros((1, 2)), SPEC) is None


def test_scalarise_puts_every_feasible_above_every_infeasible() -> None:
    values = np.array([0.1, 0.9, 0.95, 0.5])
    extra = np.array([[0.0, 0.0], [0.3, 0.0], [0.6, 0.0], [np.nan, 0.0]])
    s = scalarise(values, extra, SPEC)
    assert s[0] == 0.1 and s[1] < INFEASIBLE + 1 and s[2] < s[1] < s[0]
    assert s[3] < INFEASIBLE  # an unmeasured bounded column counts as violated
    weighted = ObjectiveSpec("acc", (SideColumn("kl", 0, weight=2.0),))
    np.testing.assert_allclose(scalarise(values[:2], extra[:2], weighted), [0.1, 0.3])


def test_pareto_mask_mixed_directions() -> None:
    pts = np.array([[0.9, 0.5], [0.8, 0.1], [0.7, 0.2], [0.8, 0.1], [np.nan, 0.0]])
    mask = pareto_mask(pts, ["maximize", "minimize"])
    assert mask.tolist() == [True, True, False, True, False]
