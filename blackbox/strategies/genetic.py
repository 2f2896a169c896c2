"""A small genetic algorithm on token sequences whose mutation is any proposal operator.

Each generation: tournament selection of two parents, uniform crossover (with probability
``crossover``), then one mutation drawn from the proposal mix applied to the crossed child;
survivors are the best ``population`` of parents + children (mu + lambda).  Fitness is
``value - fluency_weight * xentropy`` (``xentropy`` from ``tell(..., extra=ev.extra)``).

``mutation="random_replace"`` gives "GA + random mutation"; ``mutation={"gradient_topk": 1.0}``
gives "GA + EPO proposals": the gradient (and next-token logits) of each child's first parent
guide its mutation, at 3 forward-pass equivalents per distinct parent (``pop_extra_cost``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from blackbox.api import StrategyTraits
from blackbox.errors import UserError
from blackbox.strategies.base import Box
from blackbox.strategies.epo import GradientGuided
from blackbox.strategies.proposals import ProposalMix


def tournament(fitness: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` winners of ``n`` tournaments of ``size`` random entrants each (pure given rng)."""
    entrants = rng.integers(0, fitness.size, size=(n, max(1, size)))  # (n, size)
    return entrants[np.arange(n), np.argmax(fitness[entrants], axis=1)]


def uniform_crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(c, n)`` children taking each position from ``a`` or ``b`` ``(c, n)`` at random."""
    return np.where(rng.random(a.shape) < 0.5, a, b)


class TokenGA(GradientGuided):
    """Genetic algorithm over a token space's box.

    Args:
        box: the token space's box.
        seed: RNG seed.
        population: survivors per generation (and children per ask).
        mutation: proposal mix (name or name -> probability), see ``blackbox.strategies.proposals``.
        mutation_settings: per-operator keyword arguments (e.g. ``{"gradient_topk": {"k": 64}}``).
        crossover: probability that a child is a crossover of two parents.
        tournament_size: entrants per tournament.
        fluency_weight: lambda in the fitness ``value - lambda * xentropy``.
    """

    name: ClassVar[str] = "token_ga"
    traits = StrategyTraits(needs_vocabulary=True)

    @classmethod
    def traits_for(cls, settings: dict[str, Any]) -> StrategyTraits:
        mix = ProposalMix(
            settings.get("mutation", "random_replace"),
            settings.get("mutation_settings"),
            "token_ga.mutation",
            "token_ga.mutation_settings",
        )
        return StrategyTraits(
            needs_gradients=mix.needs_grad or mix.needs_logits, needs_vocabulary=True
        )

    def __init__(
        self,
        box: Box,
        seed: int = 0,
        population: int = 16,
        mutation: Mapping[str, float] | str = "random_replace",
        mutation_settings: Mapping[str, Mapping[str, Any]] | None = None,
        crossover: float = 0.5,
        tournament_size: int = 3,
        fluency_weight: float = 0.0,
        **settings: Any,
    ) -> None:
        super().__init__(box, seed=seed, population=population, **settings)
        if not (isinstance(crossover, int | float) and 0 <= crossover <= 1):
            raise UserError(f"token_ga.crossover: must be in [0, 1], got {crossover!r}")
        if isinstance(tournament_size, bool) or not (
            isinstance(tournament_size, int) and tournament_size >= 1
        ):
            raise UserError(
                f"token_ga.tournament_size: must be a whole number >= 1, got {tournament_size!r}"
            )
        if not (isinstance(fluency_weight, int | float) and 0 <= fluency_weight < float("inf")):
            raise UserError(
                f"token_ga.fluency_weight: must be a finite number >= 0, got {fluency_weight!r}"
            )
        self.mix = ProposalMix(
            mutation, mutation_settings, "token_ga.mutation", "token_ga.mutation_settings"
        )
        self.crossover = float(crossover)
        self.tournament_size = int(tournament_size)
        self.fluency_weight = float(fluency_weight)
        self.pop_x: np.ndarray | None = None  # (P, n)
        self.pop_fit = np.zeros(0)

    def _has_parents(self) -> bool:
        return self.pop_x is not None

    def _ask(self, n: int) -> np.ndarray:
        if self.pop_x is None:
            return self.box.sample(n, self.rng)
        first = tournament(self.pop_fit, n, self.tournament_size, self.rng)
        second = tournament(self.pop_fit, n, self.tournament_size, self.rng)
        a, b = self.pop_x[first], self.pop_x[second]
        cross = uniform_crossover(a, b, self.rng)
        use = self.rng.random(n) < self.crossover
        base = np.where(use[:, None], cross, a)  # (n, dim)
        uniq, rows = np.unique(first, return_inverse=True)
        inputs = self._inputs(self.pop_x[uniq], np.full(uniq.size, self.fluency_weight), self.mix)
        inputs.parents = base.astype(np.int64)
        return self._mutate(inputs, rows.reshape(-1)).astype(float)

    def _mutate(self, inputs: Any, grad_rows: np.ndarray) -> np.ndarray:
        """Mutate every row of ``inputs.parents``; child ``j`` reads model info of ``grad_rows[j]``."""
        n = len(inputs.parents)
        if inputs.grad is not None or inputs.next_logits is not None:
            # operators index grad/logits with the parents' rows: give each child its own view
            inputs.grad = None if inputs.grad is None else inputs.grad[grad_rows]
            if inputs.next_logits is not None:
                inputs.next_logits = inputs.next_logits[grad_rows]
        return self._propose(self.mix, inputs, np.arange(n))

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        xent = self._xentropy(x, values) if self.fluency_weight else np.zeros(len(x))
        fit = values - self.fluency_weight * np.where(np.isfinite(xent), xent, np.inf)
        fit = np.where(np.isfinite(fit), fit, -np.inf)
        if self.pop_x is None:
            pool_x, pool_f = x, fit
        else:
            pool_x = np.concatenate([self.pop_x, x])
            pool_f = np.concatenate([self.pop_fit, fit])
        if not np.isfinite(pool_f).any():
            return
        keep = np.argsort(-pool_f, kind="stable")[: self.population]
        self.pop_x, self.pop_fit = pool_x[keep].copy(), pool_f[keep].copy()
