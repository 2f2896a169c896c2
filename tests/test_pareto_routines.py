"""One Pareto routine (:func:`blackbox.multiobjective.pareto_mask`) for every front.

The suite had three: ``pareto_mask(points, directions)``, EPO's fluency front
``blackbox.pareto.non_dominated(values, xentropy)`` and the report's
``aggregate.pareto_mask(primary, secondary, minimise_secondary)``.  The last two are kept here,
verbatim, as references: on random inputs full of ties, duplicates, NaN and infinities the one
routine gives exactly their masks.
"""

from __future__ import annotations

import numpy as np
import pytest

from blackbox.multiobjective import pareto_mask
from blackbox.pareto import FLUENCY, FrontPoint, update_front


def _old_non_dominated(values: np.ndarray, xentropy: np.ndarray) -> np.ndarray:
    """``blackbox.pareto.non_dominated`` as it was (EPO's front, finishing/tokens.py)."""
    v = np.asarray(values, dtype=float)
    c = np.asarray(xentropy, dtype=float)
    ok = np.isfinite(v) & np.isfinite(c)
    ge = (v[None, :] >= v[:, None]) & (c[None, :] <= c[:, None])  # [i, j]: j weakly better
    gt = (v[None, :] > v[:, None]) | (c[None, :] < c[:, None])
    dominated = (ge & gt & ok[None, :]).any(axis=1)
    return ok & ~dominated


def _old_report_mask(primary: np.ndarray, secondary: np.ndarray, minimise: bool) -> np.ndarray:
    """``blackbox.report.aggregate.pareto_mask`` as it was (report/compare.py's pareto.png)."""
    s = np.asarray(secondary, dtype=float)
    return _old_non_dominated(np.asarray(primary, dtype=float), s if minimise else -s)


def _brute(points: np.ndarray, directions: list[str]) -> np.ndarray:
    """The definition, one pair at a time: finite rows no finite row dominates."""
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    g = np.asarray(points, dtype=float) * sign
    ok = np.isfinite(g).all(1)
    out = np.zeros(len(g), bool)
    for i in range(len(g)):
        if ok[i]:
            out[i] = not any(
                ok[j] and (g[j] >= g[i]).all() and (g[j] > g[i]).any() for j in range(len(g))
            )
    return out


def _column(rng: np.random.Generator, n: int) -> np.ndarray:
    """Few distinct values (ties and duplicates), some NaN and infinities, some -0.0."""
    x = rng.integers(-3, 4, n).astype(float) / 2
    x[rng.random(n) < 0.3] = 0.0
    x[rng.random(n) < 0.1] = -0.0
    x[rng.random(n) < 0.1] = np.nan
    x[rng.random(n) < 0.05] = np.inf
    x[rng.random(n) < 0.05] = -np.inf
    return x


@pytest.mark.parametrize("seed", range(40))
def test_one_routine_gives_every_old_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (0, 1, 2, 3, 7, 25):
        v, c = _column(rng, n), _column(rng, n)
        if n and seed % 3 == 0:  # exact duplicate rows
            v[n // 2 :], c[n // 2 :] = v[: n - n // 2], c[: n - n // 2]
        pts = np.column_stack([v, c])
        fluency = pareto_mask(pts, FLUENCY)
        assert fluency.tolist() == _old_non_dominated(v, c).tolist()
        for minimise in (True, False):
            dirs = ["maximize", "minimize" if minimise else "maximize"]
            got = pareto_mask(pts, dirs)
            assert got.tolist() == _old_report_mask(v, c, minimise).tolist()
            assert got.tolist() == _brute(pts, dirs).tolist()
        assert pareto_mask(pts, FLUENCY).dtype == bool


@pytest.mark.parametrize("seed", range(10))
def test_mixed_directions_match_the_definition(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for k in (1, 2, 3, 4):
        pts = np.column_stack([_column(rng, 20) for _ in range(k)])
        dirs = [str(d) for d in rng.choice(["maximize", "minimize"], k)]
        assert pareto_mask(pts, dirs).tolist() == _brute(pts, dirs).tolist()


def test_update_front_keeps_its_order_and_first_of_each_prompt() -> None:
    pts = [
        FrontPoint((1,), 1.0, 2.0),
        FrontPoint((2,), 1.0, 2.0),  # a duplicate point under another prompt: kept
        FrontPoint((1,), 5.0, 0.0),  # the same prompt again: the first record wins
        FrontPoint((3,), 2.0, 3.0),
        FrontPoint((4,), np.nan, 0.0),
        FrontPoint((5,), 0.5, 2.5),
    ]
    front = update_front([], pts)
    assert [p.x for p in front] == [(1,), (2,), (3,)]
