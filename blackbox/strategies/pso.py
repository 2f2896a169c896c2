"""Particle swarm optimisation driven step by step through pyswarms' backend.

pyswarms keeps the swarm (:class:`pyswarms.backend.swarms.Swarm`), the personal bests
(:func:`pyswarms.backend.operators.compute_pbest`), the neighbourhood bests (``Star`` =
global best, ``Ring`` = local best over ``k`` nearest neighbours in the ``p``-norm) and the
boundary handling (``topology.compute_position``).  The one random step, the velocity update,
is :func:`velocity_update` below: a pure function fed by the strategy's own generator, because
pyswarms draws from numpy's *global* RNG, which lm-eval's ``simple_evaluate`` re-seeds on every
call (the swarm would then draw the same coefficients every iteration).

The swarm lives in the unit cube ``[0, 1]^dim`` so that one set of coefficients, the velocity
clamp and the ring's nearest-neighbour distances mean the same on every dimension, whatever its
scale.  An integer dimension ``[lo, hi]`` maps to ``[lo - 0.5, hi + 0.5]`` so that each whole
number gets the same width once :meth:`Box.clip` rounds it; positions stay continuous inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import blackbox.strategies._pyswarms  # noqa: F401  (before pyswarms: no report.log)
from blackbox.errors import UserError

# isort: split
from pyswarms.backend.handlers import BoundaryHandler
from pyswarms.backend.operators import compute_pbest
from pyswarms.backend.swarms import Swarm
from pyswarms.backend.topology import Ring, Star

from blackbox.api import StrategyTraits
from blackbox.strategies.base import Box, Strategy

TOPOLOGIES = ("global", "local")
# pyswarms' deterministic boundary handlers ("random" draws from the global RNG: left out).
BOUNDARIES = ("nearest", "reflective", "shrink", "intermediate", "periodic")


@dataclass(frozen=True)
class PSOSettings:
    """Settings of :class:`PSO`.

    The defaults are Clerc and Kennedy's (2002) constriction coefficients (``w = 0.7298``,
    ``c1 = c2 = 1.49618``), the standard of SPSO 2007/2011: a swarm of 8-16 particles
    converges within a few dozen iterations, which fits LM evaluation budgets better than the
    exploratory ``w = 0.9, c1 = 0.5, c2 = 0.3`` of pyswarms' examples.

    Attributes:
        c1: cognitive coefficient (pull towards the particle's own best).
        c2: social coefficient (pull towards the neighbourhood best).
        w: inertia weight.
        topology: ``"global"`` (pyswarms ``Star``) or ``"local"`` (pyswarms ``Ring``).
        k: neighbours per particle for the local topology (``1 <= k <= population``).
        p: Minkowski norm (1 or 2) for the local topology's neighbour distances.
        clamp: optional maximum speed per step as a fraction of each dimension's span.
        boundary: pyswarms boundary handler for particles that leave the box.
    """

    c1: float = 1.49618
    c2: float = 1.49618
    w: float = 0.7298
    topology: str = "global"
    k: int = 3
    p: int = 2
    clamp: float | None = None
    boundary: str = "reflective"

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise UserError(f"pso.topology: {self.topology!r} is not one of {TOPOLOGIES}")
        if self.boundary not in BOUNDARIES:
            raise UserError(f"pso.boundary: {self.boundary!r} is not one of {BOUNDARIES}")
        if self.p not in (1, 2):
            raise UserError(f"pso.p: must be 1 or 2, got {self.p!r}")
        if self.k < 1:
            raise UserError(f"pso.k: must be >= 1, got {self.k}")
        if self.clamp is not None and not self.clamp > 0:
            raise UserError(f"pso.clamp: must be > 0 or None, got {self.clamp}")
        for key in ("c1", "c2", "w"):
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise UserError(f"pso.{key}: must be a finite number >= 0, got {value!r}")


def velocity_update(
    velocity: np.ndarray,
    position: np.ndarray,
    pbest_pos: np.ndarray,
    best_pos: np.ndarray,
    *,
    c1: float,
    c2: float,
    w: float,
    rng: np.random.Generator | np.random.RandomState,
    clamp: float | None = None,
) -> np.ndarray:
    """One PSO velocity step, ``w v + c1 r1 (pbest - x) + c2 r2 (best - x)``.

    Draws ``r1`` then ``r2`` (each ``(n, dim)``, uniform on ``[0, 1)``) from ``rng`` in the order
    pyswarms' ``compute_velocity`` draws them from the global RNG, so a ``RandomState`` seeded
    like ``np.random`` reproduces pyswarms exactly.

    Args:
        velocity: ``(n, dim)`` current velocities.
        position: ``(n, dim)`` current positions.
        pbest_pos: ``(n, dim)`` personal best positions.
        best_pos: ``(dim,)`` global best or ``(n, dim)`` per-particle neighbourhood best.
        c1: cognitive coefficient.
        c2: social coefficient.
        w: inertia weight.
        rng: source of the random coefficients.
        clamp: if set, every component is clipped to ``[-clamp, clamp]``.

    Returns:
        ``(n, dim)`` new velocities.
    """
    r1 = rng.uniform(0, 1, position.shape)
    r2 = rng.uniform(0, 1, position.shape)
    new = w * velocity + c1 * r1 * (pbest_pos - position) + c2 * r2 * (best_pos - position)
    if clamp is not None:
        new = np.clip(new, -clamp, clamp)
    return new


class PSO(Strategy):
    """Particle swarm (maximising) over a box; one :meth:`ask` returns the whole swarm.

    ``ask(n)`` needs ``n == population`` and returns the current positions ``(population, dim)``
    (repeated asks without a tell return the same swarm); ``tell`` takes the values of exactly
    those positions, updates personal and neighbourhood bests and moves the swarm.

    Args:
        box: the search box.
        seed: seed of the private generator (initial swarm and every velocity update).
        population: swarm size.
        **settings: fields of :class:`PSOSettings`.
    """

    name: ClassVar[str] = "pso"
    traits = StrategyTraits(ordinal=True)
    settings_schema: ClassVar[type] = PSOSettings

    def __init__(self, box: Box, seed: int = 0, population: int = 8, **settings: Any) -> None:
        super().__init__(box, seed=seed, population=population, **settings)
        self.config = PSOSettings(**settings)
        if self.config.topology == "local" and self.config.k > population:
            raise UserError(f"pso.k: must be <= population ({population}), got {self.config.k}")
        half = np.where(box.integer, 0.5, 0.0)
        self._lo = box.lower - half  # (dim,)
        self._span = box.upper + half - self._lo  # (dim,)
        self._unit = (np.zeros(box.dim), np.ones(box.dim))
        self.topology = Star() if self.config.topology == "global" else Ring(static=False)
        self._boundary = BoundaryHandler(strategy=self.config.boundary)
        position = self.rng.uniform(0, 1, (population, box.dim))
        # SPSO 2007 initial velocity: half the way to another uniform point.
        velocity = (self.rng.uniform(0, 1, (population, box.dim)) - position) / 2
        self.swarm = Swarm(
            position=position,
            velocity=velocity,
            options={"c1": self.config.c1, "c2": self.config.c2, "w": self.config.w},
            pbest_pos=position.copy(),
            pbest_cost=np.full(population, np.inf),
            best_pos=position[0].copy(),
        )
        self.iteration = 0

    def positions(self) -> np.ndarray:
        """``(population, dim)`` current swarm positions in box coordinates (not rounded)."""
        return self._lo + self.swarm.position * self._span

    def _ask(self, n: int) -> np.ndarray:
        if n != self.population:
            raise ValueError(
                f"pso: ask(n) must ask for the whole swarm, n == population == "
                f"{self.population}; got n={n}"
            )
        return self.positions()

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        if x.shape != (self.population, self.box.dim) or not np.allclose(
            x, self.box.clip(self.positions())
        ):
            raise ValueError(
                f"pso: tell needs the {self.population} positions of the last ask, in order; "
                f"got x of shape {x.shape} that differs from them"
            )
        swarm = self.swarm
        swarm.current_cost = -values  # pyswarms minimises; -inf values become +inf costs
        swarm.pbest_pos, swarm.pbest_cost = compute_pbest(swarm)
        if self.config.topology == "global":
            swarm.best_pos, swarm.best_cost = self.topology.compute_gbest(swarm)
        else:
            swarm.best_pos, swarm.best_cost = self.topology.compute_gbest(
                swarm, p=self.config.p, k=self.config.k
            )
        swarm.velocity = velocity_update(
            swarm.velocity,
            swarm.position,
            swarm.pbest_pos,
            swarm.best_pos,
            c1=self.config.c1,
            c2=self.config.c2,
            w=self.config.w,
            rng=self.rng,
            clamp=self.config.clamp,
        )
        swarm.position = self.topology.compute_position(swarm, self._unit, self._boundary)
        self.iteration += 1
