"""The search-space interface: a bounded box on one side, model interventions on the other."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch

from blackbox.strategies.base import Box

C = TypeVar("C")


class SearchSpace(ABC, Generic[C]):
    """Maps rows of a bounded box to candidates (``C``) and back, and applies candidates.

    Subclasses define :attr:`box`, :meth:`decode`, :meth:`encode` and :meth:`apply`.
    Discrete spaces set ``is_discrete = True``.
    """

    name: ClassVar[str] = ""
    is_discrete: ClassVar[bool] = False

    @property
    @abstractmethod
    def box(self) -> Box: ...

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

    def sample(self, n: int, rng: np.random.Generator) -> list[C]:
        """``n`` uniform candidates."""
        return self.decode(self.box.sample(n, rng))

    @contextmanager
    def apply(
        self, model: torch.nn.Module, candidates: Sequence[C], rows: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Install the intervention of ``candidates`` on ``model`` for the duration of the block.

        Args:
            model: the model.
            candidates: the candidates of this batch.
            rows: ``(B,)`` long tensor, the index into ``candidates`` of each batch row; ``None``
                means one candidate applied to every row.
        """
        raise NotImplementedError(f"{type(self).__name__} does not intervene through hooks")
        yield  # pragma: no cover

    def describe(self, candidate: C) -> dict[str, Any]:
        """Flat, JSON-friendly attributes of a candidate (stored with each trial)."""
        return {"candidate": repr(candidate)}
