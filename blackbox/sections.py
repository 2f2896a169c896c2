"""The base of every config section: :class:`Strict` (unknown keys are errors, no NaN or
infinity in any float, no boolean where a number is expected) and the checks sections share.

A leaf module: each component declares its own section next to its code (a space's in
``search_spaces/<space>/config.py``, an objective's in its ``evals`` module) on this base, and
:mod:`blackbox.config` assembles the study schema from the registries, so no component imports
:mod:`blackbox.config`.  The error type, :class:`ConfigError`, lives in :mod:`blackbox.errors`
and is re-exported here."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from blackbox.errors import ConfigError as ConfigError  # re-exported: it lives in errors
from blackbox.masking import PLACEHOLDER, short_repr


def _members(annotation: Any) -> list[Any]:
    """The types an annotation accepts at its top level (through ``Annotated``, unions and
    ``Optional``)."""
    if typing.get_origin(annotation) is Annotated:
        return _members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _items(members: list[Any], value: list | tuple) -> list[tuple[int, Any]]:
    """``(index, item annotation)`` of a list or tuple value under the container members."""
    out: list[tuple[int, Any]] = []
    for m in members:
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin in (list, set, frozenset) and args:
            out += [(i, args[0]) for i in range(len(value))]
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            out += [(i, args[0]) for i in range(len(value))]
        elif origin is tuple and args:
            out += list(enumerate(args[: len(value)]))
    return out


def bool_for_number(annotation: Any, value: Any) -> str | None:
    """Where ``value`` holds a boolean that ``annotation`` would read as a number (pydantic's
    lax mode takes ``true`` as 1): ``""`` for the value itself, ``"item 2"`` for an item;
    ``None`` when there is none (or the annotation also allows a boolean)."""
    members = _members(annotation)
    if isinstance(value, bool):
        wants = {m for m in members if m in (int, float)}
        return "" if wants and not any(m in (bool, Any) for m in members) else None
    if isinstance(value, list | tuple):
        for i, item in _items(members, value):
            where = bool_for_number(item, value[i])
            if where is not None:
                return f"item {i}" + (f" {where}" if where else "")
    return None


class Strict(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, floats are finite
    and a boolean is never read as a number (``seed: true`` is an error, not seed 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_number(cls, data: Any) -> Any:
        # a model check, not a field one: pydantic allows no "before" validator on the
        # discriminator fields (``type``)
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is None or not isinstance(value, bool | list | tuple):
                continue
            where = bool_for_number(field.annotation, value)
            if where is not None:
                kinds = {m for m in _members(field.annotation) if m in (int, float)}
                what = "an integer" if kinds == {int} else "a number"
                at = f" {where}:" if where else ""
                raise ValueError(
                    f"{name}:{at} a boolean (true/false) is not a number; allowed: {what} "
                    f"(got {short_repr(value)})"
                )
        return data


NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
"""A safe name, matched whole (``fullmatch``: ``$`` would also match before a final newline)."""
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


def check_name(name: str) -> str:
    """A study name is also a directory name: letters, digits, ``_ . -``, not starting with a
    dot (so never ``.`` or ``..``), at most 100 characters."""
    if not NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise ValueError(
            f"{shown!r} ({len(name)} characters) is not a safe name; allowed: 1-100 of "
            "letters, digits, '_', '.', '-', not starting with '.' or '-'"
        )
    return name


def check_storage_url(url: str) -> str:
    """A storage URL with a known scheme and at most one ``@`` before its host (a password
    holding ``@`` must be percent-encoded, or half of it would be read as the host)."""
    if PLACEHOLDER.fullmatch(url):  # the whole URL is read from the environment later
        return url
    scheme, sep, rest = url.partition("://")
    allowed = "sqlite:///FILE, postgresql://USER:PASSWORD@HOST/DB, mysql://..., journal:///FILE"
    if not sep:  # never echo it: a forgotten scheme leaves "user:password@host" or "password=..."
        raise ValueError(f"a storage URL starts with a scheme (SCHEME://); allowed: {allowed}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise ValueError(f"a storage URL starts with a scheme (SCHEME://); allowed: {allowed}")
    if scheme.split("+")[0].lower() not in STORAGE_SCHEMES:
        raise ValueError(f"{scheme!r} is not a storage URL scheme; allowed: {allowed}")
    if scheme.split("+")[0].lower() in ("postgresql", "mysql"):
        netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if netloc.count("@") > 1:
            raise ValueError(
                "the user or password holds an unencoded '@'; percent-encode it as %40"
            )
    return url


StorageURL = Annotated[str, AfterValidator(check_storage_url)]
POPULATION_LIMIT = 10_000
"""The largest population (candidates per generation) a config may ask for."""
Population = Annotated[
    int, Field(ge=1, le=POPULATION_LIMIT, description="candidates per generation (ask)")
]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

Placement = Literal["before_input", "after_input", "system", "template"]
"""Where a prompt space's tokens or vectors go in each of the objective's documents."""
