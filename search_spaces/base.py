"""The search-space interface: a bounded box on one side, model interventions on the other."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from blackbox.api import Intervention, SpaceTraits
from blackbox.registry import placeholder
from blackbox.search_spaces.finishing import Finisher
from blackbox.strategies.base import Box

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext

C = TypeVar("C")


class SearchSpace(ABC, Generic[C]):
    """Maps rows of a bounded box to candidates (``C``) and back, and candidates to an
    intervention (:mod:`blackbox.api`) that any objective can score.

    Subclasses define ``traits``, :attr:`box`, :meth:`decode`, :meth:`encode` and
    :meth:`intervention`; a registered space (``space.type``) also defines :attr:`config`
    and :meth:`from_config`, and may define :attr:`finisher`.
    """

    name: ClassVar[str] = ""
    traits: ClassVar[SpaceTraits]
    config: ClassVar[Any] = None
    """The space's config section: a :class:`~blackbox.sections.Strict` class with a
    ``type: Literal["<its registered name>"]`` field.  The study schema's ``space:`` is the
    union of the registered spaces' sections (required of a registered space)."""
    finisher: ClassVar[type[Finisher]] = Finisher
    """What a run writes after the search (:mod:`blackbox.search_spaces.finishing`); the base
    writes no file."""
    noun: ClassVar[str] = ""
    """How error messages name the space, e.g. "a token space (categorical token ids)"
    (``""``: its registered name)."""

    @classmethod
    @placeholder
    def from_config(cls, section: Any, ctx: BuildContext) -> SearchSpace:
        """Build the space of a study (abstract for registered spaces: ``SPACES`` refuses a
        class without its own).

        Args:
            section: the space's own config section (``cfg.space``, an instance of
                :attr:`config`, such as ``TokenSpaceConfig``).
            ctx: the :class:`~blackbox.study.context.BuildContext`: the model and tokenizer,
                the seed, and what the objective asks of a prompt (``ctx.prompt_bans``).  A
                space reads nothing else of the study config.

        Raises:
            ConfigError: one line naming the field, for what only the model can refuse.
        """
        raise NotImplementedError(f"{cls.__name__} is not built from a config section")

    @property
    @abstractmethod
    def box(self) -> Box: ...

    @property
    def is_discrete(self) -> bool:
        return self.traits.discrete

    @property
    def dim(self) -> int:
        return self.box.dim

    @property
    def bounds(self) -> np.ndarray:
        """``(dim, 2)`` lower/upper bounds."""
        return self.box.bounds

    @abstractmethod
    def decode(self, x: np.ndarray) -> list[C]:
        """Candidates for the rows of ``x`` ``(n, dim)``."""

    @abstractmethod
    def encode(self, candidates: Sequence[C]) -> np.ndarray:
        """``(n, dim)`` box rows for ``candidates`` (inverse of :meth:`decode`)."""

    @abstractmethod
    def intervention(self, candidates: Sequence[C]) -> Intervention:
        """What the candidates do to the model, for an objective to apply."""

    def sample(self, n: int, rng: np.random.Generator) -> list[C]:
        """``n`` uniform candidates."""
        return self.decode(self.box.sample(n, rng))

    def describe(self, candidate: C) -> dict[str, Any]:
        """Flat, JSON-friendly attributes of a candidate (stored with each trial)."""
        return {"candidate": repr(candidate)}
