"""A small typed registry: config names -> classes (as lm-eval's and nevergrad's registries).

SPACES: Registry[SearchSpace] = Registry("space")

@SPACES.register("steering")
class SteeringSpace(SearchSpace): ...

SPACES.get("steering")      # the class; a one-line ValueError naming what is allowed
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from blackbox.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> classes of one kind (``space``, ``objective``, ``strategy``).

    Args:
        kind: what the names are (used in messages).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """A class decorator registering the class as ``name`` (and setting ``cls.name``)."""

        def add(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
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
