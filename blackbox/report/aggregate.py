"""Pure aggregation of many runs: best-so-far curves on a common budget grid, median and
interquartile band across seeds, budget to reach a threshold, a summary table per strategy.

Everything here works on plain arrays and :class:`RunCurve` records, so it is tested without a
model or a storage; :mod:`blackbox.report.compare` turns Optuna studies into these records.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blackbox.finishing.plots import best_so_far


@dataclass
class RunCurve:
    """One run's search, in evaluation order.

    Attributes:
        name: study name.
        label: the strategy's curve name.
        seed: the strategy seed (``None`` if unknown).
        values: ``(n,)`` search scores (NaN for failed evaluations).
        cost: ``(n,)`` cumulative forward-pass equivalents after each evaluation.
        seconds: ``(n,)`` cumulative evaluation wall seconds after each evaluation.
        heldout_best: held-out score of the run's best candidate, if scored.
        baseline: search score of the unintervened baseline, if recorded.
        heldout_baseline: held-out score of the baseline, if recorded.
        heldout_ci: the 95% interval of ``heldout_best`` over documents, if recorded.
        candidates: described candidates (dicts), one per evaluation.
        extra: secondary objectives (dicts), one per evaluation, or ``None``.
        space: the search space's name in the comparison (``None`` if unknown).
    """

    name: str
    label: str
    seed: int | None
    values: np.ndarray
    cost: np.ndarray
    seconds: np.ndarray
    heldout_best: float | None = None
    baseline: float | None = None
    heldout_baseline: float | None = None
    heldout_ci: tuple[float, float] | None = None  # 95% bootstrap interval over documents
    candidates: list[dict[str, Any]] = field(default_factory=list)
    extra: list[dict[str, float]] | None = None
    space: str | None = None

    @property
    def best(self) -> np.ndarray:
        """``(n,)`` best-so-far (monotone non-decreasing, NaN before the first finite value)."""
        return best_so_far(np.asarray(self.values, dtype=float))

    @property
    def final(self) -> float:
        b = self.best
        return float(b[-1]) if len(b) else math.nan


def step_at(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Step interpolation: at each grid point, ``y`` of the last ``x <= g`` (NaN before ``x[0]``).

    ``x`` must be non-decreasing (cumulative cost or seconds); a run that ended before a grid
    point holds its last value there.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    grid = np.asarray(grid, dtype=float)
    idx = np.searchsorted(x, grid, side="right") - 1
    out = np.full(grid.shape, np.nan)
    ok = idx >= 0
    out[ok] = y[idx[ok]]
    return out


def common_grid(
    xs: Sequence[np.ndarray], limit: float | None = None, points: int = 200
) -> np.ndarray:
    """A grid from 0 to ``limit`` (default: the largest final x) shared by every run."""
    ends = [float(x[-1]) for x in xs if len(x)]
    top = limit if limit is not None else (max(ends) if ends else 1.0)
    return np.linspace(0.0, max(top, 1e-12), points)


def band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, 25th and 75th percentiles across runs (axis 0), ignoring NaN entries."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        q25, med, q75 = np.nanpercentile(curves, [25, 50, 75], axis=0)
    return med, q25, q75


def budget_to_reach(x: np.ndarray, best: np.ndarray, threshold: float) -> float:
    """The first ``x`` at which ``best >= threshold`` (NaN if never)."""
    hit = np.flatnonzero(np.nan_to_num(np.asarray(best, dtype=float), nan=-np.inf) >= threshold)
    return float(np.asarray(x, dtype=float)[hit[0]]) if hit.size else math.nan


def group(runs: Sequence[RunCurve]) -> dict[str, list[RunCurve]]:
    """Runs by label, in first-seen order, each group sorted by seed."""
    out: dict[str, list[RunCurve]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, r.name))
    return out


def curves_on_grid(
    runs: Sequence[RunCurve], axis: str, grid: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{label: (median, q25, q75)}`` of best-so-far against ``axis`` ("cost"/"seconds")."""
    out = {}
    for label, rs in group(runs).items():
        rows = np.stack([step_at(getattr(r, axis), r.best, grid) for r in rs])
        out[label] = band(rows)
    return out


def default_threshold(runs: Sequence[RunCurve]) -> float:
    """The median of the runs' final bests (about half of them reach it)."""
    finals = [r.final for r in runs if math.isfinite(r.final)]
    return float(np.median(finals)) if finals else math.nan


def _nanmedian(v: Sequence[float]) -> float:
    a = np.array([x for x in v if x is not None], dtype=float)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else math.nan


def iqr(v: Sequence[float]) -> float:
    """Interquartile range of the finite values of ``v`` (NaN when there are none)."""
    a = np.array([x for x in v if x is not None], dtype=float)
    a = a[np.isfinite(a)]
    return float(np.subtract(*np.percentile(a, [75, 25]))) if a.size else math.nan


def summary_rows(
    runs: Sequence[RunCurve], threshold: float, axis: str = "cost", limit: float | None = None
) -> list[dict[str, Any]]:
    """One row per strategy: runs, median/IQR/min/max of final bests, median held-out score,
    median budget to reach ``threshold`` among runs that did, and how many never did.

    With ``limit`` (the budget), a run's final best and its reaching the threshold only count
    evaluations at or below it (the last generation may overshoot the budget).
    """
    rows = []
    for label, rs in group(runs).items():
        finals, reach, held = [], [], []
        for r in rs:
            x = np.asarray(getattr(r, axis), dtype=float)
            b = r.best
            if limit is not None:
                keep = x <= limit + 1e-9
                x, b = x[keep], b[keep]
            finals.append(float(b[-1]) if len(b) else math.nan)
            reach.append(budget_to_reach(x, b, threshold) if math.isfinite(threshold) else math.nan)
            held.append(r.heldout_best)
        reached = [v for v in reach if math.isfinite(v)]
        fin = np.array(finals, dtype=float)
        rows.append(
            {
                "label": label,
                "runs": len(rs),
                "median_best": _nanmedian(finals),
                "iqr_best": iqr(finals),
                "min_best": float(np.nanmin(fin)) if np.isfinite(fin).any() else math.nan,
                "max_best": float(np.nanmax(fin)) if np.isfinite(fin).any() else math.nan,
                "median_heldout": _nanmedian(held),
                "heldout": held,
                "median_to_threshold": float(np.median(reached)) if reached else math.nan,
                "never_reached": len(rs) - len(reached),
            }
        )
    return rows
