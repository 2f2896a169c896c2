"""Which space, objective and strategy can meet, derived from the traits on their classes.

:func:`reason` says why a combination cannot run (or ``None``); :func:`check_study` turns the
first reason into one :class:`~blackbox.sections.ConfigError` line naming both sides and what
would work; :func:`allowed_cells` lists every combination of the registries that can run (the
matrix in docs/concepts.md and tests/test_matrix.py, which walks it).  Everything here runs
before any model loads.
"""

from __future__ import annotations

from typing import Any

from blackbox.api import HOOKS, PROMPT, ObjectiveTraits, SpaceTraits, StrategyTraits
from blackbox.sections import ConfigError


def _registries() -> tuple[Any, Any, Any]:
    from blackbox.evals.registry import OBJECTIVES
    from blackbox.search_spaces.registry import SPACES
    from blackbox.strategies import STRATEGIES

    return SPACES, OBJECTIVES, STRATEGIES


def prompt_placement(cfg: Any) -> str | None:
    """Where the study's prompt goes in each document: the space's ``placement`` when its
    class's traits say it splices a prompt (tokens, soft prompts), ``None`` when it has no
    prompt (steering changes the model)."""
    spaces, _, _ = _registries()
    if spaces.get(cfg.space.type).traits.intervention != PROMPT:
        return None
    return getattr(cfg.space, "placement", None)


def objective_reason(space: SpaceTraits, objective: ObjectiveTraits) -> str | None:
    """Why an objective cannot score a space's interventions (``None`` if it can)."""
    if space.intervention not in objective.interventions:
        return f"it scores {' or '.join(sorted(objective.interventions))} interventions only"
    if objective.needs_token_ids and not space.vocabulary:
        return "it reads a prompt's token ids, and only a token space has them"
    return None


def strategy_reason(
    space: SpaceTraits, objective: ObjectiveTraits, strategy: StrategyTraits
) -> str | None:
    """Why a strategy cannot search a space under an objective (``None`` if it can)."""
    if strategy.needs_vocabulary and not space.vocabulary:
        return "it proposes token ids from a vocabulary, which only a token space has"
    if strategy.needs_continuous and not space.continuous:
        return "it takes gradient steps on continuous coordinates"
    if strategy.needs_gradients and not space.differentiable:
        return "it needs gradients with respect to the candidate, and this space has none"
    if strategy.needs_gradients and not objective.gradients:
        return "it needs gradients, and this objective cannot give them"
    if strategy.ordinal and space.discrete:
        return "it moves along ordered axes, and token ids have no order"
    return None


def reason(space_cls: Any, objective_cls: Any, strategy_cls: Any, settings: dict) -> str | None:
    """The first reason the triple cannot run, or ``None``."""
    return objective_reason(space_cls.traits, objective_cls.traits) or strategy_reason(
        space_cls.traits, objective_cls.traits, strategy_cls.traits_for(settings)
    )


def allowed_cells() -> list[tuple[str, str, str]]:
    """Every (space, objective, strategy) of the registries that can run, default settings."""
    spaces, objectives, strategies = _registries()
    return [
        (s, o, g)
        for s, s_cls in spaces.items()
        for o, o_cls in objectives.items()
        for g, g_cls in strategies.items()
        if reason(s_cls, o_cls, g_cls, {}) is None
    ]


def settings_field(strategy: str, message: str) -> str:
    """A strategy's one-line settings error with the config path of the setting it names
    (``nevergrad.optimizer: ...`` -> ``strategy.settings.optimizer: ...``)."""
    if message.startswith("strategy.settings"):  # names its setting already
        return message
    head, sep, rest = message.partition(": ")
    prefix = f"{strategy}."
    if sep and head.startswith(prefix) and head[len(prefix) :].isidentifier():
        return f"strategy.settings.{head[len(prefix) :]}: {rest}"
    return f"strategy.settings: {message}"


def traits(name: str, strat_cls: Any, settings: dict[str, Any]) -> Any:
    """``strat_cls.traits_for(settings)``; a setting it cannot read is a one-line
    :class:`ConfigError` naming the setting."""
    try:
        return strat_cls.traits_for(settings)
    except ValueError as exc:
        raise ConfigError(f"config: {settings_field(name, str(exc))}") from None


def _check_settings(
    name: str, strat_cls: Any, settings: dict[str, Any], known_only: bool = False
) -> None:
    """Unknown settings (unless ``known_only``) and values of the wrong type, before any model
    loads."""
    from blackbox.strategies import check_settings, settings_fields

    allowed = settings_fields(strat_cls)
    unknown = sorted(set(settings) - set(allowed), key=str)
    if known_only:
        settings = {k: v for k, v in settings.items() if k in allowed}
    elif unknown:
        raise ConfigError(
            f"config: strategy.settings: unknown setting(s) {unknown} for {name!r}; "
            f"allowed: {sorted(allowed) or 'none'}"
        )
    try:
        check_settings(name, strat_cls, settings)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None


def check_study(cfg: Any) -> None:
    """One-line :class:`ConfigError` if the config's space, objective and strategy (with its
    settings) cannot meet, or the objective lacks what this space needs."""
    spaces, objectives, strategies = _registries()
    space_name, obj_name = cfg.space.type, cfg.objective.type
    space_cls, obj_cls = spaces.get(space_name), objectives.get(obj_name)
    try:
        strat_cls = strategies.get(cfg.strategy.name)
    except ValueError as exc:
        raise ConfigError(f"config: strategy.name: {str(exc).removeprefix('strategy: ')}") from None
    # the known settings' types first: traits_for reads them (token_ga's mutation, nevergrad's
    # optimizer); unknown settings are reported last, after what the combination says
    _check_settings(cfg.strategy.name, strat_cls, dict(cfg.strategy.settings), known_only=True)
    why = objective_reason(space_cls.traits, obj_cls.traits)
    if why:
        ok = [s for s, c in spaces.items() if objective_reason(c.traits, obj_cls.traits) is None]
        raise ConfigError(
            f"config: objective.type: {obj_name!r} cannot score {space_cls.noun or space_name}: "
            f"{why}; spaces it scores: {', '.join(ok)}"
        )
    if (
        space_cls.traits.intervention == HOOKS
        and obj_cls.traits.needs_documents_for_hooks
        and not cfg.objective.has_documents()
    ):
        raise ConfigError(
            f"config: objective.prompts: steering has no prompt of its own, so {obj_name!r} "
            "must be measured over a prompt set; give objective.prompts (a list) or "
            "objective.prompts_file (one prompt per line)"
        )
    settings = dict(cfg.strategy.settings)
    why = strategy_reason(
        space_cls.traits, obj_cls.traits, traits(cfg.strategy.name, strat_cls, settings)
    )
    default_ok = strategy_reason(space_cls.traits, obj_cls.traits, strat_cls.traits_for({})) is None
    if why and default_ok:  # the settings are the problem (nevergrad's CMA on token ids, ...)
        hint = getattr(strat_cls, "discrete_hint", "its default settings")
        raise ConfigError(
            f"config: strategy.settings: {cfg.strategy.name!r} with {settings} cannot search "
            f"{space_cls.noun or space_name}: {why}; use {hint}"
        )
    if why:
        name = cfg.strategy.name
        fits = [
            g
            for g, c in strategies.items()
            if strategy_reason(space_cls.traits, obj_cls.traits, c.traits_for({})) is None
        ]
        works = [
            s
            for s, c in spaces.items()
            if objective_reason(c.traits, obj_cls.traits) is None
            and strategy_reason(c.traits, obj_cls.traits, traits(name, strat_cls, settings)) is None
        ]
        on = f"; {name!r} works on: {', '.join(works)}" if works else ""
        raise ConfigError(
            f"config: strategy.name: {name!r} cannot search {space_cls.noun or space_name}: "
            f"{why}; strategies for {space_name} with {obj_name}: {', '.join(fits)}{on}"
        )
    obj_cls.check_config(cfg.objective, prompt_placement(cfg))
    _check_settings(cfg.strategy.name, strat_cls, dict(cfg.strategy.settings))
