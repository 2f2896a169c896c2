from __future__ import annotations

import numpy as np

from blackbox.api import Evaluation, Problem, TokenGradients
from blackbox.search_spaces.tokens.attribution import substitution_grid, token_attribution
from blackbox.strategies.base import Box


def test_substitution_grid() -> None:
    grid = substitution_grid(np.array([1, 2]), np.array([[7, 8], [9, 10]]))
    assert grid.tolist() == [[7, 2], [8, 2], [1, 9], [1, 10]]


class _Space:
    allowed_ids = np.arange(20)
    box = Box(np.zeros(3), np.full(3, 19.0), np.ones(3, dtype=bool))

    def decode(self, x):
        return [tuple(int(v) for v in r) for r in np.asarray(x)]

    def intervention(self, cands):
        return list(cands)


class _Linear:
    def __init__(self) -> None:
        self.w = np.random.default_rng(0).normal(size=(3, 20))

    def evaluate(self, cands, split="search", limit=None):
        ids = np.array(cands)
        return Evaluation(self.w[np.arange(3), ids].sum(1), cost=float(len(ids)))

    def token_gradients(self, ids, lam=0.0):
        f = self.evaluate([tuple(r) for r in ids]).values
        return TokenGradients(self.w[None], f, np.zeros(1), np.zeros((1, 3, 20)), 3.0)


def test_attribution_exact_for_linear_objective() -> None:
    obj = _Linear()
    x = np.array([0, 5, 9])
    rows, cost = token_attribution(Problem(_Space(), obj), x, k=20)
    assert cost == 3.0 + 60.0
    for r in rows:
        others = np.delete(obj.w[r.position], x[r.position])
        assert np.isclose(r.drop, obj.w[r.position, x[r.position]] - others.max())
        assert r.substitute != x[r.position]
