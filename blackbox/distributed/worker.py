"""Workers: many processes, on one or many machines, sharing one Optuna study.

Each worker loads the model once, joins the study and loops: ask a small batch of trials from
the study's own Optuna sampler (``study.ask``), score them in one objective call, tell each
value.  The storage is the only coordination: the sampler sees every worker's trials.

Budget: before each ``ask`` a worker counts the study's search trials; it stops when
``COMPLETE >= budget.evaluations`` and asks only while ``COMPLETE + RUNNING < budget`` (a
trial in flight takes a slot, a retry waiting in the queue is popped first by ``ask``).  The
count and the ask are not one transaction, so workers racing for the last slot can overshoot
by at most ``workers - 1`` complete trials; no trial is ever counted twice.

Faults:

- a SIGKILLed (or frozen) worker stops beating; the next worker's stale check (before every
  ask) marks its RUNNING trials FAIL and Optuna's ``RetryHeartbeatStaleTrialCallback``
  enqueues each again (same params, ``failed_trial`` system attr), up to ``max_retry`` times.
  ``RDBStorage`` (PostgreSQL, MySQL, SQLite) has native heartbeats; for a journal file
  (no heartbeat support in Optuna) the worker stores a timestamp in a trial system attr and
  applies the same rule and callback itself.
- a NaN/inf score is told FAIL (metrics kept) and the worker goes on.
- SIGINT: the first finishes the current batch, the second abandons it (its trials told FAIL
  and re-enqueued); then the worker exits 130.  Resume is the same command again.

Population strategies (``pso``, ``nevergrad``, the GA, EPO...) keep their state in one
coordinator process (``blackbox run --remote``, :mod:`blackbox.distributed.remote`) that enqueues each
generation; :class:`~blackbox.distributed.remote_worker.RemoteWorker` (this loop with another ``_ask``)
takes those trials in batches instead of asking a sampler.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import Trial, TrialState

from blackbox.optuna_internals import (
    BaseHeartbeat,
    is_heartbeat_enabled,
    storage_of,
    trial_id,
)
from blackbox.study.storage import distributions, fail_reason

HEARTBEAT_ATTR = "blackbox:heartbeat"
NON_SEARCH_KINDS = ("baseline", "heldout")


def worker_id() -> str:
    """``host:pid`` of this process (stored on every trial it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def retry_callback(max_retry: int | None) -> RetryHeartbeatStaleTrialCallback:
    """Optuna's retry-on-stale callback (its experimental warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """Number of the original trial that ``trial`` retries (``None`` if it is no retry)."""
    return trial.system_attrs.get("failed_trial")


class Heartbeat:
    """A thread beating for the trials this worker holds, every ``interval`` seconds.

    On an ``RDBStorage`` with heartbeats it calls ``record_heartbeat``; on other storages it
    writes the time into the trial's ``HEARTBEAT_ATTR`` system attribute.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float) -> None:
        self.storage, self.interval = storage, float(interval)
        self.native = is_heartbeat_enabled(storage)
        self.held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="blackbox-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def beat(self, trial_id: int) -> None:
        """Beat for one trial now."""
        try:
            if self.native:
                assert isinstance(self.storage, BaseHeartbeat)
                self.storage.record_heartbeat(trial_id)
            else:
                self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            self.release(trial_id)

    def hold(self, trial_id: int) -> None:
        """Start beating for ``trial_id`` (one beat at once)."""
        self.beat(trial_id)
        with self._lock:
            self.held.add(trial_id)

    def release(self, trial_id: int) -> None:
        with self._lock:
            self.held.discard(trial_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self.held)
            for tid in ids:
                try:
                    self.beat(tid)
                except Exception:  # a transient storage error must not kill the worker
                    pass


def fail_stale_trials(study: optuna.Study, grace: float, callback: Callable[..., None]) -> int:
    """Fail RUNNING trials whose heartbeat is older than ``grace`` seconds; retry them.

    Uses Optuna's own check on heartbeat-enabled storages; elsewhere the later of
    ``HEARTBEAT_ATTR`` and the start time.  A trial failed by two workers at once is failed
    (and retried) once: the storage refuses the second update.  Returns how many trials this
    call failed.
    """
    storage = storage_of(study)
    if is_heartbeat_enabled(storage):
        before = _count_state(study, TrialState.FAIL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return _count_state(study, TrialState.FAIL) - before
    failed = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # a retry inherits its original's system attrs, heartbeat included: never count a
        # beat from before this trial started running
        beat = t.system_attrs.get(HEARTBEAT_ATTR)
        start = t.datetime_start.timestamp() if t.datetime_start is not None else None
        last = max((float(v) for v in (beat, start) if v is not None), default=None)
        if last is None or now - last <= grace:
            continue
        try:
            if not storage.set_trial_state_values(trial_id(t), TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker failed (or finished) it first
        failed += 1
        callback(study, storage.get_trial(trial_id(t)))
    return failed


def _count_state(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def search_counts(study: optuna.Study) -> dict[TrialState, int]:
    """Search trials per state (a just-asked trial without a ``kind`` counts as search)."""
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("kind", "search") not in NON_SEARCH_KINDS:
            counts[t.state] += 1
    return counts


@dataclass
class WorkerSummary:
    """What one worker did."""

    told: int = 0
    failed: int = 0
    dropped: int = 0
    abandoned: int = 0
    stale_failed: int = 0
    interrupted: bool = False
    best: float | None = None
    numbers: list[int] = field(default_factory=list)


class Worker:
    """The ask -> evaluate -> tell loop of one worker on a shared study.

    Args:
        study: the shared study (its sampler proposes the candidates).
        space: the search space (``box``, ``decode``, ``describe``).
        objective: scores the space's intervention of a batch of candidates on ``split``.
        budget: complete search trials the study should reach.
        batch: trials asked per objective call (one batched forward pass).
        heartbeat: seconds between heartbeats.
        grace: seconds without a heartbeat after which a RUNNING trial is stale.
        max_retry: retries of a stale trial (``None``: unlimited).
        split: the objective split searched on.
        log: where one-line messages go.
    """

    def __init__(
        self,
        study: optuna.Study,
        space: Any,
        objective: Any,
        budget: int,
        batch: int = 1,
        heartbeat: float = 10.0,
        grace: float = 60.0,
        max_retry: int | None = 3,
        split: str = "search",
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.study, self.space, self.objective = study, space, objective
        self.budget, self.batch = int(budget), max(1, int(batch))
        self.heartbeat, self.grace = heartbeat, grace
        self.callback = retry_callback(max_retry)
        self.split = split
        self.dists = distributions(space.box)
        self.id = worker_id()
        self.log = log or (lambda msg: print(f"worker {self.id}: {msg}", file=sys.stderr))
        self._stop = False
        self._evaluating = False
        self._done_since: float | None = None
        self.summary = WorkerSummary()
        self.idle = min(self.heartbeat, 2.0)  # seconds between looks while nothing is free

    def request_stop(self) -> None:
        """Finish the current batch, then stop."""
        self._stop = True

    def on_sigint(self, _signum: int, _frame: Any) -> None:
        """First Ctrl-C: finish the batch; a second one during scoring abandons it."""
        if self._stop and self._evaluating:
            raise KeyboardInterrupt
        if not self._stop:
            self._stop = True
            self.log("interrupted: finishing the current batch (Ctrl-C again to abandon it)")

    def run(self) -> WorkerSummary:
        """Take trials until the study holds ``budget`` complete search trials (or a stop)."""
        with Heartbeat(storage_of(self.study), self.heartbeat) as hb:
            while not self._stop:
                self.summary.stale_failed += fail_stale_trials(
                    self.study, self.grace, self.callback
                )
                trials = self._ask(hb)
                if trials is None:
                    break
                if not trials:  # every free slot is held by a running trial: wait and re-check
                    time.sleep(self.idle)
                    continue
                try:
                    self._evaluate(trials, hb)
                except KeyboardInterrupt:
                    self._abandon(trials, hb)
                    self.summary.interrupted = True
                    return self.summary
        self.summary.interrupted = self._stop
        return self.summary

    def _ask(self, hb: Heartbeat) -> list[Trial] | None:
        """Up to ``batch`` trials; ``None`` once the study is done.

        Waiting trials (retries of stale ones, enqueued trials) are always taken.  Once the
        budget is reached the worker still waits (``[]``) while other workers' trials run, so a
        dead worker's trial is failed and retried rather than left RUNNING; it gives up waiting
        after ``grace`` plus two heartbeats (a trial that never beat cannot go stale).
        """
        out: list[Trial] = []
        for _ in range(self.batch):
            counts = search_counts(self.study)
            complete, running = counts[TrialState.COMPLETE], counts[TrialState.RUNNING]
            waiting = counts[TrialState.WAITING]
            if not waiting and complete >= self.budget:
                if out:
                    break
                if not running or self._waited_out():
                    return None
                return []
            if not waiting and complete + running >= self.budget:
                break
            with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize"
                warnings.simplefilter("ignore")
                trial = self.study.ask(self.dists)
            hb.hold(trial_id(trial))
            trial.set_user_attr("kind", "search")
            trial.set_user_attr("worker", self.id)
            out.append(trial)
        self._done_since = None
        return out

    def _waited_out(self) -> bool:
        """Whether the budget was met over ``grace`` + two heartbeats ago (and log once)."""
        now = time.monotonic()
        if self._done_since is None:
            self._done_since = now
        if now - self._done_since <= self.grace + 2 * self.heartbeat:
            return False
        self.log("budget reached; leaving trials that are still RUNNING without a heartbeat")
        return True

    def _evaluate(self, trials: list[Trial], hb: Heartbeat) -> None:
        names = self.space.box.names
        x = np.array([[t.params[n] for n in names] for t in trials], dtype=float)
        cands = self.space.decode(x)
        t0 = time.perf_counter()
        self._evaluating = True
        try:
            ev = self.objective.evaluate(self.space.intervention(cands), split=self.split)
        finally:
            self._evaluating = False
        seconds = (time.perf_counter() - t0) / len(trials)
        for j, (trial, cand) in enumerate(zip(trials, cands)):
            value = float(ev.values[j])
            metrics = dict(ev.metrics[j]) if ev.metrics else {}
            attrs = {
                "generation": trial.number,
                "index": 0,
                "split": self.split,
                "candidate": self.space.describe(cand),
                "metrics": {k: _plain(v) for k, v in metrics.items() if k != "cache_hit"},
                "cache_hit": bool(metrics.get("cache_hit", False)),
                "cost": float(ev.cost) / len(trials),
                "seconds": seconds,
            }
            self._record(trial, value, attrs, hb)

    def _record(self, trial: Trial, value: float, attrs: dict[str, Any], hb: Heartbeat) -> None:
        try:
            for key, val in attrs.items():
                trial.set_user_attr(key, val)
            if math.isfinite(value):
                self.study.tell(trial, value)
                self.summary.told += 1
                self.summary.best = max(value, self.summary.best or -math.inf)
            else:
                reason = fail_reason(attrs)
                trial.set_user_attr("fail_reason", reason)
                trial.set_user_attr("error", f"non-finite score {value}")
                self.study.tell(trial, state=TrialState.FAIL)
                self.summary.failed += 1
                self.log(f"trial {trial.number}: score {value}; marked FAIL ({reason})")
            self.summary.numbers.append(trial.number)
        except (UpdateFinishedTrialError, ValueError):
            # Failed by another worker's stale check meanwhile (and retried there): drop it.
            self.summary.dropped += 1
            self.log(f"trial {trial.number}: was marked stale meanwhile; result dropped")
        finally:
            hb.release(trial_id(trial))

    def _abandon(self, trials: list[Trial], hb: Heartbeat) -> None:
        """Tell the batch FAIL and enqueue each trial again (as a stale trial would be)."""
        for trial in trials:
            try:
                trial.set_user_attr("error", "abandoned (interrupted)")
                self.study.tell(trial, state=TrialState.FAIL)
                self.callback(self.study, storage_of(self.study).get_trial(trial_id(trial)))
                self.summary.abandoned += 1
            except (UpdateFinishedTrialError, ValueError):
                pass
            finally:
                hb.release(trial_id(trial))
        self.log(f"interrupted: abandoned {len(trials)} trial(s), told FAIL and queued again")


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def install_sigint(worker: Worker) -> Callable[[], None]:
    """Route SIGINT to ``worker.on_sigint``; returns a function restoring the old handler."""
    old = signal.signal(signal.SIGINT, worker.on_sigint)
    return lambda: signal.signal(signal.SIGINT, old)
