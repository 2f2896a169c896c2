"""Any optimizer of nevergrad's registry (CMA, DE, NGOpt, TwoPointsDE, ...) behind ask/tell.

The parametrization is a ``ng.p.Tuple`` of at most two bounded ``ng.p.Array`` blocks: the
continuous dims, and the integer dims with ``set_integer_casting()`` (one block each rather than
one ``Scalar`` per dim: nevergrad's per-parameter overhead dominates otherwise).  Zero-width
dimensions are held fixed outside nevergrad, which rejects them.
nevergrad minimises, so values are negated; non-finite values are told as a loss worse than
any finite loss told so far (nevergrad would clip ``inf`` with a warning).

Some optimizers draw from numpy's *global* RNG (e.g. pycma through nevergrad's CMA), which
lm-eval's ``simple_evaluate`` re-seeds on every call.  Every call into nevergrad therefore
runs inside :func:`private_global_numpy_rng`: the global state is swapped for this strategy's
own persistent stream (seeded from ``self.rng``) and restored afterwards.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from blackbox.api import StrategyTraits
from blackbox.errors import UserError
from blackbox.multiobjective import ObjectiveSpec
from blackbox.strategies.base import Box, Strategy

if TYPE_CHECKING:  # imported where used: nevergrad (and scipy.stats) take ~5 s to import
    import nevergrad as ng

BUDGET_IF_UNKNOWN = 1000
DISCRETE_FAMILIES = ("Discrete", "NGOpt", "Portfolio", "RandomSearch")
"""Optimizers whose names hold one of these treat integer coordinates as discrete values
(they can search token ids); the others move along ordered axes."""


@dataclass(frozen=True)
class NevergradSettings:
    """Settings of :class:`Nevergrad`.

    Attributes:
        optimizer: a name in ``nevergrad.optimizers.registry`` (exact, case-sensitive).
        budget: expected number of evaluations, a hint (nevergrad does not stop at it) that
            some optimizers need: the NGOpt family picks its algorithm by it, BO sizes itself
            by it.  ``None`` passes :data:`BUDGET_IF_UNKNOWN` (pass the study's evaluations).
    """

    optimizer: str = "NGOpt"
    budget: int | None = None

    def __post_init__(self) -> None:
        import nevergrad as ng

        registry = ng.optimizers.registry
        if self.optimizer not in registry:
            names = sorted(registry)
            lower = {name.lower(): name for name in names}
            close = difflib.get_close_matches(self.optimizer.lower(), list(lower), n=5, cutoff=0.5)
            hints = [lower[c] for c in close] or ["CMA", "DE", "NGOpt", "TwoPointsDE", "PSO"]
            raise UserError(
                f"nevergrad.optimizer: unknown {self.optimizer!r}; did you mean one of {hints}? "
                f"({len(names)} names in nevergrad.optimizers.registry)"
            )
        if self.budget is not None and self.budget < 1:
            raise UserError(f"nevergrad.budget: must be >= 1 or None, got {self.budget}")


@contextmanager
def private_global_numpy_rng(state: dict[str, Any]) -> Iterator[None]:
    """Run the body with numpy's global RNG set to ``state["np"]``, then restore the caller's.

    ``state["np"]`` (a ``np.random.get_state()`` tuple) is advanced in place, so successive
    bodies see one continuous private stream, whatever re-seeds the global RNG in between.
    """
    saved = np.random.get_state()
    np.random.set_state(state["np"])
    try:
        yield
    finally:
        state["np"] = np.random.get_state()
        np.random.set_state(saved)


class Nevergrad(Strategy):
    """A nevergrad optimizer (minimising a negated value) as a maximising ask/tell strategy.

    ``ask(n)`` calls ``optimizer.ask()`` ``n`` times and keeps the candidates pending in ask
    order; ``tell(x, values)`` tells the oldest ``len(x)`` pending candidates, which must be
    ``x`` in the same order.

    Args:
        box: the search box.
        seed: seed of the private generator (seeds the parametrization's random state).
        population: ``num_workers`` given to the optimizer and default batch size.
        **settings: fields of :class:`NevergradSettings`.
    """

    name: ClassVar[str] = "nevergrad"
    traits = StrategyTraits(ordinal=True)
    discrete_hint: ClassVar[str] = (
        "a discrete optimizer on token ids: DiscreteOnePlusOne, DiscreteLenglerOnePlusOne, "
        "NGOpt, Portfolio or RandomSearch"
    )
    settings_schema: ClassVar[type] = NevergradSettings

    @classmethod
    def traits_for(cls, settings: dict[str, Any]) -> StrategyTraits:
        name = str(settings.get("optimizer", NevergradSettings.optimizer))
        return StrategyTraits(ordinal=not any(f in name for f in DISCRETE_FAMILIES))

    def __init__(self, box: Box, seed: int = 0, population: int = 8, **settings: Any) -> None:
        import nevergrad as ng

        super().__init__(box, seed=seed, population=population, **settings)
        self.config = NevergradSettings(**settings)
        free = box.upper > box.lower  # (dim,) nevergrad rejects zero-width bounds
        self._blocks = [  # (indices, is_integer) of each non-empty block, in tuple order
            (idx, is_int)
            for is_int in (False, True)
            if (idx := np.flatnonzero(free & (box.integer == is_int))).size
        ]
        if not self._blocks:
            raise UserError("nevergrad: the box has no dimension with upper > lower")
        arrays = []
        for idx, is_int in self._blocks:
            lo, hi = box.lower[idx], box.upper[idx]
            array = ng.p.Array(init=(lo + hi) / 2, lower=lo, upper=hi)
            arrays.append(array.set_integer_casting() if is_int else array)
        self.parametrization = ng.p.Tuple(*arrays)
        self.parametrization.random_state = np.random.RandomState(self._draw_seed())
        self._rng_state = {"np": np.random.RandomState(self._draw_seed()).get_state()}
        self.budget = self.config.budget or BUDGET_IF_UNKNOWN
        try:
            with private_global_numpy_rng(self._rng_state):
                self.optimizer = ng.optimizers.registry[self.config.optimizer](
                    parametrization=self.parametrization,
                    budget=self.budget,
                    num_workers=population,
                )
        except ValueError as exc:  # e.g. sequential optimizers with num_workers > 1
            raise UserError(
                f"nevergrad.optimizer: {self.config.optimizer!r} with num_workers=population="
                f"{population}: {exc}"
            ) from None
        self._pending: list[ng.p.Parameter] = []
        self._worst_loss = 0.0
        self._worst_multi: np.ndarray | None = None

    def _draw_seed(self) -> int:
        return int(self.rng.integers(2**32 - 1))

    def _to_array(self, candidate: ng.p.Parameter) -> np.ndarray:
        """``(dim,)`` box point of one candidate (fixed dims filled from ``box.lower``)."""
        x = self.box.lower.copy()
        for (idx, _), block in zip(self._blocks, candidate.value):
            x[idx] = block
        return x

    def _ask(self, n: int) -> np.ndarray:
        with private_global_numpy_rng(self._rng_state):
            candidates = [self.optimizer.ask() for _ in range(n)]
        self._pending.extend(candidates)
        return np.stack([self._to_array(c) for c in candidates]).reshape(n, self.box.dim)

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        n = len(values)
        if n > len(self._pending):
            raise ValueError(
                f"nevergrad: told {n} candidates but only {len(self._pending)} pending"
            )
        told = self._pending[:n]
        asked = np.stack([self._to_array(c) for c in told])
        if not np.allclose(self.box.clip(asked), x):
            raise ValueError("nevergrad: tell x must be the pending candidates in ask order")
        spec = self.objectives
        if spec is not None and self.told_extra is not None and self.told_values is not None:
            self._tell_multi(told, spec)
            del self._pending[:n]
            return
        losses = -values
        finite = np.isfinite(losses)
        if finite.any():
            self._worst_loss = max(self._worst_loss, float(losses[finite].max()))
        penalty = self._worst_loss + 1.0 + abs(self._worst_loss)
        with private_global_numpy_rng(self._rng_state):
            for candidate, loss in zip(told, losses):
                self.optimizer.tell(candidate, float(loss) if np.isfinite(loss) else penalty)
        del self._pending[:n]

    def _tell_multi(self, told: list[ng.p.Parameter], spec: ObjectiveSpec) -> None:
        """Nevergrad's multi-objective mode: the losses ``[-value, side columns...]`` (one
        loss when only the primary is a dimension), the bounded columns' excess as its
        ``constraint_violation``; a non-finite row is told the worst losses seen plus one."""
        rows = spec.objectives(self.told_values, self.told_extra) * np.array(  # type: ignore[arg-type]
            [-1.0 if d == "maximize" else 1.0 for d in spec.directions]
        )  # (n, 1 + k) losses
        viol = np.maximum(spec.constraints(self.told_extra), 0.0)  # type: ignore[arg-type]
        ok = np.isfinite(rows).all(1) & np.isfinite(viol).all(1)
        if ok.any():
            seen = rows[ok].max(0)
            self._worst_multi = (
                seen if self._worst_multi is None else np.maximum(self._worst_multi, seen)
            )
        worst = self._worst_multi if self._worst_multi is not None else np.zeros(rows.shape[1])
        with private_global_numpy_rng(self._rng_state):
            for candidate, row, v, good in zip(told, rows, viol, ok):
                loss = row if good else worst + 1.0 + np.abs(worst)
                loss_arg: Any = float(loss[0]) if len(loss) == 1 else [float(x) for x in loss]
                cv = [float(x) for x in v] if good else [1.0] * max(1, v.size)
                self.optimizer.tell(candidate, loss_arg, constraint_violation=cv or None)
