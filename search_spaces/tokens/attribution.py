"""Per-token attribution of a prompt (the Fluent Dreaming figure 1 idea).

For every position, the objective's drop when the token is replaced by its *best* substitute:
``drop_i = f(t) - max_j f(t with t_i := j)``, the substitutes ``j`` being the gradient's top-k
at that position other than the token itself (exact over the whole allowed vocabulary
when ``k >= A``).  A large drop means
the token matters; a negative drop means a better token exists there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from blackbox.strategies.proposals import topk_tokens


@dataclass(frozen=True)
class TokenAttribution:
    """Attribution of one position.

    Attributes:
        position: index in the optimised tokens.
        index: the token's box index.
        substitute: box index of the best substitute found.
        drop: ``f(prompt) - f(prompt with the substitute)``.
    """

    position: int
    index: int
    substitute: int
    drop: float


def substitution_grid(x: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``(n * k, n)`` prompts, each ``x`` ``(n,)`` with one position set from ``candidates``
    ``(n, k)`` (row ``i * k + j`` sets position ``i`` to ``candidates[i, j]``) (pure)."""
    n, k = candidates.shape
    grid = np.repeat(x[None].astype(np.int64), n * k, axis=0)
    grid[np.arange(n * k), np.repeat(np.arange(n), k)] = candidates.reshape(-1)
    return grid


def token_attribution(
    problem: Any, x: np.ndarray, k: int = 32
) -> tuple[list[TokenAttribution], float]:
    """Attribute ``x`` ``(n,)`` (box indices of ``problem.space``); returns the rows and the
    cost spent.

    Cost: one gradient pass plus ``n * k`` evaluations (rejected substitutes are free).
    """
    x = np.asarray(x, dtype=np.int64)
    space = problem.space
    allowed = space.allowed_ids
    tg = problem.token_gradients(allowed[x][None], 0.0)
    grad = tg.grad[0][:, allowed]  # (n, A)
    cand = topk_tokens(grad, k)  # (n, k)
    grid = substitution_grid(x, cand)
    ev = problem.evaluate(space.decode(grid.astype(float)))
    vals = np.where(np.isfinite(ev.values), ev.values, -np.inf).reshape(len(x), -1)  # (n, k)
    vals = np.where(cand == x[:, None], -np.inf, vals)  # a token is not its own substitute
    base = float(tg.values[0])
    rows = []
    for i in range(len(x)):
        j = int(np.argmax(vals[i]))
        rows.append(TokenAttribution(i, int(x[i]), int(cand[i, j]), base - float(vals[i, j])))
    return rows, float(tg.cost + ev.cost)
