from __future__ import annotations

import numpy as np

from blackbox.multiobjective import pareto_mask
from blackbox.pareto import (
    FLUENCY,
    FrontPoint,
    front_table,
    plot_front,
    select_per_weight,
    update_front,
)


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def test_fluency_front_small_case() -> None:
    v = np.array([1.0, 2.0, 3.0, 2.0, np.nan])
    c = np.array([1.0, 2.0, 3.0, 3.0, 0.0])
    mask = pareto_mask(np.column_stack([v, c]), FLUENCY)
    assert mask.tolist() == [True, True, True, False, False]


def test_front_is_non_dominated_and_complete_random() -> None:
    rng = np.random.default_rng(0)
    front: list[FrontPoint] = []
    allpts: list[FrontPoint] = []
    for step in range(20):
        new = [
            FrontPoint((step, i), float(rng.normal()), float(rng.uniform(0, 5))) for i in range(10)
        ]
        allpts += new
        front = update_front(front, new)
    pts = [(p.value, p.xentropy) for p in front]
    for a in pts:
        assert not any(_dominates(b, a) for b in pts)
    # every point left out is dominated by some front point
    on = {p.x for p in front}
    for p in allpts:
        if p.x not in on:
            assert any(_dominates(q, (p.value, p.xentropy)) for q in pts)
    assert [p.xentropy for p in front] == sorted(p.xentropy for p in front)


def test_select_per_weight_with_replacement() -> None:
    v = np.array([1.0, 5.0, 3.0, -np.inf])
    c = np.array([1.0, 9.0, 2.0, 0.0])
    pick = select_per_weight(v, c, np.array([0.0, 0.1, 1.0, 10.0]))
    # lambda 0: best value; 0.1: 5-0.9=4.1; 1: max(0, -4, 1) -> index 2; 10: -9, -85, -17 -> 0
    assert pick.tolist() == [1, 1, 2, 0]


def test_table_and_plot(tmp_path) -> None:
    front = [FrontPoint((1, 2), 1.0, 2.0), FrontPoint((3,), 2.0, 3.0)]
    table = front_table(front, text=lambda x: "-".join(map(str, x)))
    assert "'1-2'" in table and table.count("\n") == 2
    out = plot_front(front, tmp_path / "front.png", text=str)
    assert out.stat().st_size > 1000
