"""Several objectives and constraints over one evaluation: pure functions on arrays.

A study with side effects scores each candidate with its primary value (maximised) and ``k``
side columns (its evaluation's ``extra``: KL to the base model, guard-task drops, fluency),
each minimised and optionally bounded (``column <= bound``).  :class:`ObjectiveSpec` says which
columns are Pareto dimensions and which are bounded; strategies and the selection read it.

Constraint handling, one rule everywhere (Deb 2000's feasibility rule):

- a *feasible* candidate (every bounded column within its bound) beats every infeasible one;
- between feasible candidates the primary value decides (a scalar strategy: the scalarisation
  ``value - sum_i weight_i * column_i``);
- between infeasible ones, the smaller total violation ``sum_j max(0, c_j - b_j) / s_j`` wins
  (``s_j = b_j``, or 1 for a zero bound, so KL nats and guard points add up in bound units).

:func:`scalarise` folds that rule into one number for strategies with a single value (PSO,
nevergrad single-objective): feasible ones keep their (weighted) value, infeasible ones get
``INFEASIBLE - violation``, far below any value a real objective reaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INFEASIBLE = -1.0e6
"""Scalar value of an infeasible candidate before its violation is subtracted."""

SIDE_DIRECTION = "minimize"
"""The direction of every side column (an evaluation's ``extra``: KL, guard-task drops, self
cross-entropy), as the objectives declare it (``Objective.extra_directions``)."""


@dataclass(frozen=True)
class SideColumn:
    """One side column of ``extra``.

    Attributes:
        name: column name (``kl``, ``drop:rte``, ``xentropy``).
        index: its column in the evaluation's ``extra``.
        bound: search constraint ``column <= bound`` (``None``: unbounded).
        select_bound: selection bound (``None``: the search bound).
        objective: a Pareto dimension (minimised).
        weight: scalarisation weight (``value - weight * column``).
    """

    name: str
    index: int
    bound: float | None = None
    select_bound: float | None = None
    objective: bool = True
    weight: float = 0.0

    def limit(self, select: bool = False) -> float | None:
        """The bound of the search, or of the selection (its own, else the search's)."""
        return self.select_bound if select and self.select_bound is not None else self.bound


@dataclass(frozen=True)
class ObjectiveSpec:
    """The primary objective (maximised) and its side columns (minimised)."""

    primary: str
    columns: tuple[SideColumn, ...]

    @property
    def names(self) -> list[str]:
        """Objective names in study order: the primary, then the Pareto side columns."""
        return [self.primary, *(c.name for c in self.columns if c.objective)]

    @property
    def directions(self) -> list[str]:
        return ["maximize", *(SIDE_DIRECTION for c in self.columns if c.objective)]

    @property
    def bounded(self) -> list[SideColumn]:
        return [c for c in self.columns if c.bound is not None]

    def objectives(self, values: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """``(n, 1 + k)`` the primary and the Pareto side columns (raw, as measured)."""
        cols = [c.index for c in self.columns if c.objective]
        return np.column_stack([np.asarray(values, float), _extra(extra, len(values))[:, cols]])

    def constraints(self, extra: np.ndarray, select: bool = False) -> np.ndarray:
        """``(n, m)`` ``column - bound`` of the bounded columns (``<= 0``: satisfied; NaN
        columns count as violated: ``inf``)."""
        cols = [c for c in self.columns if c.limit(select) is not None]
        e = _extra(extra, len(extra))
        out = np.empty((len(e), len(cols)))
        for j, c in enumerate(cols):
            bound = float(c.limit(select))  # type: ignore[arg-type]
            col = e[:, c.index]
            out[:, j] = np.where(np.isfinite(col), col - bound, np.inf)
        return out

    def violation(self, extra: np.ndarray, select: bool = False) -> np.ndarray:
        """``(n,)`` total violation in bound units (0: feasible)."""
        scales = np.array(
            [float(c.limit(select)) or 1.0 for c in self.columns if c.limit(select) is not None]
        )
        c = self.constraints(extra, select)
        if not c.size:
            return np.zeros(len(c))
        return (np.maximum(c, 0.0) / np.where(scales > 0, scales, 1.0)).sum(1)


def _extra(extra: np.ndarray | None, n: int) -> np.ndarray:
    if extra is None:
        return np.full((n, 0), np.nan)
    return np.asarray(extra, dtype=float).reshape(n, -1)


def scalarise(values: np.ndarray, extra: np.ndarray | None, spec: ObjectiveSpec) -> np.ndarray:
    """``(n,)`` one number per candidate under the feasibility rule (module docstring).

    Non-finite primary values stay ``-inf``; a NaN side column counts as an infinite violation
    when bounded, and as 0 in the weighted sum otherwise.
    """
    v = np.asarray(values, dtype=float).reshape(-1)
    e = _extra(extra, len(v))
    out = v.copy()
    for c in spec.columns:
        if c.weight:
            out = out - c.weight * np.nan_to_num(e[:, c.index], nan=0.0)
    viol = spec.violation(e)
    out = np.where(viol > 0, INFEASIBLE - np.minimum(viol, 1e5), out)
    return np.where(np.isfinite(v), out, -np.inf)


def pareto_mask(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """``(n,)`` bool: rows of ``points`` ``(n, k)`` that no other row dominates.

    The suite's one Pareto routine: the side-effects front, EPO's fluency front
    (:mod:`blackbox.pareto`), the token run's ``pareto.png`` and the report's all call it.

    ``directions[j]`` is ``"maximize"`` or ``"minimize"``.  Row ``j`` dominates row ``i`` when
    it is at least as good in every column and better in one.  Rows with a non-finite entry
    (NaN, +-inf) are never on the front and dominate nothing; exact duplicates are all kept.
    """
    p = np.asarray(points, dtype=float)
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    g = p * sign  # larger is better in every column
    ok = np.isfinite(g).all(1)
    ge = (g[None, :, :] >= g[:, None, :]).all(-1)  # [i, j]: j at least as good everywhere
    gt = (g[None, :, :] > g[:, None, :]).any(-1)
    dominated = (ge & gt & ok[None, :]).any(1)
    return ok & ~dominated


def choose(values: np.ndarray, extra: np.ndarray | None, spec: ObjectiveSpec) -> int | None:
    """The selection rule: index of the best primary value among candidates within every
    selection bound (ties: the smallest sum of side columns in bound units); if none is, the
    one of least violation (ties: higher value).  ``None``
    when no candidate has a finite value."""
    v = np.asarray(values, dtype=float).reshape(-1)
    ok = np.isfinite(v)
    if not ok.any():
        return None
    e = _extra(extra, len(v))
    viol = spec.violation(e, select=True)
    feasible = ok & (viol <= 0)
    if feasible.any():
        top = feasible & (v == np.max(np.where(feasible, v, -np.inf)))
        # ties on the score: the smallest side columns (in bound units) win
        scales = np.array([c.limit(True) or 1.0 for c in spec.columns], dtype=float)
        side = np.nan_to_num(e[:, [c.index for c in spec.columns]] / scales, nan=np.inf)
        return int(np.argmin(np.where(top, side.sum(1), np.inf)))
    order = np.lexsort((-np.where(ok, v, -np.inf), np.where(ok, viol, np.inf)))
    return int(order[0])
