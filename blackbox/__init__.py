"""blackbox: gradient-free (and gradient-guided) optimisation of language models' inputs and
internals: steering vectors, token prompts and soft prompts, searched by PSO, nevergrad,
Optuna, EPO/GCG, Adam or random search against lm-eval tasks and model-internal objectives.

    import blackbox

    result = blackbox.run("studies/steer_rotten_tomatoes.yaml", out="runs/demo")
    print(result.best.heldout.score, result.best.candidate)

Every public name is loaded on first use, so ``import blackbox`` stays cheap (no torch): the
config names load pydantic only, the runner, the registries and the base classes load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it (loaded on first access)
_EXPORTS: dict[str, str] = {
    # run a study from Python
    "run": "blackbox.api_run",
    "Result": "blackbox.api_run",
    "load_result": "blackbox.api_run",
    # configs and errors (no torch)
    "load_config": "blackbox.config",
    "StudyConfig": "blackbox.config",
    "ConfigError": "blackbox.config",
    "UserError": "blackbox.errors",
    "Registry": "blackbox.registry",
    # components: registries and the base classes a new one subclasses
    "SPACES": "blackbox.search_spaces.registry",
    "OBJECTIVES": "blackbox.evals.registry",
    "STRATEGIES": "blackbox.strategies",
    "SearchSpace": "blackbox.search_spaces.base",
    "Objective": "blackbox.evals.base",
    "Strategy": "blackbox.strategies.base",
    "Box": "blackbox.strategies.base",
    "SpaceTraits": "blackbox.api",
    "ObjectiveTraits": "blackbox.api",
    "StrategyTraits": "blackbox.api",
    "Evaluation": "blackbox.api",
    "Strict": "blackbox.sections",
    "Finisher": "blackbox.search_spaces.finishing",
}

__all__ = [
    "run",
    "Result",
    "load_result",
    "load_config",
    "StudyConfig",
    "ConfigError",
    "UserError",
    "Registry",
    "SPACES",
    "OBJECTIVES",
    "STRATEGIES",
    "SearchSpace",
    "Objective",
    "Strategy",
    "Box",
    "SpaceTraits",
    "ObjectiveTraits",
    "StrategyTraits",
    "Evaluation",
    "Strict",
    "Finisher",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from blackbox.api import Evaluation, ObjectiveTraits, SpaceTraits, StrategyTraits
    from blackbox.api_run import Result, load_result, run
    from blackbox.config import ConfigError, StudyConfig, load_config
    from blackbox.errors import UserError
    from blackbox.evals.base import Objective
    from blackbox.evals.registry import OBJECTIVES
    from blackbox.registry import Registry
    from blackbox.search_spaces.base import SearchSpace
    from blackbox.search_spaces.finishing import Finisher
    from blackbox.search_spaces.registry import SPACES
    from blackbox.sections import Strict
    from blackbox.strategies import STRATEGIES
    from blackbox.strategies.base import Box, Strategy


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'blackbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
