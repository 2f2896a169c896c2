"""A worker for a coordinator's generations (see :mod:`blackbox.study.remote`).

:class:`RemoteWorker` is :class:`~blackbox.study.worker.Worker` with another source of trials:
instead of asking the study's sampler it takes up to ``batch`` WAITING trials a coordinator
enqueued (lowest numbers first: the oldest generation), claims each by setting it RUNNING (the
storage lets one worker win), and scores the batch in one objective call, so a worker keeps its
population-batched forward passes.  Everything else is the worker's: heartbeats, a stale
(SIGKILLed) worker's trial failed and queued again by Optuna's retry callback, NaN scores told
FAIL, Ctrl-C (finish the batch; twice: abandon it, its trials queued again).

It leaves when the coordinator marked the study ``done`` and nothing is queued; until then it
waits, so a coordinator may be restarted under it.  A worker that has not seen a coordinator
running yet (started after one finished, before the next starts with a larger budget) waits
``linger`` seconds for one before it leaves.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import Trial, TrialState

from blackbox.api import Problem
from blackbox.study.remote import QUEUED_ATTR, STATE_ATTR, is_remote
from blackbox.study.storage import MAX_PARAMS
from blackbox.study.worker import Heartbeat, Worker, _plain


class RemoteWorker(Worker):
    """Scores the trials a coordinator enqueued, ``batch`` at a time.

    Args:
        study: the shared study (its sampler is never asked).
        space: the search space (``box``, ``decode``, ``describe``, ``intervention``).
        objective: scores a batch of candidates (population-batched).
        batch: trials taken per objective call.
        heartbeat, grace, max_retry, log: as :class:`~blackbox.study.worker.Worker`.
        poll: seconds between looks at the queue while it is empty.
        linger: seconds a worker that never saw a coordinator running waits for one while
            the study is marked ``done``.
    """

    def __init__(
        self,
        study: optuna.Study,
        space: Any,
        objective: Any,
        batch: int = 8,
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
            batch=batch,
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

    def _ask(self, hb: Heartbeat) -> list[Trial] | None:
        """Up to ``batch`` claimed trials; ``[]`` while waiting; ``None`` once the study is done."""
        storage, out = self.study._storage, []
        queued = self.study.user_attrs.get(QUEUED_ATTR)  # None: a coordinator before the marker
        waiting = [
            t
            for t in storage.get_all_trials(
                self.study._study_id, deepcopy=False, states=(TrialState.WAITING,)
            )
            if is_remote(t) and (queued is None or t.user_attrs.get("generation", 0) <= queued)
        ]
        for t in waiting:
            if len(out) >= self.batch:
                break
            try:
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue  # another worker claimed it first
            except UpdateFinishedTrialError:
                continue
            hb.hold(t._trial_id)
            trial = Trial(self.study, t._trial_id)
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
