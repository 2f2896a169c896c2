"""Conformance suites a space, objective or strategy inherits (as Optuna ships ``optuna.testing``).

Every registered component of blackbox passes one of three suites; a component of your own
inherits the same one in a ``Test*`` class of your tests and supplies a fixture or two:

    import pytest
    from blackbox.testing import StrategyConformance

    class TestMyStrategy(StrategyConformance):
        component = "my_strategy"  # its registry name: the suite checks it builds that class
        @pytest.fixture
        def make(self):  # (box, seed) -> Strategy
            return lambda box, seed: MyStrategy(box, seed=seed, population=8)

- :class:`StrategyConformance` (:mod:`blackbox.testing.strategies`): fixture ``make``, a
  factory ``(box, seed) -> Strategy``; the strategy runs on a closed-form bench (a shifted
  sphere by default, :data:`~blackbox.testing.strategies.TOKENS` for token strategies,
  :data:`~blackbox.testing.strategies.SOFT` for gradient steps on soft prompts).
- :class:`SpaceConformance` (:mod:`blackbox.testing.spaces`): fixture ``space``.
- :class:`ObjectiveConformance` (:mod:`blackbox.testing.objectives`): fixtures ``problem`` (a
  :class:`~blackbox.api.Problem`: a space bound to the objective) and ``candidates`` (at least
  three of that space's candidates, not all equal).

This package imports pytest (and the suites numpy and torch); ``import blackbox`` never loads
it.  The names above load on first use, so ``from blackbox.testing import SpaceConformance``
does not import the strategy suite.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "StrategyConformance": "blackbox.testing.strategies",
    "SpaceConformance": "blackbox.testing.spaces",
    "ObjectiveConformance": "blackbox.testing.objectives",
}

__all__ = ["StrategyConformance", "SpaceConformance", "ObjectiveConformance"]

if TYPE_CHECKING:
    from blackbox.testing.objectives import ObjectiveConformance
    from blackbox.testing.spaces import SpaceConformance
    from blackbox.testing.strategies import StrategyConformance


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'blackbox.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
