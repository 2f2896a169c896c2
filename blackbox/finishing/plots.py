"""A run's plots (best so far, the steering landscape) and the trial queries behind them,
rebuilt from its Optuna storage alone (a leaf: optuna, numpy and matplotlib only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState


def search_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The search-phase trials in evaluation order (generation, index)."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("kind") == "search"
        and t.state in (TrialState.COMPLETE, TrialState.FAIL)
    ]
    return sorted(
        trials, key=lambda t: (t.user_attrs.get("generation", 0), t.user_attrs.get("index", 0))
    )


def best_so_far(values: np.ndarray) -> np.ndarray:
    """``(n,)`` running maximum, ignoring NaN (NaN until the first finite value)."""
    out = np.full(len(values), np.nan)
    best = -np.inf
    for i, v in enumerate(values):
        if np.isfinite(v) and v > best:
            best = v
        out[i] = best if np.isfinite(best) else np.nan
    return out


def plot_run(
    study: optuna.Study, space: Any, run_dir: Path, baseline: float | None = None
) -> list[Path]:
    """Write ``best_so_far.png`` (with ``baseline``, the first baseline's search score, as a
    line) and (steering) ``landscape.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = search_trials(study)
    if not trials:
        return []
    values = np.array([t.values[0] if t.values else np.nan for t in trials], dtype=float)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(values) + 1), best_so_far(values), label="best so far")
    ax.scatter(np.arange(1, len(values) + 1), values, s=8, alpha=0.4, label="evaluations")
    if baseline is not None and np.isfinite(baseline):
        ax.axhline(baseline, color="gray", linestyle="--", label="baseline (unsteered)")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("search score")
    ax.set_title(study.study_name)
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(run_dir / "best_so_far.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    vectors = [v.name for v in getattr(space, "vectors", [])]
    if vectors:
        fig, axes = plt.subplots(1, len(vectors), figsize=(5 * len(vectors), 4), squeeze=False)
        for ax, name in zip(axes[0], vectors):
            cand = [t.user_attrs.get("candidate", {}) for t in trials]
            layers = np.array([c.get(f"{name}.layer", np.nan) for c in cand], dtype=float)
            coeffs = np.array([c.get(f"{name}.coeff", np.nan) for c in cand], dtype=float)
            sc = ax.scatter(layers, coeffs, c=values, cmap="viridis", s=25)
            ax.set_xlabel(f"{name}: layer")
            ax.set_ylabel(f"{name}: coefficient (x residual norm)")
            fig.colorbar(sc, ax=ax, label="score")
        fig.tight_layout()
        paths.append(run_dir / "landscape.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
