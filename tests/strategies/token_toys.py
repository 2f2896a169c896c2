"""A token search problem with a closed form (no model), shared by the EPO and GA tests: the
toy space and objective of :data:`blackbox.testing.strategies.TOKENS`."""

from __future__ import annotations

import numpy as np

from blackbox.api import Problem
from blackbox.testing.strategies import LinearObjective, LinearSpace

__all__ = ["LinearObjective", "LinearSpace", "random_search", "run"]


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
