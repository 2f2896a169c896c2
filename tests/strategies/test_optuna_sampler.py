"""Optuna samplers: conformance per sampler, distributions, failed trials, errors."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from strategy_conformance import BOX, Factory, StrategyConformance, neg_sphere

from blackbox.strategies.optuna_sampler import SAMPLERS, OptunaSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _factory(sampler: str) -> Factory:
    return lambda box, seed: OptunaSampler(box, seed=seed, population=8, sampler=sampler)


class TestOptunaConformance(StrategyConformance):
    @pytest.fixture(params=["tpe", "cmaes", "nsga2"])
    def make(self, request: pytest.FixtureRequest) -> Factory:
        return _factory(request.param)


class TestOptunaGPConformance(StrategyConformance):
    budget = 32  # the GP refits every trial: a short race, still half random search's regret
    steps = 2

    @pytest.fixture
    def make(self) -> Factory:
        return _factory("gp")


class TestOptunaRandomConformance(StrategyConformance):
    beats_random = False

    @pytest.fixture(params=["random", "qmc"])
    def make(self, request: pytest.FixtureRequest) -> Factory:
        return _factory(request.param)


def test_distributions_follow_the_box() -> None:
    strategy = OptunaSampler(BOX, seed=0, sampler="TPE")  # case-insensitive
    assert list(strategy.distributions) == list(BOX.names)
    assert strategy.distributions["i0"] == IntDistribution(-5, 5)
    assert strategy.distributions["c1"] == FloatDistribution(-2.0, 2.0)
    assert isinstance(strategy.sampler, optuna.samplers.TPESampler)


def test_trials_record_values_and_failures() -> None:
    strategy = OptunaSampler(BOX, seed=0, sampler="random")
    x = strategy.ask(4)
    values = neg_sphere(x)
    values[1] = np.nan
    values[2] = -np.inf
    strategy.tell(x, values)
    trials = strategy.study.get_trials()
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert trials[3].value == pytest.approx(values[3])
    np.testing.assert_array_equal([trials[0].params[n] for n in BOX.names], x[0])
    assert strategy.study.best_value == pytest.approx(max(values[0], values[3]))


def test_tell_must_follow_ask_order() -> None:
    strategy = OptunaSampler(BOX, seed=0, sampler="random")
    x = strategy.ask(4)
    with pytest.raises(ValueError, match="ask order"):
        strategy.tell(x[::-1], neg_sphere(x))
    strategy.tell(x[:2], neg_sphere(x[:2]))
    with pytest.raises(ValueError, match="only 2 pending"):
        strategy.tell(x, neg_sphere(x))


def test_unknown_sampler_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="optuna.sampler") as info:
        OptunaSampler(BOX, sampler="bayes")
    assert all(name in str(info.value) for name in SAMPLERS)
