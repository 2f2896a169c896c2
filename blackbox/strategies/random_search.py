"""Random search: uniform samples from the box, the baseline every comparison includes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from blackbox.strategies.base import Box, Strategy


@dataclass(frozen=True)
class RandomSearchSettings:
    """Random search takes no settings."""


class RandomSearch(Strategy):
    """Uniform random search over the box (integer dims uniform over their whole numbers).

    Draws only from ``self.rng``, so global RNG re-seeding cannot make it repeat itself.

    Args:
        box: the search box.
        seed: seed of the private generator.
        population: default number of candidates per :meth:`ask`.
    """

    name: ClassVar[str] = "random"  # no needs: it meets every space
    settings_schema: ClassVar[type] = RandomSearchSettings

    def __init__(self, box: Box, seed: int = 0, population: int = 8, **settings: Any) -> None:
        super().__init__(box, seed=seed, population=population, **settings)
        self.config = RandomSearchSettings(**settings)

    def _ask(self, n: int) -> np.ndarray:
        """Return ``(n, dim)`` uniform draws from the box."""
        return self.box.sample(n, self.rng)

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        """Random search learns nothing; the base class tracks the best point."""
