"""Array-level ask/tell strategies and their registry.

``STRATEGIES`` (a :class:`~blackbox.registry.Registry`) maps a config name to a
:class:`Strategy` subclass, whose ``traits`` say what it needs (gradients, a vocabulary, a
continuous box, ordered axes); :func:`make_strategy`
builds one and checks the name and the settings first.

Settings schema: every strategy class declares ``settings_schema``, a frozen dataclass whose
fields are the strategy's settings with their defaults (e.g. :class:`PSOSettings`).  A config
validator can list the allowed keys with :func:`settings_fields` (or
``dataclasses.fields(cls.settings_schema)``); values are checked by the dataclass's
``__post_init__``, which raises a one-line ``ValueError`` naming the field and what is allowed.
``box``, ``seed`` and ``population`` are common to every strategy and are not settings.

Registered strategies and their settings (defaults):

- ``pso`` (:class:`PSO`): c1=1.49618, c2=1.49618, w=0.7298, topology="global", k=3, p=2,
  clamp=None, boundary="reflective".
- ``nevergrad`` (:class:`Nevergrad`): optimizer="NGOpt", budget=None.
- ``optuna`` (:class:`OptunaSampler`): sampler="tpe".
- ``random`` (:class:`RandomSearch`): none.
- ``epo``, ``gcg``, ``token_ga``: token spaces only (see their modules).
- ``adam`` (:class:`Adam`): lr=0.1, steps=1, minibatch=16; soft-prompt spaces only.

A class without ``settings_schema`` (keyword arguments in its ``__init__`` instead) is also
understood: :func:`settings_fields` then reads the keyword parameters after ``population``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from blackbox.errors import UserError
from blackbox.masking import short_repr
from blackbox.registry import Registry
from blackbox.strategies.adam import Adam, AdamSettings
from blackbox.strategies.base import Box, Strategy
from blackbox.strategies.epo import EPO, GCG
from blackbox.strategies.evolutionary import Nevergrad, NevergradSettings
from blackbox.strategies.genetic import TokenGA
from blackbox.strategies.optuna_sampler import OptunaSampler, OptunaSettings
from blackbox.strategies.pso import PSO, PSOSettings
from blackbox.strategies.random_search import RandomSearch, RandomSearchSettings

STRATEGIES: Registry[Strategy] = Registry("strategy")
for _cls in (PSO, Nevergrad, OptunaSampler, RandomSearch, EPO, GCG, TokenGA, Adam):
    STRATEGIES.add(_cls)

__all__ = [
    "STRATEGIES",
    "Adam",
    "AdamSettings",
    "Box",
    "Nevergrad",
    "NevergradSettings",
    "OptunaSampler",
    "OptunaSettings",
    "PSO",
    "PSOSettings",
    "RandomSearch",
    "RandomSearchSettings",
    "Strategy",
    "get_strategy_class",
    "make_strategy",
    "settings_fields",
]


def get_strategy_class(name: str) -> type[Strategy]:
    """The registered class called ``name``; ``ValueError`` (one line) if there is none."""
    return STRATEGIES.get(name)


def settings_fields(cls: type[Strategy]) -> dict[str, Any]:
    """``{setting: default}`` of a strategy class.

    From its ``settings_schema`` dataclass if it has one, else from the keyword parameters of
    its ``__init__`` other than ``box``, ``seed`` and ``population``.
    """
    schema = getattr(cls, "settings_schema", None)
    if schema is not None:
        return {f.name: f.default for f in dataclasses.fields(schema)}
    params = inspect.signature(cls.__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: p.default
        for p in params
        if p.kind in kinds and p.name not in ("self", "box", "seed", "population")
    }


def make_strategy(
    name: str, box: Box, seed: int = 0, population: int = 8, **settings: Any
) -> Strategy:
    """Build the strategy registered as ``name``.

    Args:
        name: a key of :data:`STRATEGIES`.
        box: the search box.
        seed: seed of the strategy's private generator.
        population: candidates per ask (swarm size, EA population).
        **settings: strategy-specific settings (fields of its ``settings_schema``).

    Returns:
        The strategy.

    Raises:
        ValueError: one line naming an unknown strategy or setting and what is allowed, or a
            bad setting value.
    """
    cls = get_strategy_class(name)
    allowed = settings_fields(cls)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise UserError(
            f"strategy {name!r}: unknown setting(s) {unknown}; allowed: {sorted(allowed) or 'none'}"
        )
    settings = check_settings(name, cls, settings)
    return cls(box, seed=seed, population=population, **settings)


def _hints(cls: type[Strategy]) -> dict[str, Any]:
    """Declared types of a strategy's settings (its schema's fields or ``__init__``'s)."""
    schema = getattr(cls, "settings_schema", None)
    try:
        return typing.get_type_hints(schema if schema is not None else cls.__init__)
    except Exception:  # an annotation that cannot be resolved: nothing to check against
        return {}


def check_settings(name: str, cls: type[Strategy], settings: dict[str, Any]) -> dict[str, Any]:
    """Check each given setting against its declared type; ``UserError`` naming the setting,
    what is wrong and what is allowed otherwise.  Returns the settings as the declared types
    read them (``1`` for a float setting is ``1.0``).

    Pydantic's lax mode decides the types (``1`` is a fine float), except that text or a
    boolean is never a number and no float may be NaN or infinite, in any setting
    (:func:`~blackbox.strategies.setting_values.number_problem`).
    """
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    from blackbox.strategies.setting_values import number_problem

    hints = _hints(cls)
    out = dict(settings)
    for key, value in settings.items():
        hint = hints.get(key)
        typed = hint is not None and hint is not Any
        problem = number_problem(hint if typed else None, value)
        if problem is not None:
            raise UserError(f"strategy.settings.{key}: {problem} (strategy {name!r})")
        if not typed:
            continue
        try:
            out[key] = TypeAdapter(hint, config=ConfigDict(allow_inf_nan=False)).validate_python(
                value
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            shown = short_repr(value)  # bounded: a YAML anchor "bomb" is never expanded
            raise UserError(
                f"strategy.settings.{key}: {shown} is not valid for {name!r} "
                f"({err['msg'][0].lower() + err['msg'][1:]}; declared type: "
                f"{getattr(hint, '__name__', None) or str(hint).replace('typing.', '')})"
            ) from None
        except Exception:  # a type pydantic cannot check: leave it to the strategy
            continue
    return out
