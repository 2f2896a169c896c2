"""Conformance suite every strategy inherits (as Optuna's sampler tests do).

Subclass :class:`StrategyConformance` in a ``Test*`` class of your tests and supply one
fixture, ``make``: a factory ``(box, seed) -> Strategy`` (the box is the bench's):

    import pytest
    from blackbox.testing.strategies import StrategyConformance

    class TestMyStrategy(StrategyConformance):
        component = "my_strategy"  # its registry name (checked: ``make`` builds that class)
        @pytest.fixture
        def make(self):
            return lambda box, seed: MyStrategy(box, seed=seed, population=8)

Class attributes tune the suite:

- ``bench``: the closed-form problem the strategy runs on (a :class:`Bench`): :data:`SPHERE`
  (default: 2 integer + 2 continuous dimensions), :data:`TOKENS` (token ids with one-hot
  gradients: strategies with ``needs_vocabulary``) or :data:`SOFT` (soft-prompt coordinates
  with a differentiable loss: strategies with ``needs_continuous`` gradient steps).  A strategy
  with ``bind(problem)`` is bound to the bench's problem after ``make``.
- ``budget``: forward-pass equivalents of the race against random search (an evaluation costs
  one; gradients a strategy charges through ``pop_extra_cost()`` count too).
- ``beats_random``: False for strategies that are random by design or too slow to warm up
  within ``budget``: they must then merely match random search.
- ``component``: the registry name of what ``make`` builds (``None``: a component that is not
  registered; nothing to check).  ``tests/test_conformance_coverage.py`` reads it to check that
  every registered strategy has a conformance test.

Every ask is ``(n, dim)`` rows of the bench's box; values told are ``(n,)``, higher is better.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from blackbox.api import Evaluation, Problem, TokenGradients
from blackbox.strategies.base import Box, Strategy
from blackbox.strategies.random_search import RandomSearch

Factory = Callable[[Box, int], Strategy]
Scores = tuple[np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class Bench:
    """A closed-form test problem for strategies.

    Attributes:
        name: shown in failures.
        box: the box asks come from.
        score: ``x`` ``(n, dim) -> (values (n,), extra (n, k) or None)``; ``extra`` column 0
            is the fluency cost token strategies read (``tell(x, values, extra)``).
        maximum: the largest value in the box (a strategy's regret is ``maximum - best``).
        problem: builds what ``bind`` receives (a :class:`~blackbox.api.Problem` over a toy
            space and objective), or ``None`` for array-level strategies.
    """

    name: str
    box: Box
    score: Callable[[np.ndarray], Scores]
    maximum: float
    problem: Callable[[], Any] | None = None


# -- the shifted sphere: every array-level strategy ------------------------------------------

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


SPHERE = Bench("sphere", BOX, lambda x: (neg_sphere(x), None), 0.0)


# -- token prompts: a linear objective with exact one-hot gradients ---------------------------


class LinearSpace:
    """``n`` positions over ``a`` tokens whose allowed ids are ``0..a-1`` (no model)."""

    def __init__(self, n: int = 6, a: int = 200) -> None:
        self.allowed_ids = np.arange(a)
        self.box = Box(np.zeros(n), np.full(n, a - 1.0), np.ones(n, dtype=bool))

    def decode(self, x: np.ndarray) -> list[tuple[int, ...]]:
        return [tuple(int(v) for v in row) for row in np.asarray(x)]

    def intervention(self, cands: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return list(cands)  # the toy objective reads the id tuples themselves


class LinearObjective:
    """``f(t) = sum_i W[i, t_i]``; ``xentropy(t) = mean_i C[t_i]`` (closed form, exact
    gradients), with ``W`` ``(n, a)`` and ``C`` ``(a,)`` drawn from ``seed``."""

    extra_names = ("xentropy",)

    def __init__(self, n: int = 6, a: int = 200, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(n, a))
        self.c = rng.uniform(0, 5, size=a)

    @property
    def maximum(self) -> float:
        return float(self.w.max(1).sum())

    def _fx(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids)
        f = self.w[np.arange(ids.shape[1]), ids].sum(1)
        return f, self.c[ids].mean(1)

    def evaluate(self, cands: Any, split: str = "search", limit: Any = None) -> Evaluation:
        f, c = self._fx(np.array(cands))
        return Evaluation(values=f, extra=c[:, None], cost=float(len(cands)))

    def gradient_cost(self, idx: Any = None, split: str = "search") -> float:
        return 3.0  # per prompt: a forward and a backward

    def token_gradients(self, ids: Any, lam: Any = 0.0) -> TokenGradients:
        """Gradients ``(B, n, a)`` of ``f - lam * xentropy`` for ``ids`` ``(B, n)``."""
        ids = np.asarray(ids)
        b, n = ids.shape
        lam = np.broadcast_to(np.asarray(lam, dtype=float), (b,))
        grad = self.w[None] - lam[:, None, None] * self.c[None, None, :] / n
        f, c = self._fx(ids)
        logits = np.zeros((b, n, self.w.shape[1]))
        return TokenGradients(grad, f, c, logits, cost=3.0 * b)


_LINEAR_SPACE, _LINEAR = LinearSpace(), LinearObjective()


def _linear_scores(x: np.ndarray) -> Scores:
    ev = _LINEAR.evaluate(_LINEAR_SPACE.decode(x))
    return ev.values, ev.extra


TOKENS = Bench(
    "tokens",
    _LINEAR_SPACE.box,
    _linear_scores,
    _LINEAR.maximum,
    lambda: Problem(_LINEAR_SPACE, _LINEAR),
)


# -- soft prompts: a differentiable quadratic over documents ----------------------------------


class QuadraticSoftSpace:
    """A soft prompt of ``n_tokens x d`` coordinates in ``[-bound, bound]`` (no model):
    ``embeddings(z)`` is ``z`` ``(n_tokens * d,)`` reshaped to ``(n_tokens, d)``."""

    def __init__(self, n_tokens: int = 2, d: int = 4, bound: float = 3.0) -> None:
        self.shape = (n_tokens, d)
        dim = n_tokens * d
        self.box = Box(np.full(dim, -bound), np.full(dim, bound), np.zeros(dim, dtype=bool))

    def embeddings(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(self.shape)

    def decode(self, x: np.ndarray) -> list[tuple[float, ...]]:
        return [tuple(float(v) for v in row) for row in np.asarray(x)]

    def intervention(self, cands: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
        return list(cands)


class QuadraticSoftObjective:
    """``documents`` targets ``t_k`` ``(n_tokens, d)``; a prompt ``e``'s loss on document ``k``
    is ``||e - t_k||^2`` and its value minus the mean loss, largest at the targets' mean.

    An evaluation costs 1 (every document once); a gradient over ``m`` documents costs
    ``3 m / documents`` (a backward counts two forward passes)."""

    def __init__(self, shape: tuple[int, int] = (2, 4), documents: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.shape = shape
        self.targets = torch.tensor(rng.normal(1.0, 1.0, size=(documents, *shape)).astype("f4"))

    @property
    def maximum(self) -> float:
        centre = self.targets.mean(0, keepdim=True)
        return float(-((centre - self.targets) ** 2).sum((1, 2)).mean())

    def n_examples(self, split: str = "search") -> int:
        return len(self.targets)

    def loss(self, embeds: torch.Tensor, split: str = "search", idx: Any = None) -> torch.Tensor:
        """``(C,)`` mean loss of ``embeds`` ``(C, n_tokens, d)`` over documents ``idx``."""
        t = self.targets if idx is None else self.targets[list(idx)]
        return ((embeds[:, None] - t[None]) ** 2).sum((2, 3)).mean(1)

    def gradient_cost(self, idx: Any = None, split: str = "search") -> float:
        m = len(self.targets) if idx is None else len(idx)
        return 3.0 * m / len(self.targets)

    def evaluate(self, cands: Any, split: str = "search", limit: Any = None) -> Evaluation:
        e = torch.tensor(np.asarray(cands, dtype="f4")).reshape(-1, *self.shape)
        with torch.no_grad():
            values = -self.loss(e).double().numpy()
        return Evaluation(values=values, cost=float(len(values)))


_SOFT_SPACE, _SOFT = QuadraticSoftSpace(), QuadraticSoftObjective()


def _soft_scores(x: np.ndarray) -> Scores:
    return _SOFT.evaluate(_SOFT_SPACE.decode(x)).values, None


SOFT = Bench(
    "soft", _SOFT_SPACE.box, _soft_scores, _SOFT.maximum, lambda: Problem(_SOFT_SPACE, _SOFT)
)


# -- running a strategy on a bench -------------------------------------------------------------


def bound(strategy: Strategy, bench: Bench) -> Strategy:
    """``strategy``, bound to the bench's problem if it takes one (``bind``)."""
    if bench.problem is not None and hasattr(strategy, "bind"):
        strategy.bind(bench.problem())
    return strategy


def run(
    strategy: Strategy,
    evaluations: float,
    reseed_globals: bool = False,
    bench: Bench = SPHERE,
    charge_extra: bool = False,
) -> list[np.ndarray]:
    """Ask/tell ``bench`` until ``evaluations`` candidates are told (with ``charge_extra``:
    until that many forward-pass equivalents are spent, the strategy's own gradient work from
    ``pop_extra_cost()`` included); returns every ``(n, dim)`` ask."""
    asks: list[np.ndarray] = []
    pop = getattr(strategy, "pop_extra_cost", None)
    extra = 0.0
    while strategy.n_told + (extra if charge_extra else 0.0) < evaluations:
        if reseed_globals:  # what lm-eval's simple_evaluate does on every call
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
        x = strategy.ask()
        asks.append(x)
        values, side = bench.score(x)
        strategy.tell(x, values, extra=side)
        if pop is not None:
            extra += float(pop())
    return asks


def best_after(make: Factory, seed: int, evaluations: float, bench: Bench = SPHERE) -> float:
    """The best value a strategy finds on ``bench`` within ``evaluations`` forward-pass
    equivalents (gradients included)."""
    strategy = bound(make(bench.box, seed), bench)
    run(strategy, evaluations, bench=bench, charge_extra=True)
    return strategy.best_value


class StrategyConformance:
    """Properties every strategy must have; subclasses provide the ``make`` fixture."""

    component: ClassVar[str | None] = None
    bench: ClassVar[Bench] = SPHERE
    budget: int = 200
    seeds: tuple[int, ...] = (0, 1, 2)
    beats_random: bool = True
    steps: int = 3  # ask/tell rounds in the cheap property tests

    @pytest.fixture
    def make(self) -> Factory:
        raise NotImplementedError("a conformance subclass must supply the `make` fixture")

    def build(self, make: Factory, seed: int) -> Strategy:
        """``make(box, seed)`` on the bench's box, bound to the bench's problem if it binds."""
        return bound(make(self.bench.box, seed), self.bench)

    def rounds(self, strategy: Strategy) -> int:
        return self.steps * strategy.batch_size

    def test_builds_the_registered_component(self, make: Factory) -> None:
        """``make`` builds the class registered as ``component`` (when one is declared)."""
        if self.component is None:
            return
        from blackbox.strategies import STRATEGIES

        strategy = self.build(make, 0)
        assert type(strategy) is STRATEGIES.get(self.component), (type(strategy), self.component)

    def test_ask_shape_and_bounds(self, make: Factory) -> None:
        strategy = self.build(make, 0)
        box = self.bench.box
        for x in run(strategy, self.rounds(strategy), bench=self.bench):
            assert x.shape == (strategy.batch_size, box.dim)
            assert np.all(np.isfinite(x))
            assert np.all(x >= box.lower) and np.all(x <= box.upper)

    def test_integer_dims_are_whole_numbers(self, make: Factory) -> None:
        strategy = self.build(make, 0)
        for x in run(strategy, self.rounds(strategy), bench=self.bench):
            ints = x[:, self.bench.box.integer]
            np.testing.assert_array_equal(ints, np.rint(ints))

    def test_same_seed_same_asks(self, make: Factory) -> None:
        n = self.rounds(self.build(make, 5))
        a = run(self.build(make, 5), n, bench=self.bench)
        b = run(self.build(make, 5), n, bench=self.bench)
        np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))

    def test_different_seed_different_asks(self, make: Factory) -> None:
        a = self.build(make, 1).ask()
        b = self.build(make, 2).ask()
        assert not np.array_equal(a, b)

    def test_global_reseeding_changes_nothing(self, make: Factory) -> None:
        """Re-seeding random/numpy/torch every round neither repeats asks nor changes them."""
        n = self.rounds(self.build(make, 3))
        plain = run(self.build(make, 3), n, bench=self.bench)
        reseeded = run(self.build(make, 3), n, reseed_globals=True, bench=self.bench)
        np.testing.assert_array_equal(np.concatenate(plain), np.concatenate(reseeded))
        for earlier, later in zip(reseeded, reseeded[1:]):
            assert not np.array_equal(earlier, later)

    def test_leaves_global_numpy_rng_alone(self, make: Factory) -> None:
        strategy = self.build(make, 0)
        np.random.seed(123)
        expected = np.random.random(4)
        np.random.seed(123)
        run(strategy, self.rounds(strategy), bench=self.bench)
        np.testing.assert_array_equal(np.random.random(4), expected)

    def test_best_tracks_the_maximum_told(self, make: Factory) -> None:
        strategy = self.build(make, 0)
        told_x, told_v = [], []
        for step in range(self.steps):
            x = strategy.ask()
            values, extra = self.bench.score(x)
            values = values + step  # later rounds are better: best must move
            strategy.tell(x, values, extra=extra)
            told_x.append(x)
            told_v.append(values)
        xs, vs = np.concatenate(told_x), np.concatenate(told_v)
        best_x, best_value = strategy.best
        assert best_value == vs.max()
        np.testing.assert_array_equal(best_x, xs[vs.argmax()])

    def test_non_finite_values_are_survivable(self, make: Factory) -> None:
        strategy = self.build(make, 0)
        x = strategy.ask()
        values, extra = self.bench.score(x)
        values = values.copy()
        values[::2] = np.nan
        if len(values) > 1:
            values[1] = -np.inf
        strategy.tell(x, values, extra=extra)
        for _ in range(2):
            x = strategy.ask()
            assert np.all(np.isfinite(x))
            strategy.tell(x, *self.bench.score(x))
        finite = values[np.isfinite(values)]
        if finite.size:
            assert strategy.best_value >= finite.max()

    def test_races_random_search(self, make: Factory) -> None:
        """Mean regret over a few seeds, same budget in forward-pass equivalents: at most half
        of random search's, or (for ``beats_random = False``) no worse than 1.5 times it."""
        bench = self.bench
        regret = bench.maximum - np.mean(
            [best_after(make, s, self.budget, bench) for s in self.seeds]
        )
        random_regret = bench.maximum - np.mean(
            [best_after(lambda b, s: RandomSearch(b, s), s, self.budget, bench) for s in self.seeds]
        )
        assert random_regret > 0.1  # the test problem is not trivial for random search
        factor = 0.5 if self.beats_random else 1.5
        assert regret < factor * random_regret, (bench.name, regret, random_regret)
