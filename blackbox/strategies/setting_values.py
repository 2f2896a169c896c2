"""Number checks of strategy settings that pydantic's lax mode lets through.

A YAML ``c1: 1e400`` is the *string* ``'1e400'`` (YAML 1.1 reads a float only with a ``.``),
``w: .nan`` is NaN and ``k: true`` is a boolean; pydantic's lax mode would turn the first into
``inf``, keep NaN and read ``true`` as 1, and a strategy would fail later (a ``TypeError`` mid-run)
or search nonsense.  :func:`number_problem` names the first such value: text or a boolean where
the declared type wants a number, or a float that is NaN or infinite (in any setting, whatever
its type).  Nested values are walked once per object, so a YAML anchor "bomb" (a list of the
same list, 10^9 items when expanded) costs a few steps.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from blackbox.masking import short_repr

MAX_VISITS = 10_000
"""Containers walked at most per setting (each distinct object once)."""
INT_LIMIT = 1_000_000
"""The largest whole-number setting (children, widths, top-k, budgets): far past any useful
value, and small enough that no array sized by one can exhaust memory."""


def members(hint: Any) -> list[Any]:
    """The types a hint accepts at its top level (through ``Annotated``, unions, ``Optional``)."""
    if typing.get_origin(hint) is Annotated:
        return members(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(hint) for m in members(arg)]
    return [hint]


def _wants_number_only(hints: list[Any]) -> bool:
    """Whether the hints take a number but neither text nor a boolean."""
    wants = any(m in (int, float) for m in hints)
    return wants and not any(m in (str, bool, Any) or m is typing.Any for m in hints)


def _item_hints(hints: list[Any], value: Any) -> list[tuple[Any, list[Any]]]:
    """``(item, its hints)`` of a list, tuple or mapping value under the container hints."""
    out: list[tuple[Any, list[Any]]] = []
    for m in hints:
        origin, args = typing.get_origin(m), typing.get_args(m)
        if isinstance(value, Mapping) and origin in (dict, Mapping) and len(args) == 2:
            out += [(v, members(args[1])) for v in value.values()]
        elif isinstance(value, list | tuple) and origin in (list, tuple, set) and args:
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                out += [(v, members(a)) for v, a in zip(value, args)]
            else:
                out += [(v, members(args[0])) for v in value]
    return out


def _scalar_problem(value: Any, hints: list[Any] | None) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number; allowed: a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        return f"{short_repr(value)} is too large; allowed: at most {INT_LIMIT} in size"
    if hints is None or not _wants_number_only(hints):
        return None
    if isinstance(value, bool):
        return f"{value} is a boolean, not a number; allowed: a number"
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return None  # pydantic's own message ("unable to parse string as a number")
        return (
            f"{short_repr(value)} is text, not a number (YAML reads a float only with a '.': "
            "write 1.0e+5, not 1e5); allowed: a finite number"
        )
    return None


def number_problem(hint: Any, value: Any) -> str | None:
    """What is wrong with a setting's ``value`` as a number under its declared ``hint``
    (``None``: no hint), or ``None`` when nothing is."""
    seen: set[int] = set()
    stack: list[tuple[Any, list[Any] | None]] = [(value, None if hint is None else members(hint))]
    while stack and len(seen) < MAX_VISITS:
        item, hints = stack.pop()
        problem = _scalar_problem(item, hints)
        if problem is not None:
            return problem
        if isinstance(item, list | tuple | Mapping):
            if id(item) in seen:
                continue
            seen.add(id(item))
            typed = _item_hints(hints, item) if hints is not None else []
            if typed:
                stack += [(v, h) for v, h in reversed(typed)]
            else:
                values = item.values() if isinstance(item, Mapping) else item
                stack += [(v, None) for v in reversed(list(values))]
    return None
