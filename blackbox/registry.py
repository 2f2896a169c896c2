"""A small typed registry: config names -> classes (as lm-eval's and nevergrad's registries).

SPACES: Registry[SearchSpace] = Registry("space")

@SPACES.register("steering")
class SteeringSpace(SearchSpace): ...

SPACES.get("steering")      # the class; a one-line ValueError naming what is allowed

A registry made with ``required=("from_config",)`` refuses a class that still has its base
class's :func:`placeholder` for one of those methods: abstract for the components a config can
name, not for helpers built by hand (``BoxSpace``, test doubles).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from blackbox.errors import UserError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def placeholder(fn: F) -> F:
    """Mark a base class's method that every *registered* subclass must define (see
    :class:`Registry`'s ``required``); the base's body raises ``NotImplementedError``."""
    fn.__placeholder__ = True  # type: ignore[attr-defined]
    return fn


def is_placeholder(method: Any) -> bool:
    """The method (plain, bound or class) is a base class's :func:`placeholder`."""
    return bool(getattr(getattr(method, "__func__", method), "__placeholder__", False))


class Registry(Generic[T]):
    """Names -> classes of one kind (``space``, ``objective``, ``strategy``).

    Args:
        kind: what the names are (used in messages).
        required: methods a registered class must define itself or inherit from a class that
            does (not the base class's :func:`placeholder`): ``from_config`` for spaces and
            objectives.
    """

    def __init__(self, kind: str, required: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.required = tuple(required)
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """A class decorator registering the class as ``name`` (and setting ``cls.name``)."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            missing = [
                m
                for m in self.required
                if getattr(cls, m, None) is None or is_placeholder(getattr(cls, m))
            ]
            if missing:
                raise TypeError(
                    f"{self.kind} {name!r}: {cls.__name__} does not define "
                    f"{', '.join(missing)} (every registered {self.kind} does)"
                )
            self._classes[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return add

    def add(self, cls: type[T], name: str | None = None) -> type[T]:
        """Register ``cls`` under ``name`` (default: ``cls.name``)."""
        return self.register(name or cls.name)(cls)  # type: ignore[attr-defined]

    def unregister(self, name: str) -> type[T]:
        """Remove ``name`` and return its class (a test's own toy component, registered for
        the test only); ``KeyError`` if it is not registered."""
        return self._classes.pop(name)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``.

        Raises:
            ValueError: one line naming the unknown name, close matches and every name.
        """
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._classes), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise UserError(
                f"{self.kind}: unknown name {name!r}{hint}; allowed: {sorted(self._classes)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._classes)

    def items(self) -> Iterator[tuple[str, type[T]]]:
        yield from sorted(self._classes.items())

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __len__(self) -> int:
        return len(self._classes)
