"""Token rows and the queries read from them; packed tree rows and bin packing (pure).

A task's requests become :class:`Rows` (see :func:`~blackbox.evals.lm_eval_requests.merge_rows`):
plain sequences, or *packed trees* (a shared context once with every continuation after it,
each token attending to its ancestors only, at the position it would have alone), packed side
by side without padding by :func:`bin_pack`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Rows:
    """Token rows and the queries read from them.

    Attributes:
        tokens: ``R`` input sequences (lists of token ids).
        q_row: ``(Q,)`` row of each query.
        q_pos: ``(Q,)`` position in its row whose next-token distribution is read.
        q_tok: ``(Q,)`` the target token scored there.
        parents: per row, ``None`` for a plain sequence, or a *packed tree*: ``(T_r,)`` index of
            the token each token follows (``-1`` for the first).  A token attends to itself and
            its ancestors only and sits at position ``depth``, so one row holds a shared context
            and every continuation after it, each scored exactly as if it were its own row.
    """

    tokens: list[list[int]]
    q_row: np.ndarray
    q_pos: np.ndarray
    q_tok: np.ndarray
    parents: list[np.ndarray | None] | None = None
    n_sequences: int | None = None
    _layouts: dict[int, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def sequences(self) -> int:
        """Logical sequences held (before :func:`bin_pack`), the unit of evaluation cost."""
        return len(self.tokens) if self.n_sequences is None else self.n_sequences

    def is_tree(self, r: int) -> bool:
        return self.parents is not None and self.parents[r] is not None

    def layout(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`ancestry` of packed row ``r``, computed once."""
        if r not in self._layouts:
            self._layouts[r] = ancestry(self.parents[r])  # type: ignore[index,arg-type]
        return self._layouts[r]


def ancestry(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attention pattern and positions of a packed tree row.

    Args:
        parents: ``(T,)`` index of the token each token follows (``-1``: none); parents precede
            their children.

    Returns:
        ``(T, T)`` bool, ``[i, j]`` true when token ``i`` may attend to ``j`` (itself and its
        ancestors), and ``(T,)`` position ids (depth in the tree).
    """
    n = len(parents)
    allowed = np.zeros((n, n), dtype=bool)
    depth = np.zeros(n, dtype=np.int64)
    for i, p in enumerate(parents):
        if p >= 0:
            if p >= i:
                raise ValueError(f"packed row: token {i} follows {p}, which is not before it")
            allowed[i] = allowed[p]
            depth[i] = depth[p] + 1
        allowed[i, i] = True
    return allowed, depth


def bin_pack(rows: Rows, width: int | None = None) -> Rows:
    """Pack rows side by side into fewer rows of at most ``width`` tokens, without padding.

    Best-fit decreasing: each row (longest first) goes into the fullest packed row it fits in.
    Every original row becomes an independent segment (its first token follows nothing, so
    positions restart and no token attends across segments), so scores are unchanged while the
    right-padding of mixed lengths disappears.  Query order is kept.

    Args:
        rows: plain or tree rows.
        width: packed row length, at least the longest row's; default twice the longest row
            (at most 512 tokens, unless the longest row is longer): rows of similar lengths
            near the longest would not pair up in a row only as wide as the longest.

    Returns:
        the packed rows, with ``n_sequences`` = the number of input rows.
    """
    lengths = [len(t) for t in rows.tokens]
    if not lengths:
        return rows
    longest = max(lengths)
    width = max(longest, width or min(2 * longest, 512))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free tokens, bin)
    for r in sorted(range(len(rows)), key=lambda r: -lengths[r]):
        i = bisect.bisect_left(free, (lengths[r], -1))
        if i < len(free):
            room, b = free.pop(i)
        else:
            room, b = width, len(bins)
            bins.append([])
        bins[b].append(r)
        bisect.insort(free, (room - lengths[r], b))
    tokens: list[list[int]] = []
    parents: list[np.ndarray | None] = []
    bin_of = np.zeros(len(rows), dtype=np.int64)
    offset = np.zeros(len(rows), dtype=np.int64)
    for b, members in enumerate(bins):
        toks: list[int] = []
        par: list[np.ndarray] = []
        for r in members:
            bin_of[r], offset[r] = b, len(toks)
            n = lengths[r]
            p = rows.parents[r] if rows.is_tree(r) else np.arange(-1, n - 1)  # type: ignore[index]
            par.append(np.where(p >= 0, p + len(toks), -1))
            toks.extend(rows.tokens[r])
        tokens.append(toks)
        joined = np.concatenate(par)
        parents.append(None if np.array_equal(joined, np.arange(-1, len(toks) - 1)) else joined)
    return Rows(
        tokens,
        bin_of[rows.q_row],
        offset[rows.q_row] + rows.q_pos,
        rows.q_tok,
        parents if any(p is not None for p in parents) else None,
        n_sequences=rows.sequences,
    )
