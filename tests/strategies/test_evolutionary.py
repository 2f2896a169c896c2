"""Nevergrad strategy: conformance for a few registry optimizers, bookkeeping, errors."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

from blackbox.strategies.base import Box
from blackbox.strategies.evolutionary import Nevergrad, private_global_numpy_rng
from blackbox.testing.strategies import BOX, Factory, StrategyConformance, neg_sphere


class TestNevergradConformance(StrategyConformance):
    component = "nevergrad"

    # CMA: draws through pycma from numpy's global RNG; TwoPointsDE: population-based;
    # DiscreteOnePlusOne: mutation-based, the usual pick for integer spaces.
    @pytest.fixture(params=["CMA", "TwoPointsDE", "DiscreteOnePlusOne"])
    def make(self, request: pytest.FixtureRequest) -> Factory:
        return lambda box, seed: Nevergrad(
            box, seed=seed, population=8, optimizer=request.param, budget=self.budget
        )


def test_default_ngopt_runs_without_a_budget() -> None:
    ng_opt = Nevergrad(BOX, seed=0)
    assert ng_opt.config.optimizer == "NGOpt" and ng_opt.budget == 1000
    x = ng_opt.ask()
    ng_opt.tell(x, neg_sphere(x))
    assert ng_opt.ask().shape == (8, BOX.dim)


def test_unknown_optimizer_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="nevergrad.optimizer") as info:
        Nevergrad(BOX, optimizer="cma")
    assert "'CMA'" in str(info.value) and "\n" not in str(info.value)


# nevergrad's RecastOptimizer.__del__ trips over the half-built optimizer it rejected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sequential_optimizer_with_workers_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'NelderMead' with num_workers=population=8"):
        Nevergrad(BOX, optimizer="NelderMead", population=8)
    gc.collect()
    Nevergrad(BOX, optimizer="NelderMead", population=1).ask()


def test_tell_in_ask_order_in_parts() -> None:
    strategy = Nevergrad(BOX, seed=0, optimizer="TwoPointsDE")
    x = strategy.ask(8)
    assert len(strategy._pending) == 8
    strategy.tell(x[:3], neg_sphere(x[:3]))
    strategy.tell(x[3:], neg_sphere(x[3:]))
    assert strategy._pending == [] and strategy.optimizer.num_tell == 8


def test_tell_out_of_order_or_unasked_is_rejected() -> None:
    strategy = Nevergrad(BOX, seed=0, optimizer="TwoPointsDE")
    x = strategy.ask(4)
    with pytest.raises(ValueError, match="ask order"):
        strategy.tell(x[::-1], neg_sphere(x))
    with pytest.raises(ValueError, match="pending"):
        strategy.tell(np.concatenate([x, x]), np.zeros(8))


def test_values_are_negated_losses() -> None:
    strategy = Nevergrad(BOX, seed=0, optimizer="OnePlusOne", population=1)
    x = strategy.ask(1)
    strategy.tell(x, np.array([3.5]))
    (candidate,) = strategy.optimizer.archive.values()
    assert candidate.mean == pytest.approx(-3.5)


def test_non_finite_values_are_told_without_clipping_warnings() -> None:
    strategy = Nevergrad(BOX, seed=0, optimizer="CMA")
    x = strategy.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy.tell(x, np.where(np.arange(8) % 2 == 0, np.inf * -1, neg_sphere(x)))


def test_zero_width_dims_are_held_fixed() -> None:
    box = Box(np.array([0.0, 1.5, -1.0]), np.array([3.0, 1.5, 1.0]), np.array([True, False, False]))
    x = Nevergrad(box, seed=0, optimizer="CMA").ask()
    np.testing.assert_array_equal(x[:, 1], 1.5)
    assert np.ptp(x[:, 2]) > 0


def test_private_global_numpy_rng_restores_the_callers_stream() -> None:
    state = {"np": np.random.RandomState(1).get_state()}
    np.random.seed(5)
    with private_global_numpy_rng(state):
        first = np.random.random()
    outside = np.random.random()
    np.random.seed(5)
    assert np.random.random() == outside  # the caller's stream was not consumed
    with private_global_numpy_rng(state):
        second = np.random.random()
    assert first == np.random.RandomState(1).random() and second != first
