"""A token search problem with a closed form (no model), shared by the EPO and GA tests."""

from __future__ import annotations

import numpy as np

from blackbox.api import Evaluation, Problem, TokenGradients
from blackbox.strategies.base import Box


class LinearSpace:
    """n positions over A tokens; allowed ids are 0..A-1 (no model)."""

    def __init__(self, n: int = 6, a: int = 200) -> None:
        self.allowed_ids = np.arange(a)
        self.box = Box(np.zeros(n), np.full(n, a - 1.0), np.ones(n, dtype=bool))

    def decode(self, x):
        return [tuple(int(v) for v in row) for row in np.asarray(x)]

    def intervention(self, cands):
        return list(cands)  # the toy objective reads the id tuples themselves


class LinearObjective:
    """f(t) = sum_i W[i, t_i]; xentropy(t) = mean_i C[t_i] (closed form, exact gradients)."""

    extra_names = ("xentropy",)

    def __init__(self, n: int = 6, a: int = 200, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(n, a))
        self.c = rng.uniform(0, 5, size=a)

    def _fx(self, ids):
        ids = np.asarray(ids)
        f = self.w[np.arange(ids.shape[1]), ids].sum(1)
        return f, self.c[ids].mean(1)

    def evaluate(self, cands, split="search", limit=None):
        f, c = self._fx(np.array(cands))
        return Evaluation(values=f, extra=c[:, None], cost=float(len(cands)))

    def token_gradients(self, ids, lam=0.0):
        ids = np.asarray(ids)
        b, n = ids.shape
        lam = np.broadcast_to(np.asarray(lam, dtype=float), (b,))
        grad = self.w[None] - lam[:, None, None] * self.c[None, None, :] / n
        f, c = self._fx(ids)
        logits = np.zeros((b, n, self.w.shape[1]))
        return TokenGradients(grad, f, c, logits, cost=3.0 * b)


def run(strategy, space, obj, budget):
    spent = 0.0
    strategy.bind(Problem(space, obj))
    while spent < budget:
        x = strategy.ask()
        ev = obj.evaluate(space.decode(x))
        strategy.tell(x, ev.values, extra=ev.extra)
        spent += ev.cost + strategy.pop_extra_cost()
    return strategy.best_value, spent


def random_search(space, obj, budget, seed):
    rng = np.random.default_rng(seed)
    x = space.box.sample(int(budget), rng)
    return float(obj.evaluate(space.decode(x)).values.max())
