"""Benchmark fitness: a candidate's score on an lm-eval task, population-batched.

Requests are built once per split with lm-eval's own task machinery
(``task.build_all_requests``), tokenised once with lm-eval's own encoding (``HFLM``'s
``_encode_pair`` and truncation), merged into rows (each context once, its continuations
packed after it as a prefix tree, rows packed side by side without padding), and scored for
many candidates per forward pass by :class:`~blackbox.forward.loglik.LoglikScorer`.  The per-request
``(loglikelihood, is_greedy)`` pairs go back through ``task.process_results`` and the task's
aggregation functions, so the numbers are lm-eval's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from blackbox.evals.base import Evaluation, Objective
from blackbox.forward.loglik import LoglikScorer, Rows, bin_pack


@dataclass
class PreparedSplit:
    """A split's requests, tokenised and merged into rows.

    Attributes:
        docs: ``D`` documents (in doc-id order).
        doc_ids: ``D`` doc ids as lm-eval numbered them.
        requests_of_doc: per document, its request indices in ``Instance.idx`` order.
        query_of_request: per request, its query indices (one per continuation token).
        rows: the merged rows and queries.
    """

    name: str
    docs: list[dict]
    doc_ids: list[int]
    requests_of_doc: list[list[int]]
    query_of_request: list[np.ndarray]
    rows: Rows
    pairs: list[tuple[list[int], list[int]]]
    max_length: int
    pack: bool = True

    @property
    def n_docs(self) -> int:
        return len(self.docs)

    def head(self, limit: int) -> PreparedSplit:
        """The same split restricted to its first ``limit`` documents (a lower fidelity)."""
        if limit >= self.n_docs:
            return self
        reqs = self.requests_of_doc[:limit]
        flat = [r for rs in reqs for r in rs]
        pairs = [self.pairs[r] for r in flat]
        rows, per_request = merge_rows(pairs, self.max_length, self.pack)
        renum, i = [], 0
        for rs in reqs:
            renum.append(list(range(i, i + len(rs))))
            i += len(rs)
        return PreparedSplit(
            self.name,
            self.docs[:limit],
            self.doc_ids[:limit],
            renum,
            per_request,
            rows,
            pairs,
            self.max_length,
            self.pack,
        )

    def repacked(self, pack: bool) -> PreparedSplit:
        """The same requests merged with (``pack=True``) or without packed tree rows."""
        if pack == self.pack:
            return self
        rows, per_request = merge_rows(self.pairs, self.max_length, pack)
        return dataclasses.replace(self, rows=rows, query_of_request=per_request, pack=pack)


def encode_requests(lm: Any, args: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Tokenise ``(context, continuation)`` pairs exactly as ``HFLM.loglikelihood`` does."""
    out = []
    for context, continuation in args:
        if context == "":
            cont = lm.tok_encode(continuation, add_special_tokens=False)
            if lm.prefix_token_id != cont[0]:
                out.append(([lm.prefix_token_id], cont))
            else:
                out.append((cont[:1], cont[1:]))
        else:
            out.append(lm._encode_pair(context, continuation))
    return out


def merge_rows(
    pairs: Sequence[tuple[list[int], list[int]]], max_length: int, pack: bool = True
) -> tuple[Rows, list[np.ndarray]]:
    """Merge ``(context_enc, continuation_enc)`` pairs into unique input rows.

    The input of a request is ``(ctx + cont)[-(max_length + 1):][:-1]`` (lm-eval's causal
    truncation) and its continuation's ``k`` tokens are predicted at the input's last ``k``
    positions.  Requests with the same input share one row.  With ``pack``, requests that share
    a context and need no truncation share one *packed tree* row instead: the context once, then
    the continuations' tokens as a prefix tree, each attending only to the context and its own
    earlier tokens (see :class:`~blackbox.forward.loglik.Rows`), so a multiple-choice question
    runs its context once whatever the length of its choices; the rows are then packed side by
    side (:func:`~blackbox.forward.loglik.bin_pack`), so no forward pass computes padding.

    Returns:
        the rows (with one query per continuation token) and, per request, its query indices.
    """
    row_of: dict[tuple[str, tuple[int, ...]], int] = {}
    tokens: list[list[int]] = []
    parents: list[list[int] | None] = []
    trie: dict[tuple[int, int, int], int] = {}  # (row, parent position, token) -> position
    q_row, q_pos, q_tok = [], [], []
    per_request: list[np.ndarray] = []
    for ctx, cont in pairs:
        if not ctx or not cont:
            raise ValueError("lm-eval request with an empty context or continuation")
        start = len(q_row)
        if pack and len(ctx) + len(cont) <= max_length + 1:
            r = row_of.setdefault(("tree", tuple(ctx)), len(tokens))
            if r == len(tokens):
                tokens.append(list(ctx))
                parents.append(list(range(-1, len(ctx) - 1)))
            node = len(ctx) - 1  # the last context token predicts the first continuation token
            for t in cont:
                q_row.append(r), q_pos.append(node), q_tok.append(t)
                if len(q_row) - start == len(cont):
                    break  # the last token is predicted, never fed
                child = trie.get((r, node, t))
                if child is None:
                    child = trie[(r, node, t)] = len(tokens[r])
                    tokens[r].append(t)
                    parents[r].append(node)  # type: ignore[union-attr]
                node = child
        else:
            inp = tuple((ctx + cont)[-(max_length + 1) :][:-1])
            r = row_of.setdefault(("seq", inp), len(tokens))
            if r == len(tokens):
                tokens.append(list(inp))
                parents.append(None)
            k = len(cont)
            for j, t in enumerate(cont):
                q_row.append(r), q_pos.append(len(inp) - k + j), q_tok.append(t)
        per_request.append(np.arange(start, len(q_row)))
    trees: list[np.ndarray | None] = [
        None if p is None or p == list(range(-1, len(p) - 1)) else np.array(p) for p in parents
    ]
    rows = Rows(
        tokens,
        np.array(q_row),
        np.array(q_pos),
        np.array(q_tok),
        trees if any(p is not None for p in trees) else None,
    )
    return (bin_pack(rows) if pack else rows), per_request


def check_packing(
    scorer: LoglikScorer,
    pairs: Sequence[tuple[list[int], list[int]]],
    max_length: int,
    n_requests: int = 16,
) -> bool:
    """Once per model: packed rows must score requests as plain rows do.

    Scores the first ``n_requests`` requests unsteered both ways and compares each request's
    log-likelihood (fp32: to 1e-3 relative; half precision: 5e-2, as batch composition alone
    moves it that much).  Sets and returns ``scorer.packing``.
    """
    sample = list(pairs[:n_requests])
    lls = []
    for pack in (True, False):
        rows, per_request = merge_rows(sample, max_length, pack)
        scores = scorer.score(rows, [None], lambda *_: contextlib.nullcontext())
        lls.append(np.array([scores.logprob[0][q].sum() for q in per_request]))
    tol = 1e-3 if scorer.lm_head.weight.dtype == torch.float32 else 5e-2
    scorer.packing = bool(np.all(np.abs(lls[0] - lls[1]) <= tol * (1 + np.abs(lls[1]))))
    if not scorer.packing:
        warnings.warn(
            f"{type(scorer.model).__name__}: packed context rows do not match plain rows; "
            "scoring every request on its own row",
            stacklevel=2,
        )
    return scorer.packing


def prepare_split(
    task: Any, lm: Any, split: str, samples: Sequence[int] | None, pack: bool = True
) -> PreparedSplit:
    """Build and tokenise the requests of ``split`` (all docs, or the doc indices ``samples``).

    ``pack``: requests sharing a context share one packed tree row (see :func:`merge_rows`).
    """
    task.config.test_split = split
    task.build_all_requests(samples=list(samples) if samples else None, rank=0, world_size=1)
    by_doc: dict[int, list[Any]] = defaultdict(list)
    for inst in task.instances:
        if inst.request_type != "loglikelihood":
            raise ValueError(
                f"task {task.config.task!r}: request type {inst.request_type!r} is not supported "
                "(only loglikelihood tasks: multiple_choice, loglikelihood)"
            )
        by_doc[inst.doc_id].append(inst)
    doc_ids = sorted(by_doc)
    flat: list[Any] = []
    requests_of_doc: list[list[int]] = []
    for d in doc_ids:
        insts = sorted(by_doc[d], key=lambda i: i.idx)
        requests_of_doc.append(list(range(len(flat), len(flat) + len(insts))))
        flat.extend(insts)
    pairs = encode_requests(lm, [inst.args for inst in flat])
    rows, per_request = merge_rows(pairs, lm.max_length, pack)
    return PreparedSplit(
        name=split,
        docs=[by_doc[d][0].doc for d in doc_ids],
        doc_ids=doc_ids,
        requests_of_doc=requests_of_doc,
        query_of_request=per_request,
        rows=rows,
        pairs=pairs,
        max_length=lm.max_length,
        pack=pack,
    )


@dataclass
class TaskSplitSpec:
    """Which split and which documents a named split of the objective uses."""

    split: str
    samples: list[int] | None = None


@dataclass
class LMEvalObjective(Objective):
    """Score candidates of a search space on an lm-eval task.

    Args:
        task: an lm-eval ``Task`` (loglikelihood / multiple_choice).
        lm: an ``HFLM`` wrapping the model (used for its tokenisation only).
        splits: objective split name ("search", "test", ...) -> task split and doc indices.
        apply: the space's ``apply(model, candidates, rows, repeat)``.
        lowest_layer: the space's candidate -> lowest changed layer (enables branching).
        metric: the task metric maximised (e.g. "acc").
        max_batch_tokens: forward-pass budget (tokens), halved on OOM (``None``: by device).
        trunk_cache_mb: memory for unsteered trunks reused across calls (0: none).
        key: candidate -> hashable key for the repeat cache (``None``: no cache).
        branch: run the unsteered trunk once per example and branch at the lowest steered layer.
        pack: requests sharing a context (the choices of a question) share one packed tree row;
            checked once per model against plain rows, and turned off with a warning if the
            model's attention does not honour the tree mask; off for a split whose longest
            sequence exceeds the model's sliding attention window.
    """

    task: Any
    lm: Any
    splits: dict[str, TaskSplitSpec]
    apply: Callable[..., Any]
    lowest_layer: Callable[[Any], int | None] | None = None
    metric: str = "acc"
    max_batch_tokens: int | None = None
    key: Callable[[Any], Any] | None = None
    branch: bool = True
    trunk_cache_mb: int = 1024
    pack: bool = True
    name: str = "lm_eval"
    _prepared: dict[str, PreparedSplit] = field(default_factory=dict, init=False)
    _heads: dict[tuple[str, int], PreparedSplit] = field(default_factory=dict, init=False)
    _cache: dict[tuple[str, Any], dict[str, float]] = field(default_factory=dict, init=False)
    cache_hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        metrics = list(self.task.aggregation())
        if self.metric not in metrics:
            raise ValueError(
                f"objective.metric: {self.metric!r} is not a metric of task "
                f"{self.task.config.task!r}; allowed: {metrics}"
            )
        self.scorer = LoglikScorer(
            self.lm.model,
            pad_id=self._pad_id(),
            max_batch_tokens=self.max_batch_tokens,
            branch=self.branch,
            trunk_cache_mb=self.trunk_cache_mb,
        )

    def _pad_id(self) -> int:
        tok = self.lm.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0)

    def prepared(self, split: str) -> PreparedSplit:
        """The prepared requests of an objective split (built on first use)."""
        if split not in self.splits:
            raise ValueError(f"split {split!r} is not one of {sorted(self.splits)}")
        if split not in self._prepared:
            spec = self.splits[split]
            pack = self.pack and self.scorer.packing is not False
            prep = prepare_split(self.task, self.lm, spec.split, spec.samples, pack)
            window = self.scorer.sliding_window
            if pack and window and max(len(c) + len(t) - 1 for c, t in prep.pairs) > window:
                pack = False  # the tree mask would override the model's sliding window
            elif prep.rows.parents is not None and self.scorer.packing is None:
                check_packing(self.scorer, prep.pairs, prep.max_length)
            self._prepared[split] = prep.repacked(self.scorer.packing is not False and pack)
        return self._prepared[split]

    def n_examples(self, split: str = "search") -> int:
        return self.prepared(split).n_docs

    def evaluate(
        self,
        candidates: Sequence[Any],
        split: str = "search",
        limit: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Evaluation:
        """Score ``candidates`` on ``split`` (its first ``limit`` documents if given).

        Returns:
            values ``(n,)`` = the chosen metric; metrics = every aggregated task metric;
            cost = sequences run through the model (0 for cache hits).
        """
        prep = self.prepared(split)
        if limit is not None:
            prep = self._heads.setdefault((split, limit), prep.head(limit))
        keys = [(split, limit, self.key(c)) if self.key else None for c in candidates]
        todo = [i for i, k in enumerate(keys) if k is None or k not in self._cache]
        seen: dict[Any, int] = {}
        unique = []
        for i in todo:  # identical candidates within a batch are scored once
            if keys[i] is None or keys[i] not in seen:
                if keys[i] is not None:
                    seen[keys[i]] = i
                unique.append(i)
        results: dict[int, dict[str, float]] = {}
        cost = 0.0
        if unique:
            rows = prep.rows
            scores = self.scorer.score(
                rows, [candidates[i] for i in unique], self.apply, self.lowest_layer, progress
            )
            cost = float(len(unique) * rows.sequences)
            for j, i in enumerate(unique):
                results[i] = self._aggregate(prep, scores.logprob[j], scores.greedy[j])
                if keys[i] is not None:
                    self._cache[keys[i]] = results[i]
        metrics: list[dict[str, Any]] = []
        for i, k in enumerate(keys):
            if i in results:
                m = dict(results[i], cache_hit=False)
            else:
                src = self._cache[k] if k in self._cache else results[seen[k]]
                m = dict(src, cache_hit=True)
                self.cache_hits += 1
            metrics.append(m)
        values = np.array([m[self.metric] for m in metrics], dtype=float)
        return Evaluation(values=values, metrics=metrics, cost=cost)

    def _aggregate(
        self, prep: PreparedSplit, logprob: np.ndarray, greedy: np.ndarray
    ) -> dict[str, float]:
        per_metric: dict[str, list[Any]] = defaultdict(list)
        for d in range(prep.n_docs):
            results = []
            for r in prep.requests_of_doc[d]:
                q = prep.query_of_request[r]
                results.append((float(logprob[q].sum()), bool(greedy[q].all())))
            for metric, value in self.task.process_results(prep.docs[d], results).items():
                per_metric[metric].append(value)
        agg = self.task.aggregation()
        return {m: float(agg[m](vals)) for m, vals in per_metric.items() if m in agg}

    def request_logliks(self, candidate: Any, split: str = "search") -> list[list[float]]:
        """Per document, the log-likelihood of each request under one candidate (for parity tests)."""
        prep = self.prepared(split)
        scores = self.scorer.score(prep.rows, [candidate], self.apply, self.lowest_layer)
        out = []
        for reqs in prep.requests_of_doc:
            out.append([float(scores.logprob[0][prep.query_of_request[r]].sum()) for r in reqs])
        return out
