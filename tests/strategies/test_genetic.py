"""The token GA: its pure operators, races against random search, the conformance suite."""

from __future__ import annotations

import numpy as np
import pytest
from token_toys import LinearObjective, LinearSpace, random_search, run

from blackbox.strategies.genetic import TokenGA, tournament, uniform_crossover
from blackbox.testing.strategies import TOKENS, Factory, StrategyConformance


class TestTokenGAConformance(StrategyConformance):
    component = "token_ga"
    bench = TOKENS
    budget = 800

    @pytest.fixture(params=["random_replace", "gradient_topk"])
    def make(self, request: pytest.FixtureRequest) -> Factory:
        settings = {}
        if request.param == "gradient_topk":
            settings = {
                "mutation": {"gradient_topk": 1.0},
                "mutation_settings": {"gradient_topk": {"k": 4}},
            }
        return lambda box, seed: TokenGA(box, seed=seed, population=16, **settings)


def test_tournament_and_crossover_pure() -> None:
    rng = np.random.default_rng(0)
    fit = np.array([0.0, 10.0, 5.0])
    wins = tournament(fit, 200, 3, rng)
    assert np.bincount(wins, minlength=3)[1] > 100
    assert (tournament(fit, 50, 50, rng) == 1).all()
    a, b = np.zeros((5, 8), int), np.ones((5, 8), int)
    c = uniform_crossover(a, b, rng)
    assert set(np.unique(c)) <= {0, 1} and 0 < c.mean() < 1


def test_random_mutation_ga_beats_random_search() -> None:
    space, obj = LinearSpace(), LinearObjective()
    ga = TokenGA(space.box, seed=0, population=16)
    assert not ga.uses_gradients
    best, spent = run(ga, space, obj, 800)
    assert best > random_search(space, obj, spent, seed=0) + 1.0


def test_gradient_mutation_is_one_config_change() -> None:
    space, obj = LinearSpace(), LinearObjective()
    ga = TokenGA(
        space.box,
        seed=0,
        population=8,
        mutation={"gradient_topk": 1.0},
        mutation_settings={"gradient_topk": {"k": 4}},
    )
    assert ga.uses_gradients
    best, spent = run(ga, space, obj, 400)
    rnd, _ = run(TokenGA(space.box, seed=0, population=8), space, obj, spent)
    assert best > rnd
