"""Closed-form objectives over box candidates (tests, conformance, tuning studies)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from blackbox.evals.base import Evaluation, Objective


class FunctionObjective(Objective):
    """Maximise ``fn(x)`` for each candidate row ``x`` ``(dim,)``.

    Args:
        fn: ``(n, dim) -> (n,)`` vectorised function.
        splits: objective split names accepted (all score the same function).
    """

    name = "function"

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        splits: Sequence[str] = ("search", "heldout"),
    ) -> None:
        self.fn = fn
        self.splits = tuple(splits)
        self.calls = 0

    def evaluate(
        self, candidates: Sequence[Any], split: str = "search", limit: int | None = None
    ) -> Evaluation:
        if split not in self.splits:
            raise ValueError(f"split {split!r} is not one of {list(self.splits)}")
        x = np.asarray(candidates, dtype=float).reshape(len(candidates), -1)
        self.calls += len(candidates)
        values = np.asarray(self.fn(x), dtype=float).reshape(-1)
        return Evaluation(
            values=values, metrics=[{"value": float(v)} for v in values], cost=float(len(values))
        )


def neg_sphere(center: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> -||x - center||^2`` (maximum 0 at ``center``)."""
    c = np.asarray(center, dtype=float)
    return lambda x: -np.sum((x - c) ** 2, axis=1)
