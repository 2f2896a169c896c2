"""The strategy interface: array-level ask/tell over a bounded box.

Every strategy *maximises*.  Candidates are rows of a float array of shape ``(n, dim)`` inside
``box``; integer dimensions (``box.integer``) are returned already rounded to whole numbers.
Each strategy owns its own :class:`numpy.random.Generator` (seeded at construction), so no
global RNG re-seeding (lm-eval's ``simple_evaluate`` re-seeds ``random``/``numpy``/``torch``)
can change what it asks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from blackbox.api import StrategyTraits
from blackbox.errors import UserError
from blackbox.multiobjective import ObjectiveSpec, scalarise


@dataclass(frozen=True)
class Box:
    """A bounded search box.

    Attributes:
        lower: ``(dim,)`` lower bounds (inclusive).
        upper: ``(dim,)`` upper bounds (inclusive).
        integer: ``(dim,)`` bool mask of dimensions that take whole numbers only.
        names: one name per dimension (used for Optuna parameter names and reports).
    """

    lower: np.ndarray
    upper: np.ndarray
    integer: np.ndarray
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        lower = np.asarray(self.lower, dtype=float)
        upper = np.asarray(self.upper, dtype=float)
        integer = np.asarray(self.integer, dtype=bool)
        if lower.shape != upper.shape or lower.shape != integer.shape or lower.ndim != 1:
            raise ValueError(
                f"box: lower {lower.shape}, upper {upper.shape} and integer {integer.shape} "
                "must be 1-D arrays of one shape"
            )
        if np.any(upper < lower):
            raise UserError("box: every upper bound must be >= its lower bound")
        names = tuple(self.names) or tuple(f"x{i}" for i in range(lower.size))
        if len(names) != lower.size:
            raise ValueError(f"box: {len(names)} names for {lower.size} dimensions")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "integer", integer)
        object.__setattr__(self, "names", names)

    @property
    def dim(self) -> int:
        return int(self.lower.size)

    @property
    def bounds(self) -> np.ndarray:
        """``(dim, 2)`` array of ``[lower, upper]`` rows."""
        return np.stack([self.lower, self.upper], axis=1)

    def clip(self, x: np.ndarray) -> np.ndarray:
        """Clip ``x`` ``(n, dim)`` into the box and round its integer dimensions."""
        x = np.clip(np.asarray(x, dtype=float), self.lower, self.upper)
        x[..., self.integer] = np.rint(x[..., self.integer])
        return x

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, dim)`` uniform draws; integer dimensions uniform over their whole numbers."""
        x = rng.uniform(self.lower, self.upper, size=(n, self.dim))
        if self.integer.any():
            lo = self.lower[self.integer]
            hi = self.upper[self.integer]
            x[:, self.integer] = rng.integers(lo.astype(int), hi.astype(int) + 1, size=(n, lo.size))
        return x


def dummy_box() -> Box:
    """A two-dimensional box to check strategy names and settings before any model loads."""
    return Box(np.array([0.0, 0.0]), np.array([1.0, 3.0]), np.array([False, True]), ("a", "b"))


class Strategy(ABC):
    """Ask/tell optimiser over a :class:`Box` (maximising).

    Subclasses set ``name`` and implement :meth:`_ask` and :meth:`_tell`; the base class keeps
    the best point seen and checks shapes.

    Args:
        box: the search box.
        seed: seed of this strategy's private generator.
        population: preferred number of candidates per ask (PSO swarm size, EA population).
    """

    name: ClassVar[str] = ""
    traits: ClassVar[StrategyTraits] = StrategyTraits()

    @classmethod
    def traits_for(cls, settings: dict[str, Any]) -> StrategyTraits:
        """What this strategy needs with these settings (default: the class's traits)."""
        return cls.traits

    @property
    def uses_gradients(self) -> bool:
        return self.traits_for(self.settings).needs_gradients

    def __init__(self, box: Box, seed: int = 0, population: int = 8, **settings: Any) -> None:
        if population < 1:
            raise UserError(f"population: must be >= 1, got {population}")
        self.box = box
        self.seed = int(seed)
        self.population = int(population)
        self.rng = np.random.default_rng(self.seed)
        self.settings = settings
        self.best_x: np.ndarray | None = None
        self.best_value: float = -np.inf
        self.n_told = 0
        self.objectives: ObjectiveSpec | None = None
        self.told_values: np.ndarray | None = None
        self.told_extra: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        """How many candidates one :meth:`ask` returns by default."""
        return self.population

    def ask(self, n: int | None = None) -> np.ndarray:
        """Return ``(n, dim)`` candidates inside the box (integer dims rounded)."""
        n = self.batch_size if n is None else int(n)
        x = np.asarray(self._ask(n), dtype=float)
        if x.shape != (n, self.box.dim):
            raise RuntimeError(f"{self.name}: asked for ({n}, {self.box.dim}), got {x.shape}")
        return self.box.clip(x)

    def set_objectives(self, spec: ObjectiveSpec) -> None:
        """Side columns and constraints of the evaluations to come (see
        :mod:`blackbox.multiobjective`).  Here: ``tell`` with ``extra`` hands :meth:`_tell` the
        feasibility-rule scalarisation; strategies with a native multi-objective mode override
        this and read :attr:`told_values` and :attr:`told_extra`."""
        self.objectives = spec

    def tell(self, x: np.ndarray, values: np.ndarray, extra: np.ndarray | None = None) -> None:
        """Report ``values`` ``(n,)`` (higher is better) for the candidates ``x`` ``(n, dim)``,
        with ``extra`` ``(n, k)`` side columns when the study has side effects.

        Non-finite values count as the worst possible value.
        """
        x = np.asarray(x, dtype=float)
        values = np.asarray(values, dtype=float).reshape(-1)
        if x.ndim != 2 or x.shape[0] != values.shape[0]:
            raise ValueError(f"tell: x {x.shape} and values {values.shape} disagree")
        values = np.where(np.isfinite(values), values, -np.inf)
        self.told_values = values
        self.told_extra = (
            None if extra is None else np.asarray(extra, dtype=float).reshape(len(values), -1)
        )
        if self.objectives is not None and self.told_extra is not None:
            values = scalarise(values, self.told_extra, self.objectives)
        self._tell(x, values)  # first: a tell the strategy rejects must not move `best`
        i = int(np.argmax(values))
        if values[i] > self.best_value:
            self.best_value = float(values[i])
            self.best_x = x[i].copy()
        self.n_told += len(values)

    @property
    def best(self) -> tuple[np.ndarray | None, float]:
        """``(x, value)`` of the best candidate told so far."""
        return self.best_x, self.best_value

    @abstractmethod
    def _ask(self, n: int) -> np.ndarray: ...

    @abstractmethod
    def _tell(self, x: np.ndarray, values: np.ndarray) -> None: ...
