"""Seeded subsamples of documents (pure)."""

from __future__ import annotations

from typing import Any

import numpy as np


def size_warning(field: str, asked: int, available: int, split: str) -> str:
    """The line that says a requested sample is larger than its split (all of it is used)."""
    return (
        f"{field}: {asked} is more than the {available} documents of split {split!r}; "
        f"all {available} are used"
    )


def subsample(
    n_total: int,
    size: int | None,
    seed: int,
    exclude: set[int] | None = None,
    labels: list[Any] | None = None,
) -> list[int]:
    """A seeded subsample of ``size`` indices of ``range(n_total)`` (sorted); with ``labels``,
    equal numbers per label (topped up from the rest when a label runs out).

    Stratifying the search split matters for classification tasks: on an unbalanced sample a
    constant answer scores the majority share, and the search learns to flip the model's
    default answer instead of making it discriminate.
    """
    pool = [i for i in range(n_total) if not exclude or i not in exclude]
    rng = np.random.default_rng(seed)
    if size is None or size >= len(pool):
        return pool
    if labels is None:
        return sorted(int(i) for i in rng.choice(pool, size=size, replace=False))
    groups: dict[str, list[int]] = {}
    for i in pool:
        groups.setdefault(str(labels[i]), []).append(i)
    keys = sorted(groups)
    chosen: list[int] = []
    for k, key in enumerate(keys):
        want = size // len(keys) + (1 if k < size % len(keys) else 0)
        members = groups[key]
        take = min(want, len(members))
        chosen.extend(int(i) for i in rng.choice(members, size=take, replace=False))
    if len(chosen) < size:  # a small class ran out: top up from the rest
        rest = sorted(set(pool) - set(chosen))
        chosen.extend(int(i) for i in rng.choice(rest, size=size - len(chosen), replace=False))
    return sorted(chosen)
