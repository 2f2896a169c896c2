"""Pareto fronts of (feature, cross-entropy) pairs: maximise the feature, minimise the CE.

Pure functions on arrays plus a tiny record type; used by EPO to keep the front over a whole run
and by reports to print and plot it.  Which points are on a front is decided by the suite's one
Pareto routine, :func:`blackbox.multiobjective.pareto_mask`, with the directions
:data:`FLUENCY`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blackbox.multiobjective import SIDE_DIRECTION, pareto_mask

FLUENCY = ("maximize", SIDE_DIRECTION)
"""Directions of a fluency front's columns: (feature value, self cross-entropy)."""


@dataclass(frozen=True)
class FrontPoint:
    """One prompt on (or offered to) a front.

    Attributes:
        x: the prompt as a tuple of box indices (or ids).
        value: feature value (maximised).
        xentropy: self cross-entropy (minimised).
    """

    x: tuple[int, ...]
    value: float
    xentropy: float


def update_front(front: Sequence[FrontPoint], new: Sequence[FrontPoint]) -> list[FrontPoint]:
    """The non-dominated points of ``front + new``, one per prompt, sorted by cross-entropy."""
    seen: dict[tuple[int, ...], FrontPoint] = {}
    for p in [*front, *new]:
        seen.setdefault(p.x, p)
    pts = list(seen.values())
    if not pts:
        return []
    mask = pareto_mask(np.array([[p.value, p.xentropy] for p in pts], dtype=float), FLUENCY)
    return sorted((p for p, m in zip(pts, mask) if m), key=lambda p: (p.xentropy, -p.value))


def select_per_weight(values: np.ndarray, xentropy: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """``(M,)`` index of the best point for each ``lambda`` under ``value - lambda * xentropy``.

    Selection with replacement: one point may win several lambdas.  Non-finite points lose.
    """
    v = np.asarray(values, dtype=float)[None, :]
    c = np.asarray(xentropy, dtype=float)[None, :]
    lam = np.asarray(lambdas, dtype=float)[:, None]
    c = np.where(np.isfinite(c), c, np.inf)
    with np.errstate(invalid="ignore"):
        score = np.where(lam > 0, v - lam * c, v)  # (M, n); lambda 0 ignores the CE
    score = np.where(np.isfinite(score), score, -np.inf)
    return np.argmax(score, axis=1)


def front_table(front: Sequence[FrontPoint], text: Callable[[tuple[int, ...]], str] = str) -> str:
    """A plain-text table (cross-entropy, value, prompt) of a front."""
    lines = [f"{'xentropy':>9}  {'value':>10}  prompt"]
    for p in front:
        lines.append(f"{p.xentropy:9.3f}  {p.value:10.4f}  {text(p.x)!r}")
    return "\n".join(lines)


def plot_front(
    front: Sequence[FrontPoint],
    path: str | Path,
    text: Callable[[tuple[int, ...]], str] | None = None,
    value_name: str = "feature",
) -> Path:
    """Save a scatter of cross-entropy (x) against value (y), prompts as labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [p.xentropy for p in front]
    ys = [p.value for p in front]
    ax.plot(xs, ys, "o-", ms=4)
    if text is not None:
        for p in front:
            ax.annotate(text(p.x)[:40], (p.xentropy, p.value), fontsize=6, rotation=15)
    ax.set_xlabel("self cross-entropy (lower = more fluent)")
    ax.set_ylabel(value_name)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
