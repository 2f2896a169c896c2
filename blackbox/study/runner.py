"""The study loop: ask -> decode -> evaluate (population-batched) -> tell -> record.

Resuming is deterministic replay: every strategy draws from its own seeded generator, so a
re-run with the same config asks the same candidates in the same order; evaluations already
recorded in the storage (same generation, index and params) are read back instead of scored.
A run killed at any point resumes from its last complete batch.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from tqdm.auto import tqdm

from blackbox.api import Evaluation, Problem
from blackbox.errors import UserError
from blackbox.evals.base import Objective
from blackbox.search_spaces.base import SearchSpace
from blackbox.strategies.base import Strategy
from blackbox.study.racing import Racing, race
from blackbox.study.storage import Memo, add_record, open_eval_study

# A run with only a cost budget stops after this many generations in a row that cost nothing
# (every candidate a repeat served from the cache): a converged strategy would loop forever.
STALL_GENERATIONS = 50


@dataclass
class Budget:
    """When to stop: whichever limit is reached first.

    Attributes:
        evaluations: candidate evaluations.
        seconds: wall seconds of this session.
        cost: forward-pass equivalents (objective cost plus a strategy's gradient work; a
            backward counts as two forwards), the unit for fair comparisons.
    """

    evaluations: int | None = None
    seconds: float | None = None
    cost: float | None = None

    def is_set(self) -> bool:
        return any(v is not None for v in (self.evaluations, self.seconds, self.cost))


@dataclass
class Progress:
    """What a generation callback sees after each generation."""

    generation: int
    evaluations: int
    cost: float
    seconds: float
    best: float


def _recorded_extra(attrs: dict[str, Any]) -> tuple[float, ...] | None:
    """The secondary values a record carries (``attrs["extra"]``, in recorded order)."""
    extra = attrs.get("extra")
    return None if not extra else tuple(float(v) for v in extra.values())


@dataclass
class Scored:
    """One recorded evaluation (``x`` is ``None`` for a baseline that is not a box point)."""

    x: np.ndarray | None
    candidate: Any
    value: float
    metrics: dict[str, Any]
    cost: float = 0.0
    extra: tuple[float, ...] | None = None  # the objective's secondary values (fluency, ...)
    per_doc: np.ndarray | None = None  # (D,) value per document of the split, when known
    stopped_at: int | None = None  # racing stopped it after this many documents

    @property
    def full(self) -> bool:
        """Scored on every document (not stopped by racing): it may be the best."""
        return self.stopped_at is None


def _recorded_docs(attrs: dict[str, Any]) -> np.ndarray | None:
    docs = attrs.get("per_doc")
    return None if docs is None else np.asarray(docs, dtype=float)


def _stopped_at(attrs: dict[str, Any]) -> int | None:
    raced = attrs.get("raced")
    return None if not raced else int(raced["documents"])


@dataclass
class RunSummary:
    """What a run found.

    ``baselines`` / ``heldout_baselines`` map each baseline's label (``unsteered``,
    ``no prompt``, ``baseline``) to its score on the search / held-out split; ``baseline`` and
    ``heldout_baseline`` are the first of them.
    """

    baselines: dict[str, Scored]
    best: Scored | None
    heldout_baselines: dict[str, Scored]
    heldout_best: Scored | None
    evaluations: int
    resumed: int
    cost: float
    cache_hits: int
    wall_seconds: float
    history: list[float] = field(default_factory=list)
    cost_history: list[float] = field(default_factory=list)
    search_cost: float = 0.0
    raced_stops: int = 0  # search candidates racing stopped early (cannot win)
    budget_cuts: int = 0  # search candidates cut when the cost budget ran out mid-race
    stalled: bool = False  # the strategy asked only repeats: a cost budget could not be spent

    @property
    def baseline(self) -> Scored | None:
        return next(iter(self.baselines.values()), None)

    @property
    def heldout_baseline(self) -> Scored | None:
        return next(iter(self.heldout_baselines.values()), None)


def candidate_cost(objective: Any, split: str = "search") -> float:
    """What one new candidate costs on the whole of ``split``: one forward-pass equivalent per
    document (side effects score more documents)."""
    if hasattr(objective, "cost_per_candidate"):
        return float(objective.cost_per_candidate(split))
    return float(getattr(objective, "n_examples", lambda _s: 1)(split))


def first_cost(objective: Any, split: str = "search", racing: Racing | None = None) -> float:
    """What a new candidate costs at the least: :func:`candidate_cost`, or with racing its
    first slice (the race spends what is left on the survivors)."""
    per = candidate_cost(objective, split)
    if racing is not None:
        n_docs = int(getattr(objective, "n_examples", lambda _s: 1)(split))
        per *= racing.stops(n_docs)[0] / max(n_docs, 1)
    return per


class Runner:
    """Drives a strategy over a space against an objective, recording into an Optuna study.

    Args:
        space: the search space.
        objective: scores the space's interventions (higher is better).
        strategy: the ask/tell strategy over ``space.box``.
        study: the Optuna study receiving one trial per search evaluation (baseline and
            held-out records go to its sibling ``NAME:eval``, see
            :func:`~blackbox.study.storage.open_eval_study`).
        budget: when to stop; a cost budget truncates the last batch, so a run never spends
            more than it (but for a strategy's own gradient work when nothing is left to score).
        search_split: the objective split searched on.
        heldout_split: the split the best candidate is re-scored on (``None``, or a split the
            objective does not have: skip).
        progress: show a progress bar.
        on_generation: called with a :class:`Progress` after every generation (for example to
            report intermediate values to an outer Optuna trial, which may raise
            ``optuna.TrialPruned`` to stop the run).
        baselines: reference candidates scored before the search, by label (default: the
            space's ``baselines()``); they need not be box points.
        racing: score search candidates on growing slices of the documents and stop those
            that cannot beat the incumbent (:mod:`blackbox.study.racing`); ``None``: every
            candidate on every document.
    """

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        strategy: Strategy,
        study: optuna.Study,
        budget: Budget,
        search_split: str = "search",
        heldout_split: str | None = "heldout",
        progress: bool = True,
        on_generation: Callable[[Progress], None] | None = None,
        baselines: dict[str, Any] | None = None,
        racing: Racing | None = None,
    ) -> None:
        if not budget.is_set():
            raise UserError("budget: set evaluations, seconds or cost")
        self.on_generation = on_generation
        self.space, self.objective, self.strategy = space, objective, strategy
        self.problem = Problem(space, objective)
        self.study, self.budget = study, budget
        self._eval_study: optuna.Study | None = None  # NAME:eval, opened on first use
        splits = getattr(objective, "splits", None) or [search_split]
        self.search_split = search_split
        self.heldout_split = heldout_split if heldout_split in splits else None
        self.progress = progress
        self.names = space.box.names
        if baselines is None:
            baselines = space.baselines() if hasattr(space, "baselines") else {}
        self.baselines = dict(baselines)
        self.racing = racing
        self.incumbent: Scored | None = None  # the best so far (racing's reference)
        self.raced_stops = 0  # candidates racing stopped (this session and replayed)
        self.budget_cuts = 0  # candidates cut by the budget in a race (idem)
        self.stalled = False  # stopped because the strategy only asked repeats

    def _race(
        self, cands: list[Any], split: str, budget: float | None
    ) -> tuple[Evaluation, list[int | None], list[float], list[str]]:
        """Score ``cands`` by racing on at most ``budget``; returns the evaluation, per
        candidate the documents it was stopped after (``None``: scored on all), its share of
        the cost (its documents over all documents scored) and why it stopped."""
        assert self.racing is not None
        n_docs = int(self.objective.n_examples(split))
        ref = None if self.incumbent is None else self.incumbent.per_doc
        if ref is not None and ref.shape != (n_docs,):
            ref = None
        raced = race(
            lambda idx, docs: self.problem.evaluate([cands[i] for i in idx], split, docs),
            len(cands),
            n_docs,
            self.racing,
            ref,
            first_only=tuple(getattr(self.objective, "extra_names", ()) or ()),
            budget=budget,
            doc_cost=candidate_cost(self.objective, split) / max(n_docs, 1),
        )
        stops = [s if raced.stopped(i) else None for i, s in enumerate(raced.seen)]
        total = max(1, sum(raced.seen))
        why = [raced.by(i) for i in range(len(cands))]
        return raced.evaluation, stops, [s / total for s in raced.seen], why

    def _evaluate(self, candidates: Sequence[Any], split: str) -> Evaluation:
        ev = self.problem.evaluate(candidates, split=split)
        vals = np.asarray(ev.values, dtype=float)
        if vals.shape != (len(candidates),):
            raise RuntimeError(
                f"objective returned {vals.shape} values for {len(candidates)} candidates"
            )
        return ev

    def _score_batch(
        self,
        kind: str,
        generation: int,
        x: np.ndarray | None,
        split: str,
        memo: Memo,
        candidates: list[Any] | None = None,
        labels: list[str] | None = None,
        rows: list[np.ndarray | None] | None = None,
        extra: float = 0.0,
        budget: float | None = None,
    ) -> tuple[list[Scored], int, float]:
        """Score rows of ``x``, or ``candidates`` with their box ``rows`` (``None`` for a
        baseline, which need not be a point of the box: recorded without params), reading
        recorded ones from ``memo``; record the new ones.  ``extra``: the strategy's own work
        for this batch (gradients), charged to the new evaluations; ``budget``: the most a
        raced batch may cost."""
        cands = self.space.decode(x) if candidates is None else list(candidates)
        xs: list[np.ndarray | None] = (
            [x[i] for i in range(len(x))]
            if x is not None
            else (list(rows) if rows is not None else [None] * len(cands))
        )
        known = [
            memo.get(
                kind, generation, i, xs[i], self.names, label=None if not labels else labels[i]
            )
            for i in range(len(cands))
        ]
        todo = [i for i, t in enumerate(known) if t is None]
        out: list[Scored | None] = [None] * len(cands)
        for i, t in enumerate(known):
            if t is not None:
                out[i] = Scored(
                    xs[i],
                    cands[i],
                    Memo.value(t),
                    dict(t.user_attrs.get("metrics", {})),
                    float(t.user_attrs.get("cost") or 0.0),
                    _recorded_extra(t.user_attrs),
                    _recorded_docs(t.user_attrs),
                    _stopped_at(t.user_attrs),
                )
                self._count_stop(t.user_attrs.get("raced"))
        cost = 0.0
        # replayed batches were charged their extra when they were recorded: it is dropped
        if todo:
            t0 = time.perf_counter()
            stops: list[int | None] = [None] * len(todo)
            shares = [1.0 / len(todo)] * len(todo)
            why = ["test"] * len(todo)
            if self.racing is not None and kind == "search":
                ev, stops, shares, why = self._race([cands[i] for i in todo], split, budget)
            else:
                ev = self._evaluate([cands[i] for i in todo], split)
            seconds = (time.perf_counter() - t0) / len(todo)
            cost = float(ev.cost) + extra
            each = [float(ev.cost) * sh + extra / len(todo) for sh in shares]
            for j, i in enumerate(todo):
                value = float(ev.values[j])
                metrics = ev.metrics[j] if ev.metrics else {}
                attrs = {
                    "kind": kind,
                    "generation": generation,
                    "index": i,
                    **({"label": labels[i]} if labels else {}),
                    "split": split,
                    "candidate": self.space.describe(cands[i]),
                    "metrics": {k: v for k, v in metrics.items() if k != "cache_hit"},
                    "cache_hit": bool(metrics.get("cache_hit", False)),
                    "cost": each[j],
                    "seconds": seconds,
                }
                if ev.extra is not None:
                    names = getattr(self.objective, "extra_names", None) or [
                        f"extra{k}" for k in range(ev.extra.shape[1])
                    ]
                    attrs["extra"] = dict(zip(names, map(float, ev.extra[j])))
                docs = None if ev.per_doc is None else ev.per_doc[j]
                if docs is not None:
                    attrs["per_doc"] = [float(v) for v in docs]
                if stops[j] is not None:
                    attrs["raced"] = {"documents": stops[j], "estimate": value, "by": why[j]}
                    self._count_stop(attrs["raced"])
                add_record(
                    self._study_for(kind), self.space.box, xs[i], value, attrs, pruned_at=stops[j]
                )
                row = None if ev.extra is None else tuple(map(float, ev.extra[j]))
                out[i] = Scored(xs[i], cands[i], value, dict(metrics), each[j], row, docs, stops[j])
        return [s for s in out if s is not None], len(cands) - len(todo), cost

    def _study_for(self, kind: str) -> optuna.Study:
        """Search records go to the study; baseline and held-out ones to its ``NAME:eval``
        sibling, so the study's best trial is never a held-out score."""
        if kind == "search":
            return self.study
        if self._eval_study is None:
            self._eval_study = open_eval_study(self.study)
        return self._eval_study

    def _count_stop(self, raced: dict[str, Any] | None) -> None:
        """Count a raced record: stopped by the test or cut by the budget."""
        if raced:
            if raced.get("by") == "budget":
                self.budget_cuts += 1
            else:
                self.raced_stops += 1

    def _tell(self, x: np.ndarray, values: np.ndarray, scored: list[Scored]) -> None:
        """Tell the strategy; one that reads the objective's secondary values (EPO's fluency)
        gets them from the batch, replayed ones from their records, so a resumed run never
        pays to measure them again."""
        rows = [s.extra for s in scored]
        takes_extra = "extra" in inspect.signature(self.strategy.tell).parameters
        if takes_extra and rows and all(r is not None for r in rows):
            self.strategy.tell(x, values, extra=np.array(rows, dtype=float))
        else:
            self.strategy.tell(x, values)

    def _affordable(self, remaining: float) -> int:
        """How many new candidates ``remaining`` forward-pass equivalents pay for (see
        :func:`first_cost`); repeats, which cost nothing, are not counted on."""
        per = first_cost(self.objective, self.search_split, self.racing)
        return int(np.floor(remaining / max(per, 1e-9) + 1e-9))

    def run(self) -> RunSummary:
        """Run (or resume) the study; returns the summary."""
        t_start = time.perf_counter()
        memo = Memo.load(self.study)
        resumed, cost = 0, 0.0
        if hasattr(self.strategy, "bind"):
            self.strategy.bind(self.problem)

        labels = list(self.baselines)
        baselines: dict[str, Scored] = {}
        if labels:
            scored, r, c = self._score_batch(
                "baseline",
                -1,
                None,
                self.search_split,
                memo,
                candidates=[self.baselines[k] for k in labels],
                labels=labels,
            )
            baselines = dict(zip(labels, scored))
            resumed, cost = resumed + r, cost + c
        baseline = next(iter(baselines.values()), None)

        history: list[float] = []
        cost_history: list[float] = []
        search_cost = 0.0
        best: Scored | None = None
        done, generation = 0, 0
        total = self.budget.evaluations
        bar = tqdm(
            total=total, desc="search", unit="eval", disable=not self.progress, dynamic_ncols=True
        )
        idle = 0  # consecutive generations that cost nothing (every candidate a repeat)
        try:
            while True:
                if total is not None and done >= total:
                    break
                if total is None and self.budget.seconds is None and idle >= STALL_GENERATIONS:
                    self.stalled = True  # a cost budget that repeats can never spend
                    break
                if (
                    self.budget.seconds is not None
                    and time.perf_counter() - t_start >= self.budget.seconds
                ):
                    break
                if self.budget.cost is not None:
                    ahead = float(getattr(self.strategy, "ask_cost", lambda: 0.0)())
                    if self._affordable(self.budget.cost - search_cost - ahead) <= 0:
                        break  # not even one candidate after the strategy's own work
                x = self.strategy.ask()
                extra = float(getattr(self.strategy, "pop_extra_cost", lambda: 0.0)())
                n = len(x) if total is None else min(len(x), total - done)
                if self.budget.cost is not None:  # never past the budget: truncate the batch
                    n = min(n, self._affordable(self.budget.cost - search_cost - extra))
                    if n <= 0:
                        search_cost += extra  # spent by the strategy, nothing left to score
                        break
                left = None if self.budget.cost is None else self.budget.cost - search_cost - extra
                scored, r, c = self._score_batch(
                    "search", generation, x[:n], self.search_split, memo, extra=extra, budget=left
                )
                resumed, cost = resumed + r, cost + c
                spent = sum(s.cost for s in scored)  # replayed ones at their recorded cost
                search_cost += spent
                idle = idle + 1 if spent == 0 else 0
                values = np.array([s.value for s in scored])
                if n == len(x):
                    self._tell(x, values, scored)
                for s in scored:
                    if s.full and math.isfinite(s.value) and (best is None or s.value > best.value):
                        best = s
                        self.incumbent = best
                    history.append(best.value if best is not None else float("nan"))
                    cost_history.append(search_cost)
                done += n
                generation += 1
                if self.on_generation is not None:
                    self.on_generation(
                        Progress(
                            generation,
                            done,
                            search_cost,
                            time.perf_counter() - t_start,
                            best.value if best is not None else float("nan"),
                        )
                    )
                bar.update(n)
                if best is not None:
                    post = {"best": f"{best.value:.4f}"}
                    if baseline is not None:
                        post["baseline"] = f"{baseline.value:.4f}"
                    bar.set_postfix(post)
        finally:
            bar.close()

        held_bases: dict[str, Scored] = {}
        held_best = None
        if self.heldout_split is not None and best is not None:
            cands = [self.baselines[k] for k in labels] + [best.candidate]
            scored, r, c = self._score_batch(
                "heldout",
                -1,
                None,
                self.heldout_split,
                memo,
                candidates=cands,
                labels=[*labels, "best"],
                rows=[None] * len(labels) + [best.x],
            )
            resumed, cost = resumed + r, cost + c
            held_best = scored[-1]
            held_bases = dict(zip(labels, scored[:-1]))
        return RunSummary(
            baselines=baselines,
            best=best,
            heldout_baselines=held_bases,
            heldout_best=held_best,
            evaluations=done,
            resumed=resumed,
            cost=cost,
            cache_hits=int(getattr(self.objective, "cache_hits", 0)),
            wall_seconds=time.perf_counter() - t_start,
            history=history,
            cost_history=cost_history,
            search_cost=search_cost,
            raced_stops=self.raced_stops,
            budget_cuts=self.budget_cuts,
            stalled=self.stalled,
        )
