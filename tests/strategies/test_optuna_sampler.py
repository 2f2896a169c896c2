"""Optuna samplers: conformance per sampler, distributions, failed trials, errors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from blackbox.strategies.optuna_sampler import SAMPLERS, OptunaSampler
from blackbox.testing.strategies import BOX, Factory, StrategyConformance, neg_sphere, run

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _factory(sampler: str) -> Factory:
    return lambda box, seed: OptunaSampler(box, seed=seed, population=8, sampler=sampler)


class TestOptunaModelBasedConformance(StrategyConformance):
    component = "optuna"
    budget = 96  # both are ~100x better than random search by then; TPE slows with trials

    @pytest.fixture(params=["tpe", "cmaes"])
    def make(self, request: pytest.FixtureRequest) -> Factory:
        return _factory(request.param)


class TestOptunaNSGA2Conformance(StrategyConformance):
    component = "optuna"

    @pytest.fixture
    def make(self) -> Factory:
        return _factory("nsga2")


class TestOptunaGPConformance(StrategyConformance):
    """GP: 3 rounds of 4 reach past its 10 random startup trials; too slow to race random over
    the default budget, so it only has to match random search over 24 evaluations."""

    component = "optuna"
    beats_random = False
    budget = 24

    @pytest.fixture(autouse=True)
    def _one_torch_thread(self) -> Iterator[None]:
        # On a busy 2-core machine the GP's small torch ops run ~8x slower with 2 threads.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    @pytest.fixture
    def make(self) -> Factory:
        return lambda box, seed: OptunaSampler(box, seed=seed, population=4, sampler="gp")

    def test_gp_trials_are_proposed_by_the_gp(self, make: Factory) -> None:
        strategy = make(BOX, 0)
        run(strategy, 12)
        assert len(strategy.study.get_trials()) == 12 > strategy.sampler._n_startup_trials


class TestOptunaRandomConformance(StrategyConformance):
    component = "optuna"
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
