"""Random search: the conformance suite plus uniformity over the box."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox.strategies.base import Box
from blackbox.strategies.random_search import RandomSearch
from blackbox.testing.strategies import BOX, Factory, StrategyConformance


class TestRandomSearchConformance(StrategyConformance):
    component = "random"
    beats_random = False

    @pytest.fixture
    def make(self) -> Factory:
        return lambda box, seed: RandomSearch(box, seed=seed, population=8)


def test_integer_dims_uniform_over_whole_numbers_including_bounds() -> None:
    box = Box(np.array([0.0, -1.0]), np.array([2.0, 1.0]), np.array([True, False]))
    x = RandomSearch(box, seed=0).ask(3000)
    counts = np.bincount(x[:, 0].astype(int), minlength=3)
    assert counts.sum() == 3000
    assert np.all(np.abs(counts - 1000) < 120), counts  # each whole number ~1/3
    assert abs(x[:, 1].mean()) < 0.06 and x[:, 1].min() >= -1 and x[:, 1].max() <= 1


def test_ask_size_follows_n_and_rejects_settings() -> None:
    strategy = RandomSearch(BOX, seed=0, population=5)
    assert strategy.ask().shape == (5, BOX.dim)
    assert strategy.ask(11).shape == (11, BOX.dim)
    with pytest.raises(TypeError):
        RandomSearch(BOX, seed=0, sampler="tpe")
