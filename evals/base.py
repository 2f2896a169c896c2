"""The objective interface: score a batch of candidates in as few forward passes as possible."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Evaluation:
    """Scores of a batch of ``n`` candidates.

    Attributes:
        values: ``(n,)`` primary objective (higher is better); NaN marks a failed evaluation.
        metrics: per candidate, every metric the objective measured (flat, JSON-friendly).
        extra: ``(n, k)`` secondary objectives (for example fluency), or ``None``.
        cost: forward-pass equivalents spent: sequences run through the model (one sequence
            forward = 1, its backward = 2 more); repeats served from a cache cost 0.
    """

    values: np.ndarray
    metrics: list[dict[str, Any]] = field(default_factory=list)
    extra: np.ndarray | None = None
    cost: float = 0.0


class Objective(ABC):
    """Scores candidates of one search space on named data splits.

    ``evaluate`` takes candidates already decoded by the space; it returns one value per
    candidate.  ``split`` picks the data ("search", "validation", "test") and ``limit`` a prefix
    of that split (a fidelity).
    """

    name: ClassVar[str] = ""
    metric: str = "score"

    @abstractmethod
    def evaluate(
        self, candidates: Sequence[Any], split: str = "search", limit: int | None = None
    ) -> Evaluation: ...
