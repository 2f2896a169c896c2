"""Racing: score a generation on growing slices of the search documents and stop early the
candidates that cannot beat the incumbent.

Every candidate of a generation sees the same documents in the same order (the search split is
a seeded subsample, so every prefix is a random sample of it).  After each slice of the
schedule (say 16, then 32 documents, then all), a candidate is stopped when a one-sided paired
test on the documents seen so far says it cannot catch up with the *reference* (the run's
incumbent, scored on every search document; in the first generation, the generation's current
leader) on this split: the unseen part of the split is predicted from the per-document
differences seen (:func:`blackbox.stats.behind_p`; the same for 0/1 metrics such as accuracy
and continuous ones such as log-likelihoods).  Racing selects on the split's mean, so that is
the question to ask, and it has more power than a test of the population mean, the more so the
more of the split has been seen.  The level is ``1 - confidence`` split evenly over the looks
(Bonferroni), so a candidate that would have ended level with or above the reference on the
split is stopped with probability at most about ``1 - confidence`` (a t approximation;
``tests/test_stats.py`` measures it).

What the strategy is told for a stopped candidate: its mean on the documents it saw (the
unbiased partial estimate); the trial is recorded as Optuna ``PRUNED`` with that estimate as
its intermediate value at the number of documents seen, and ``raced`` in its attributes.  A
stopped candidate never becomes the best: survivors are scored on every document, so the best
is always a full-fidelity number.  Cost counts exactly the documents scored.

Under a cost budget the last generation races on what is left: a slice the budget cannot pay
for every candidate still alive is shortened to the documents it can, and the candidates alive
after it are *cut* (told and recorded like stopped ones, with ``by: budget``), so a raced run
spends its budget instead of leaving most of a generation's cost unspent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blackbox.api import Evaluation
from blackbox.stats import behind_p


@dataclass(frozen=True)
class Racing:
    """When to look and how sure to be.

    Attributes:
        schedule: numbers of documents after which candidates are tested (those below the
            split's size are used; the last slice is always the whole split).
        confidence: one minus the chance of stopping a candidate that would have won.
    """

    schedule: tuple[int, ...] = (16, 32)
    confidence: float = 0.95

    def stops(self, n_docs: int) -> list[int]:
        """Slice ends for a split of ``n_docs`` documents (increasing, ending at ``n_docs``)."""
        return sorted({int(s) for s in self.schedule if 0 < s < n_docs}) + [int(n_docs)]

    def alpha(self, n_docs: int) -> float:
        """The level of each look."""
        return (1.0 - self.confidence) / max(1, len(self.stops(n_docs)) - 1)


@dataclass
class Raced:
    """A generation scored by racing.

    Attributes:
        evaluation: values (the partial mean for stopped candidates), merged metrics, per-
            document values of the documents seen, ``extra`` from the first slice, total cost.
        seen: documents scored per candidate (the split's size for survivors).
        n_docs: documents in the split.
    """

    evaluation: Evaluation
    seen: list[int]
    n_docs: int
    looks: list[dict[str, Any]] = field(default_factory=list)
    cut: list[bool] = field(default_factory=list)  # alive when the budget ran out

    def by(self, i: int) -> str:
        """Why candidate ``i`` was stopped: ``test`` (cannot win) or ``budget`` (cut)."""
        return "budget" if self.cut and self.cut[i] else "test"

    def stopped(self, i: int) -> bool:
        return self.seen[i] < self.n_docs


def _merge(parts: list[tuple[int, dict[str, Any]]], first_only: Sequence[str]) -> dict[str, Any]:
    """Metrics of consecutive slices ``(documents, metrics)`` merged as means over documents
    (exact for mean metrics); ``first_only`` keys (measured in the first document's context,
    such as a prompt's fluency) come from the first slice."""
    total = sum(n for n, _ in parts)
    out: dict[str, Any] = {}
    for key, v0 in parts[0][1].items():
        if key == "cache_hit":
            out[key] = all(bool(m.get(key)) for _, m in parts)
        elif key in first_only or not isinstance(v0, int | float) or isinstance(v0, bool):
            out[key] = v0
        else:
            out[key] = float(sum(n * float(m[key]) for n, m in parts) / total)
    return out


def race(
    score: Callable[[list[int], tuple[int, int]], Evaluation],
    n: int,
    n_docs: int,
    racing: Racing,
    reference: np.ndarray | None = None,
    first_only: Sequence[str] = (),
    budget: float | None = None,
    doc_cost: float = 1.0,
) -> Raced:
    """Race ``n`` candidates over a split of ``n_docs`` documents.

    Args:
        score: ``score(indices, (start, stop))`` scores candidates ``indices`` on documents
            ``[start, stop)``; its evaluation must carry ``per_doc``.
        n: candidates.
        n_docs: documents in the split.
        racing: the schedule and confidence.
        reference: the incumbent's per-document values ``(n_docs,)``, or ``None`` (the
            generation's leader on the documents seen is the reference).
        first_only: metric names taken from the first slice only.
        budget: the most this generation may cost (``None``: no limit); a slice it cannot
            pay for every candidate alive is shortened, and those alive after it are cut.
        doc_cost: the cost of one candidate on one document (an upper bound: cache hits are
            free).
    """
    alpha = racing.alpha(n_docs)
    per: list[list[np.ndarray]] = [[] for _ in range(n)]
    parts: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in range(n)]
    extra: list[np.ndarray | None] = [None] * n
    seen, dead, cut = [0] * n, [False] * n, [False] * n
    alive, prev, cost = list(range(n)), 0, 0.0
    looks: list[dict[str, Any]] = []
    for stop in racing.stops(n_docs):
        if not alive:
            break  # every candidate stopped at the last look
        if budget is not None:
            each = (budget - cost) / (len(alive) * max(doc_cost, 1e-12))
            stop = min(stop, prev + int(np.floor(each + 1e-9)))
            if stop <= prev:
                break  # not one more document for every candidate alive
        ev = score(alive, (prev, stop))
        cost += float(ev.cost)
        for j, i in enumerate(alive):
            doc = None if ev.per_doc is None else ev.per_doc[j]
            if doc is None or not np.isfinite(ev.values[j]):
                dead[i] = True  # rejected or failed: nothing more to learn from it
            else:
                per[i].append(np.asarray(doc, dtype=float))
            parts[i].append((stop - prev, ev.metrics[j] if ev.metrics else {}))
            if ev.extra is not None and prev == 0:
                extra[i] = np.asarray(ev.extra[j], dtype=float)
            seen[i] = stop
        prev = stop
        alive = [i for i in alive if not dead[i]]
        if stop == n_docs or not alive:
            break
        if stop not in racing.stops(n_docs):
            break  # a slice shortened by the budget: nothing is left for another
        got = {i: np.concatenate(per[i]) for i in alive}
        leader = None
        if reference is not None:
            ref = np.asarray(reference, dtype=float)[:stop]
        else:
            leader = max(alive, key=lambda i: float(got[i].mean()))
            ref = got[leader]
        keep = [i for i in alive if i == leader or behind_p(got[i], ref, n_docs) >= alpha]
        looks.append({"documents": stop, "alive": len(alive), "kept": len(keep)})
        alive = keep
    for i in alive:
        cut[i] = seen[i] < n_docs
    values = np.full(n, np.nan)
    docs: list[np.ndarray | None] = [None] * n
    for i in range(n):
        if per[i] and not dead[i]:
            docs[i] = np.concatenate(per[i])
            values[i] = float(docs[i].mean())
    metrics = [_merge(p, first_only) if p else {} for p in parts]
    k = next((len(e) for e in extra if e is not None), 0)
    ext = None
    if k:
        ext = np.full((n, k), np.nan)
        for i, e in enumerate(extra):
            if e is not None:
                ext[i] = e
    return Raced(Evaluation(values, metrics, ext, cost, docs), seen, n_docs, looks, cut)
