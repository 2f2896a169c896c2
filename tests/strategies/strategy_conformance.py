"""Conformance suite every array-level strategy inherits (as Optuna's sampler tests do).

Subclass :class:`StrategyConformance` in a ``Test*`` class and supply one fixture, ``make``:
a factory ``(box, seed) -> Strategy``.  Class attributes tune the suite: ``budget`` (evaluations
for the race against random search), ``beats_random`` (False for strategies that are random by
design or too slow to warm up within ``budget``: they must then merely match random search).

(Named ``strategy_conformance`` rather than ``conformance``: the tests folders have no
``__init__.py``, so this module is imported by its bare name and must not clash with another
folder's conformance module.)
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch

from blackbox.strategies.base import Box, Strategy
from blackbox.strategies.random_search import RandomSearch

Factory = Callable[[Box, int], Strategy]

# 2 integer + 2 continuous dims; the optimum (2, -3, 0.7, -1.1) is inside, off-centre.
BOX = Box(
    lower=np.array([-5.0, -5.0, -2.0, -2.0]),
    upper=np.array([5.0, 5.0, 2.0, 2.0]),
    integer=np.array([True, True, False, False]),
    names=("i0", "i1", "c0", "c1"),
)
OPTIMUM = np.array([2.0, -3.0, 0.7, -1.1])


def neg_sphere(x: np.ndarray) -> np.ndarray:
    """``(n, 4) -> (n,)`` shifted negative sphere, maximum 0 at ``OPTIMUM``."""
    return -np.sum((x - OPTIMUM) ** 2, axis=1)


def run(strategy: Strategy, evaluations: int, reseed_globals: bool = False) -> list[np.ndarray]:
    """Ask/tell ``neg_sphere`` until ``evaluations`` are spent; returns every ``(n, dim)`` ask."""
    asks = []
    while strategy.n_told < evaluations:
        if reseed_globals:  # what lm-eval's simple_evaluate does on every call
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
        x = strategy.ask()
        asks.append(x)
        strategy.tell(x, neg_sphere(x))
    return asks


def best_after(make: Factory, seed: int, evaluations: int) -> float:
    strategy = make(BOX, seed)
    run(strategy, evaluations)
    return strategy.best_value


class StrategyConformance:
    """Properties every strategy must have; subclasses provide the ``make`` fixture."""

    budget: int = 200
    seeds: tuple[int, ...] = (0, 1, 2)
    beats_random: bool = True
    steps: int = 3  # ask/tell rounds in the cheap property tests

    @pytest.fixture
    def make(self) -> Factory:
        raise NotImplementedError("a conformance subclass must supply the `make` fixture")

    def test_ask_shape_and_bounds(self, make: Factory) -> None:
        strategy = make(BOX, 0)
        for x in run(strategy, self.steps * strategy.batch_size):
            assert x.shape == (strategy.batch_size, BOX.dim)
            assert np.all(np.isfinite(x))
            assert np.all(x >= BOX.lower) and np.all(x <= BOX.upper)

    def test_integer_dims_are_whole_numbers(self, make: Factory) -> None:
        strategy = make(BOX, 0)
        for x in run(strategy, self.steps * strategy.batch_size):
            ints = x[:, BOX.integer]
            np.testing.assert_array_equal(ints, np.rint(ints))

    def test_same_seed_same_asks(self, make: Factory) -> None:
        a = run(make(BOX, 5), self.steps * make(BOX, 5).batch_size)
        b = run(make(BOX, 5), self.steps * make(BOX, 5).batch_size)
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))

    def test_different_seed_different_asks(self, make: Factory) -> None:
        a = make(BOX, 1).ask()
        b = make(BOX, 2).ask()
        assert not np.array_equal(a, b)

    def test_global_reseeding_changes_nothing(self, make: Factory) -> None:
        """Re-seeding random/numpy/torch every round neither repeats asks nor changes them."""
        n = self.steps * make(BOX, 3).batch_size
        plain = run(make(BOX, 3), n)
        reseeded = run(make(BOX, 3), n, reseed_globals=True)
        np.testing.assert_array_equal(np.concatenate(plain), np.concatenate(reseeded))
        for earlier, later in zip(reseeded, reseeded[1:]):
            assert not np.array_equal(earlier, later)

    def test_leaves_global_numpy_rng_alone(self, make: Factory) -> None:
        strategy = make(BOX, 0)
        np.random.seed(123)
        expected = np.random.random(4)
        np.random.seed(123)
        run(strategy, self.steps * strategy.batch_size)
        np.testing.assert_array_equal(np.random.random(4), expected)

    def test_best_tracks_the_maximum_told(self, make: Factory) -> None:
        strategy = make(BOX, 0)
        told_x, told_v = [], []
        for step in range(self.steps):
            x = strategy.ask()
            values = neg_sphere(x) + step  # later rounds are better: best must move
            strategy.tell(x, values)
            told_x.append(x)
            told_v.append(values)
        xs, vs = np.concatenate(told_x), np.concatenate(told_v)
        best_x, best_value = strategy.best
        assert best_value == vs.max()
        np.testing.assert_array_equal(best_x, xs[vs.argmax()])

    def test_non_finite_values_are_survivable(self, make: Factory) -> None:
        strategy = make(BOX, 0)
        x = strategy.ask()
        values = neg_sphere(x)
        values[::2] = np.nan
        values[1] = -np.inf
        strategy.tell(x, values)
        for _ in range(2):
            x = strategy.ask()
            assert np.all(np.isfinite(x))
            strategy.tell(x, neg_sphere(x))
        finite = values[np.isfinite(values)]
        assert strategy.best_value >= finite.max()

    def test_races_random_search(self, make: Factory) -> None:
        """Mean regret over a few seeds, same budget: at most half of random search's, or (for
        ``beats_random = False``) no worse than 1.5 times it."""
        regret = -np.mean([best_after(make, s, self.budget) for s in self.seeds])
        random_regret = -np.mean(
            [best_after(lambda b, s: RandomSearch(b, s), s, self.budget) for s in self.seeds]
        )
        assert random_regret > 0.1  # the test problem is not trivial for random search
        bound = 0.5 if self.beats_random else 1.5
        assert regret < bound * random_regret, (regret, random_regret)
