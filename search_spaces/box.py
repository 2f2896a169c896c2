"""A plain box space: a candidate is the row itself (as a tuple).  For closed-form objectives,
strategy conformance tests and hyperparameter studies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from blackbox.api import PointIntervention, SpaceTraits
from blackbox.search_spaces.base import SearchSpace
from blackbox.strategies.base import Box


class BoxSpace(SearchSpace[tuple[float, ...]]):
    """Identity mapping between box rows and candidates.

    Args:
        box: the box.
        baseline_point: optional ``(dim,)`` reference candidate evaluated before the search.
    """

    traits = SpaceTraits("point", continuous=True)

    def __init__(self, box: Box, baseline_point: Sequence[float] | None = None) -> None:
        self._box = box
        self._baseline = None if baseline_point is None else tuple(float(v) for v in baseline_point)

    @property
    def box(self) -> Box:
        return self._box

    def decode(self, x: np.ndarray) -> list[tuple[float, ...]]:
        return [tuple(float(v) for v in row) for row in self.box.clip(np.atleast_2d(x))]

    def encode(self, candidates: Sequence[tuple[float, ...]]) -> np.ndarray:
        return np.asarray(candidates, dtype=float).reshape(len(candidates), self.dim)

    def intervention(self, candidates: Sequence[tuple[float, ...]]) -> PointIntervention:
        points = np.asarray(candidates, dtype=float).reshape(len(candidates), self.dim)
        return PointIntervention(points, [tuple(r) for r in points.tolist()])

    def baselines(self) -> dict[str, tuple[float, ...]]:
        return {} if self._baseline is None else {"baseline": self._baseline}

    def describe(self, candidate: tuple[float, ...]) -> dict[str, Any]:
        return dict(zip(self.box.names, candidate))
