"""A worker for a coordinator's generations (see :mod:`blackbox.distributed.remote`).

:class:`RemoteWorker` is :class:`~blackbox.distributed.worker.Worker` with another source of trials:
instead of asking the study's sampler it takes up to ``batch`` WAITING trials a coordinator
enqueued (lowest numbers first: the oldest generation), claims each by setting it RUNNING (the
storage lets one worker win), and scores the batch in one objective call, so a worker keeps its
population-batched forward passes.  Everything else is the worker's: heartbeats, a stale
(SIGKILLed) worker's trial failed and queued again by Optuna's retry callback, NaN scores told
FAIL, Ctrl-C (finish the batch; twice: abandon it, its trials queued again).

Workers share a generation evenly however they were started (one ``--workers N`` command or a
command per machine): each live worker marks itself in the study's system attributes
(``blackbox:worker:<host:pid:tag>``: the time it last looked for work), and a worker claims at most
``ceil(generation size / live workers)`` rows of a generation (capped by ``batch`` when set).

It leaves when the coordinator marked the study ``done`` and nothing is queued; until then it
waits, so a coordinator may be restarted under it.  A worker that has not seen a coordinator
running yet (started after one finished, before the next starts with a larger budget) waits
``linger`` seconds for one before it leaves.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections import defaultdict
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import Trial, TrialState

from blackbox.api import Problem
from blackbox.distributed.remote import QUEUED_ATTR, STATE_ATTR, is_remote
from blackbox.distributed.worker import Heartbeat, Worker, WorkerSummary, _plain
from blackbox.optuna_internals import storage_of, study_id, trial_id
from blackbox.study.storage import MAX_PARAMS

ALIVE_PREFIX = "blackbox:worker:"
"""Study system attribute ``blackbox:worker:<id>``: when that worker last looked for work."""


class RemoteWorker(Worker):
    """Scores the trials a coordinator enqueued, ``batch`` at a time.

    Args:
        study: the shared study (its sampler is never asked).
        space: the search space (``box``, ``decode``, ``describe``, ``intervention``).
        objective: scores a batch of candidates (population-batched).
        batch: the most trials taken per objective call (``None``: a fair share of each
            generation, ``ceil(rows / live workers)``; a set ``batch`` is also capped by it).
        heartbeat, grace, max_retry, log: as :class:`~blackbox.distributed.worker.Worker`.
        poll: seconds between looks at the queue while it is empty.
        linger: seconds a worker that never saw a coordinator running waits for one while
            the study is marked ``done``.
    """

    def __init__(
        self,
        study: optuna.Study,
        space: Any,
        objective: Any,
        batch: int | None = None,
        heartbeat: float = 10.0,
        grace: float = 60.0,
        max_retry: int | None = 3,
        poll: float = 0.2,
        linger: float = 30.0,
        log: Any = None,
    ) -> None:
        super().__init__(
            study,
            space,
            objective,
            budget=0,
            batch=batch or 1,
            heartbeat=heartbeat,
            grace=grace,
            max_retry=max_retry,
            log=log,
        )
        self.idle = float(poll)
        self.problem = Problem(space, objective)
        self.wide = space.box.dim > MAX_PARAMS
        self.linger = float(linger)
        self._born = time.monotonic()
        self._seen_running = False
        self.cap = None if batch is None else max(1, int(batch))
        self._marked_at = -math.inf
        # host:pid is shared by workers in one process (threads): the mark needs its own key
        self._mark_key = f"{ALIVE_PREFIX}{self.id}:{uuid.uuid4().hex[:8]}"

    def run(self) -> WorkerSummary:
        """Mark this worker live, take generations until the coordinator is done, unmark."""
        self._mark()
        try:
            return super().run()
        finally:
            with contextlib.suppress(Exception):  # a storage gone: the mark goes stale anyway
                self._mark(0.0)

    def _mark(self, when: float | None = None) -> None:
        """Record that this worker is looking for work (``when`` 0: it left)."""
        storage = storage_of(self.study)
        now = time.time() if when is None else when
        storage.set_study_system_attr(study_id(self.study), self._mark_key, now)
        self._marked_at = time.monotonic()

    def live_workers(self) -> int:
        """Workers that looked for work in the last ``max(grace, 2 heartbeats)`` seconds (this
        one included)."""
        window = max(self.grace, 2 * self.heartbeat)
        now = time.time()
        attrs = storage_of(self.study).get_study_system_attrs(study_id(self.study))
        others = sum(
            1
            for k, v in attrs.items()
            if k.startswith(ALIVE_PREFIX)
            and k != self._mark_key
            and isinstance(v, int | float)
            and now - v <= window
        )
        return 1 + others

    def share(self, rows: int) -> int:
        """How many rows of a generation of ``rows`` this worker takes at most."""
        fair = max(1, -(-rows // self.live_workers()))
        return fair if self.cap is None else min(self.cap, fair)

    def _ask(self, hb: Heartbeat) -> list[Trial] | None:
        """Up to ``batch`` claimed trials; ``[]`` while waiting; ``None`` once the study is done."""
        storage, out = storage_of(self.study), []
        if time.monotonic() - self._marked_at >= min(self.heartbeat, self.grace) / 2:
            self._mark()
        queued = self.study.user_attrs.get(QUEUED_ATTR)  # None: a coordinator before the marker
        waiting = [
            t
            for t in storage.get_all_trials(
                study_id(self.study), deepcopy=False, states=(TrialState.WAITING,)
            )
            if is_remote(t) and (queued is None or t.user_attrs.get("generation", 0) <= queued)
        ]
        take = 0
        if waiting:  # rows of the oldest queued generation, shared by the live workers
            first = waiting[0].user_attrs.get("generation", 0)
            rows = sum(
                1
                for t in storage.get_all_trials(study_id(self.study), deepcopy=False)
                if is_remote(t) and t.user_attrs.get("generation", 0) == first
            )
            take = self.share(rows)
        for t in waiting:
            if len(out) >= take:
                break
            try:
                if not storage.set_trial_state_values(trial_id(t), state=TrialState.RUNNING):
                    continue  # another worker claimed it first
            except UpdateFinishedTrialError:
                continue
            hb.hold(trial_id(t))
            trial = Trial(self.study, trial_id(t))
            if not self.wide:  # the fixed params become the trial's params
                for name, dist in self.dists.items():
                    trial._suggest(name, dist)
            trial.set_user_attr("worker", self.id)
            out.append(trial)
        if out or waiting:
            return out
        state = self.study.user_attrs.get(STATE_ATTR)
        self._seen_running = self._seen_running or state == "running"
        if state == "done" and (self._seen_running or time.monotonic() - self._born > self.linger):
            return None
        return []

    def _evaluate(self, trials: list[Trial], hb: Heartbeat) -> None:
        """Score the batch (one objective call per split) and tell each value."""
        names = self.space.box.names
        by_split: dict[str, list[Trial]] = defaultdict(list)
        for t in trials:
            by_split[str(t.user_attrs.get("split", self.split))].append(t)
        for split, group in by_split.items():
            x = np.array(
                [t.user_attrs["x"] if self.wide else [t.params[n] for n in names] for t in group],
                dtype=float,
            )
            cands = self.space.decode(x)
            t0 = time.perf_counter()
            self._evaluating = True
            try:
                ev = self.problem.evaluate(cands, split=split)
            finally:
                self._evaluating = False
            seconds = (time.perf_counter() - t0) / len(group)
            extra_names = getattr(self.objective, "extra_names", None)
            for j, (trial, cand) in enumerate(zip(group, cands)):
                metrics = dict(ev.metrics[j]) if ev.metrics else {}
                attrs: dict[str, Any] = {
                    "candidate": self.space.describe(cand),
                    "metrics": {k: _plain(v) for k, v in metrics.items() if k != "cache_hit"},
                    "cache_hit": bool(metrics.get("cache_hit", False)),
                    # the row's share of the strategy's work (gradients), set by the coordinator
                    "cost": float(ev.cost) / len(group)
                    + float(trial.user_attrs.get("strategy_cost") or 0.0),
                    "seconds": seconds,
                }
                if ev.extra is not None:
                    keys = extra_names or [f"extra{k}" for k in range(ev.extra.shape[1])]
                    attrs["extra"] = {k: _plain(float(v)) for k, v in zip(keys, ev.extra[j])}
                docs = getattr(ev, "per_doc", None)
                if docs is not None and docs[j] is not None:
                    attrs["per_doc"] = [_plain(float(v)) for v in docs[j]]
                self._record(trial, float(ev.values[j]), attrs, hb)
