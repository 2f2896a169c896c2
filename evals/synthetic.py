"""Closed-form objectives over box points (tests, conformance, tuning studies)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from blackbox.api import POINT, Evaluation, ObjectiveTraits, PointIntervention
from blackbox.evals.base import Objective


class FunctionObjective(Objective):
    """Maximise ``fn(x)`` for each candidate point ``x`` ``(dim,)`` of a box space.

    Args:
        fn: ``(n, dim) -> (n,)`` vectorised function.
        splits: objective split names accepted (all score the same function).
    """

    traits = ObjectiveTraits(interventions=frozenset({POINT}), gradients=False, per_document=False)
    metric = "value"

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        splits: Sequence[str] = ("search", "heldout"),
    ) -> None:
        super().__init__()
        self.fn = fn
        self._splits = {s: None for s in splits}
        self.calls = 0

    def n_examples(self, split: str = "search") -> int:
        return 1

    def _score(self, iv: PointIntervention, split: str, limit: int | None) -> Evaluation:  # type: ignore[override]
        x = np.asarray(iv.points, dtype=float).reshape(len(iv), -1)
        self.calls += len(iv)
        values = np.asarray(self.fn(x), dtype=float).reshape(-1)
        return Evaluation(
            values=values, metrics=[{"value": float(v)} for v in values], cost=float(len(values))
        )


def neg_sphere(center: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> -||x - center||^2`` (maximum 0 at ``center``)."""
    c = np.asarray(center, dtype=float)
    return lambda x: -np.sum((x - c) ** 2, axis=1)
