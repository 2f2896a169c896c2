"""The strategy registry: names, settings schemas and one-line errors."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import pytest

from blackbox.strategies import (
    PSO,
    STRATEGIES,
    Adam,
    Nevergrad,
    OptunaSampler,
    RandomSearch,
    get_strategy_class,
    make_strategy,
    settings_fields,
)
from blackbox.strategies.base import Box, Strategy
from blackbox.strategies.epo import EPO, GCG
from blackbox.strategies.genetic import TokenGA
from blackbox.testing.strategies import BOX


def test_registry_names_match_classes() -> None:
    assert dict(STRATEGIES.items()) == {
        "pso": PSO,
        "nevergrad": Nevergrad,
        "optuna": OptunaSampler,
        "random": RandomSearch,
        "epo": EPO,
        "gcg": GCG,
        "token_ga": TokenGA,
        "adam": Adam,
    }
    for name, cls in STRATEGIES.items():
        assert cls.name == name
    for name in BOX_STRATEGIES:
        assert dataclasses.is_dataclass(STRATEGIES.get(name).settings_schema)


def test_token_strategies_list_their_settings() -> None:
    assert {"children", "lambda_min", "lambda_max", "restart_every"} <= set(settings_fields(EPO))
    assert set(settings_fields(GCG)) >= {"search_width", "topk", "n_replace"}
    assert "mutation" in settings_fields(TokenGA)
    with pytest.raises(ValueError, match=r"strategy 'gcg': unknown setting\(s\) \['width'\]"):
        make_strategy("gcg", BOX, width=3)


BOX_STRATEGIES = ["nevergrad", "optuna", "pso", "random"]  # the others need a token space


@pytest.mark.parametrize("name", BOX_STRATEGIES)
def test_make_strategy_builds_each_with_defaults(name: str) -> None:
    strategy = make_strategy(name, BOX, seed=4, population=6)
    assert isinstance(strategy, STRATEGIES.get(name))
    assert (strategy.seed, strategy.population) == (4, 6)
    assert strategy.config == STRATEGIES.get(name).settings_schema()
    assert strategy.ask().shape == (6, BOX.dim)


def test_settings_reach_the_strategy() -> None:
    pso = make_strategy("pso", BOX, population=5, topology="local", k=2, w=0.5)
    assert (pso.config.topology, pso.config.k, pso.config.w) == ("local", 2, 0.5)
    ng = make_strategy("nevergrad", BOX, optimizer="TwoPointsDE", budget=64)
    assert (ng.config.optimizer, ng.budget) == ("TwoPointsDE", 64)
    assert make_strategy("optuna", BOX, sampler="CMAES").sampler.__class__.__name__ == (
        "CmaEsSampler"
    )


def test_settings_fields_lists_defaults() -> None:
    assert settings_fields(Nevergrad) == {"optimizer": "NGOpt", "budget": None}
    assert settings_fields(OptunaSampler) == {"sampler": "tpe"}
    assert settings_fields(RandomSearch) == {}
    assert settings_fields(PSO)["topology"] == "global"


def test_settings_fields_reads_keyword_arguments_without_a_schema() -> None:
    class Keywords(Strategy):
        name: ClassVar[str] = "keywords"

        def __init__(
            self, box: Box, seed: int = 0, population: int = 8, step: float = 0.1, **kw: Any
        ) -> None:
            super().__init__(box, seed=seed, population=population, **kw)

        def _ask(self, n: int) -> np.ndarray:
            return self.box.sample(n, self.rng)

        def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
            pass

    assert settings_fields(Keywords) == {"step": 0.1}


def _one_line_error(match: str, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ValueError, match=match) as info:
        make_strategy(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_strategy_names_the_allowed_ones() -> None:
    message = _one_line_error("unknown name 'cma'", "cma", BOX)
    assert all(repr(name) in message for name in STRATEGIES.names())
    with pytest.raises(ValueError, match="strategy"):
        get_strategy_class("")


def test_unknown_setting_names_the_allowed_ones() -> None:
    message = _one_line_error(r"'pso': unknown setting\(s\) \['c3'\]", "pso", BOX, c3=1.0)
    assert "'c1'" in message and "'topology'" in message
    assert "none" in _one_line_error("unknown setting", "random", BOX, sampler="tpe")
    _one_line_error(r"\['optimiser'\]", "nevergrad", BOX, optimiser="CMA")


@pytest.mark.parametrize(
    ("name", "settings", "match"),
    [
        ("pso", {"topology": "star"}, "pso.topology"),
        ("nevergrad", {"optimizer": "TwoPointDE"}, "'TwoPointsDE'"),
        ("nevergrad", {"budget": 0}, "nevergrad.budget"),
        ("optuna", {"sampler": "hyperband"}, "optuna.sampler"),
    ],
)
def test_bad_values_are_one_line_errors(name: str, settings: dict, match: str) -> None:
    _one_line_error(match, name, BOX, **settings)


def test_population_is_checked_by_the_base_class() -> None:
    _one_line_error("population", "random", BOX, population=0)


def test_traits_say_what_each_strategy_needs() -> None:
    assert (
        STRATEGIES.get("adam").traits.needs_gradients
        and STRATEGIES.get("adam").traits.needs_continuous
    )
    assert (
        STRATEGIES.get("epo").traits.needs_vocabulary
        and STRATEGIES.get("gcg").traits.needs_gradients
    )
    assert STRATEGIES.get("pso").traits.ordinal
    ga = STRATEGIES.get("token_ga")
    assert not ga.traits_for({}).needs_gradients
    assert ga.traits_for({"mutation": {"gradient_topk": 1.0}}).needs_gradients
    ng = STRATEGIES.get("nevergrad")
    assert ng.traits_for({"optimizer": "CMA"}).ordinal
    assert not ng.traits_for({"optimizer": "DiscreteOnePlusOne"}).ordinal
    op = STRATEGIES.get("optuna")
    assert op.traits_for({"sampler": "cmaes"}).ordinal and not op.traits_for({}).ordinal
