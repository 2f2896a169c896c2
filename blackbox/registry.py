"""A small typed registry: config names -> classes (as lm-eval's and nevergrad's registries).

SPACES: Registry[SearchSpace] = Registry("space")

@SPACES.register("steering")
class SteeringSpace(SearchSpace): ...

SPACES.get("steering")      # the class; a one-line ValueError naming what is allowed

A registry made with ``required=("from_config",)`` refuses a class that still has its base
class's :func:`placeholder` for one of those methods: abstract for the components a config can
name, not for helpers built by hand (``BoxSpace``, test doubles).

A registry made with ``sections=True`` (spaces, objectives) also holds each component's config
section (its class's ``config``: a pydantic class whose ``type`` field is the literal of its
registered name), from which the study schema is assembled.  A bundled component is registered
by its section and the import path of its class (:meth:`Registry.add_lazy`), so that a config is
validated before the class's module (and torch) is imported; :meth:`Registry.get` imports it.
"""

from __future__ import annotations

import difflib
import importlib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

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


def section_type(section: Any) -> str | None:
    """The name a config section declares: the one value of its ``type: Literal[...]`` field
    (``None`` when it has none)."""
    field = (getattr(section, "model_fields", None) or {}).get("type")
    if field is None or typing.get_origin(field.annotation) is not Literal:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if len(args) == 1 else None


@dataclass(frozen=True)
class _Lazy:
    """A component registered by its section and the ``module:Class`` path of its class."""

    section: Any
    target: str


class Registry(Generic[T]):
    """Names -> classes of one kind (``space``, ``objective``, ``strategy``).

    Args:
        kind: what the names are (used in messages).
        required: methods a registered class must define itself or inherit from a class that
            does (not the base class's :func:`placeholder`): ``from_config`` for spaces and
            objectives.
        sections: each class carries its config section as ``config`` (spaces, objectives):
            checked at registration, listed by :meth:`sections`.
    """

    def __init__(self, kind: str, required: tuple[str, ...] = (), sections: bool = False) -> None:
        self.kind = kind
        self.required = tuple(required)
        self.has_sections = sections
        self._classes: dict[str, type[T] | _Lazy] = {}  # in registration order

    def _check_section(self, name: str, section: Any, owner: str) -> None:
        from pydantic import BaseModel  # only registries with sections need it

        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            raise TypeError(
                f"{self.kind} {name!r}: {owner}.config is {section!r}; it must be the "
                f"{self.kind}'s config section (a blackbox.sections.Strict class)"
            )
        if section_type(section) != name:
            raise TypeError(
                f"{self.kind} {name!r}: its config section {section.__name__} needs the field "
                f"`type: Literal[{name!r}]` (it is how a config names the {self.kind})"
            )

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """A class decorator registering the class as ``name`` (and setting ``cls.name``)."""

        def add(cls: type[T]) -> type[T]:
            known = self._classes.get(name)
            if known is not None and known is not cls:
                lazy_same = isinstance(known, _Lazy) and known.target == _path(cls)
                if not lazy_same:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
            missing = [
                m
                for m in self.required
                if getattr(cls, m, None) is None or is_placeholder(getattr(cls, m))
            ]
            if self.has_sections and getattr(cls, "config", None) is None:
                missing.append("config")
            if missing:
                raise TypeError(
                    f"{self.kind} {name!r}: {cls.__name__} does not define "
                    f"{', '.join(missing)} (every registered {self.kind} does)"
                )
            if self.has_sections:
                self._check_section(name, cls.config, cls.__name__)  # type: ignore[attr-defined]
                if isinstance(known, _Lazy) and known.section is not cls.config:  # type: ignore[attr-defined]
                    raise TypeError(
                        f"{self.kind} {name!r}: {cls.__name__}.config is not the section it "
                        f"was registered with ({known.section.__name__})"
                    )
            self._classes[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return add

    def add(self, cls: type[T], name: str | None = None) -> type[T]:
        """Register ``cls`` under ``name`` (default: ``cls.name``)."""
        return self.register(name or cls.name)(cls)  # type: ignore[attr-defined]

    def add_lazy(self, section: Any, target: str) -> None:
        """Register the class at ``target`` (``"package.module:Class"``) under the name its
        config ``section`` declares, importing it only when :meth:`get` first asks for it."""
        if not self.has_sections:
            raise TypeError(f"the {self.kind} registry holds no config sections")
        name = section_type(section)
        if name is None:
            raise TypeError(f"{section!r} has no `type: Literal[NAME]` field")
        self._check_section(name, section, target)
        if name in self._classes:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._classes[name] = _Lazy(section, target)

    def unregister(self, name: str) -> type[T] | Any:
        """Remove ``name`` and return its class (a test's own toy component, registered for
        the test only); ``KeyError`` if it is not registered."""
        return self._classes.pop(name)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name`` (imported now if it was registered lazily).

        Raises:
            ValueError: one line naming the unknown name, close matches and every name.
        """
        try:
            entry = self._classes[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._classes), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise UserError(
                f"{self.kind}: unknown name {name!r}{hint}; allowed: {sorted(self._classes)}"
            ) from None
        if isinstance(entry, _Lazy):
            module, _, attr = entry.target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
            self.register(name)(cls)  # checks it, and that its section is the registered one
            return cls
        return entry

    def section(self, name: str) -> Any:
        """The config section of ``name``, without importing a lazily registered class."""
        entry = self._classes[name]
        return entry.section if isinstance(entry, _Lazy) else entry.config  # type: ignore[attr-defined]

    def sections(self) -> list[Any]:
        """Every config section, in registration order (no class is imported)."""
        return [self.section(n) for n in self._classes]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def ordered_names(self) -> list[str]:
        """The names in registration order (the order messages list them in)."""
        return list(self._classes)

    def items(self) -> Iterator[tuple[str, type[T]]]:
        for name in sorted(self._classes):
            yield name, self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __len__(self) -> int:
        return len(self._classes)


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
