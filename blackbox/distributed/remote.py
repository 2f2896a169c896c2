"""The coordinator of distributed scoring: a runner whose generations are scored by workers.

    blackbox run CONFIG --storage URL --remote            # one coordinator (keeps the strategy)
    blackbox worker CONFIG --storage URL [--workers N]    # any number, on any machine

:class:`RemoteRunner` is the :class:`~blackbox.study.runner.Runner` with one change: a
generation of search candidates is not scored here.  Each row ``x[i]`` of generation ``g`` is
enqueued as a WAITING trial (``study.enqueue_trial``: fixed params; user attributes
``kind=search``, ``generation=g``, ``index=i``, ``split``, ``remote=True``); workers
(:class:`~blackbox.distributed.remote_worker.RemoteWorker`) take them in batches, score each batch in
one population-batched objective call and tell the values; once every row has an outcome the
coordinator tells the strategy.  Budget, baselines, the held-out re-score and resume stay the
runner's (baselines and the held-out re-score are scored here: they are not box points).

Outcome of a row, from the trials recorded at its ``(generation, index)`` with its params:

- a COMPLETE trial: its value (a retry of a SIGKILLed worker's trial included);
- a FAIL with a non-finite score (``error`` attribute): NaN, as in a single-process run;
- a WAITING or RUNNING trial: not yet;
- FAILs only (a stale trial Optuna's retry callback gave up on after ``--max-retry``), for
  ``settle`` seconds: NaN, and a line says so;
- no trial: enqueued (at the first look, or after a coordinator restart).

A SIGKILLed coordinator resumes with the same command: the strategy's seeded asks replay and
find their rows' trials in the storage (finished, running or still queued).  The study's
``blackbox:remote`` attribute is ``running`` while a coordinator runs and ``done`` after its
last generation; workers leave when it is ``done`` and nothing is queued.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from blackbox.study.runner import Runner, RunSummary, Scored, _recorded_extra
from blackbox.study.storage import MAX_PARAMS, Memo, _jsonable

STATE_ATTR = "blackbox:remote"
# The last generation whose rows are all queued: workers claim only those, so a generation is
# shared out whole (rows appear one by one; a worker polling mid-queue would take fewer)
QUEUED_ATTR = "blackbox:queued_generation"
"""Study user attribute: ``running`` while a coordinator runs, ``done`` after it finished."""


def is_remote(t: FrozenTrial) -> bool:
    """Whether ``t`` is a row a coordinator enqueued (or a retry of one)."""
    return bool(t.user_attrs.get("remote")) and t.user_attrs.get("kind") == "search"


def row_of(t: FrozenTrial, names: Sequence[str]) -> np.ndarray | None:
    """The box row of a remote trial: the fixed params it was enqueued with (a worker sets
    them as params one by one, so a just-claimed trial may hold only some), else its params,
    else its ``x`` attribute (boxes of more than :data:`MAX_PARAMS` dimensions); ``None`` if
    it does not fit."""
    params = t.system_attrs.get("fixed_params") or t.params or {}
    if not params and "x" in t.user_attrs:
        x = np.asarray(t.user_attrs["x"], dtype=float)
        return x if x.shape == (len(names),) else None
    if set(params) != set(names):
        return None
    return np.array([params[n] for n in names], dtype=float)


def non_finite(t: FrozenTrial) -> bool:
    """A FAIL trial whose worker scored it non-finite (final, never retried)."""
    return t.state == TrialState.FAIL and str(t.user_attrs.get("error", "")).startswith(
        "non-finite"
    )


@dataclass
class Outcome:
    """Where one row stands: ``status`` is ``done`` (``trial`` holds its value; a non-finite
    FAIL included), ``pending`` (queued or running), ``failed`` (FAILs only, no retry queued)
    or ``missing`` (never enqueued)."""

    status: str
    trial: FrozenTrial | None = None


def outcome(trials: Sequence[FrozenTrial]) -> Outcome:
    """The outcome of one row from its trials (any order)."""
    ordered = sorted(trials, key=lambda t: t.number)
    done = [t for t in ordered if t.state == TrialState.COMPLETE or non_finite(t)]
    if done:
        return Outcome("done", done[0])
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in ordered):
        return Outcome("pending")
    if ordered:
        return Outcome("failed", ordered[-1])
    return Outcome("missing")


def generation_outcomes(
    trials: Sequence[FrozenTrial], generation: int, x: np.ndarray, names: Sequence[str]
) -> list[Outcome]:
    """The outcome of every row of ``x`` ``(n, dim)`` at ``generation``: trials at its index
    whose params are not the row (another run's) are ignored."""
    by_index: dict[int, list[FrozenTrial]] = {i: [] for i in range(len(x))}
    for t in trials:
        a = t.user_attrs
        if not is_remote(t) or int(a.get("generation", -1)) != generation:
            continue
        i = int(a.get("index", -1))
        if i not in by_index:
            continue
        got = row_of(t, names)
        if got is not None and got.shape == x[i].shape and np.allclose(got, x[i], atol=1e-9):
            by_index[i].append(t)
    return [outcome(by_index[i]) for i in range(len(x))]


def enqueue_row(study: optuna.Study, box: Any, x: np.ndarray, attrs: dict[str, Any]) -> None:
    """Enqueue one box row ``x`` ``(dim,)`` as a WAITING trial with user attributes ``attrs``
    (integer dims as ints; wide boxes as an ``x`` attribute, as :func:`add_record` stores)."""
    if box.dim > MAX_PARAMS:
        params: dict[str, Any] = {}
        attrs = {**attrs, "x": [float(v) for v in x]}
    else:
        params = {
            n: (int(round(v)) if i else float(v)) for n, v, i in zip(box.names, x, box.integer)
        }
    study.enqueue_trial(params, user_attrs={k: _jsonable(v) for k, v in attrs.items()})


class RemoteRunner(Runner):
    """A :class:`Runner` that enqueues each generation for workers and waits for its values.

    Args:
        *args, **kwargs: as :class:`Runner`.
        poll: seconds between looks at the storage while a generation is scored.
        settle: seconds a row may show only FAIL trials (no retry queued) before it counts as
            failed (NaN): a retry is queued right after its original fails, so this only
            happens once Optuna's retry callback has given up.
        log: where one-line messages go (default: stderr).
    """

    def __init__(
        self,
        *args: Any,
        poll: float = 0.2,
        settle: float = 10.0,
        log: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._options(poll, settle, log)

    def _options(self, poll: float, settle: float, log: Callable[[str], None] | None) -> None:
        self.poll, self.settle = float(poll), float(settle)
        self.log = log or (lambda msg: print(f"coordinator: {msg}", file=sys.stderr))
        self.enqueued = 0

    @classmethod
    def from_runner(
        cls,
        runner: Runner,
        poll: float = 0.2,
        settle: float = 10.0,
        log: Callable[[str], None] | None = None,
    ) -> RemoteRunner:
        """The same runner (space, objective, strategy, study, budget, ...) made remote."""
        new = cls.__new__(cls)
        new.__dict__.update(runner.__dict__)
        new._options(poll, settle, log)
        return new

    def run(self) -> RunSummary:
        """Run (or resume) the study, its generations scored by workers."""
        self.study.set_user_attr(QUEUED_ATTR, -1)
        self.study.set_user_attr(STATE_ATTR, "running")
        summary = super().run()
        self.study.set_user_attr(STATE_ATTR, "done")
        return summary

    def _score_batch(
        self,
        kind: str,
        generation: int,
        x: np.ndarray | None,
        split: str,
        memo: Memo,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[list[Scored], int, float]:
        """Search rows go to the workers; baselines and held-out re-scores are scored here."""
        if kind != "search" or x is None or args or kwargs.get("candidates") is not None:
            return super()._score_batch(kind, generation, x, split, memo, *args, **kwargs)
        return self._remote(generation, x, split, float(kwargs.get("extra", 0.0)))

    def _remote(
        self, generation: int, x: np.ndarray, split: str, extra: float
    ) -> tuple[list[Scored], int, float]:
        """Enqueue the rows of ``x`` ``(n, dim)`` not yet in the storage, wait for all."""
        names = self.names
        outs = generation_outcomes(self.study.get_trials(deepcopy=False), generation, x, names)
        resumed = [o.status == "done" for o in outs]
        # the strategy's own work (EPO's gradients) rides on each row it asked for, so the
        # cost a worker stores is the whole cost, and a resumed coordinator reads it back
        share = extra / max(1, sum(not r for r in resumed))
        for i, o in enumerate(outs):
            if o.status == "missing":
                attrs = {
                    "kind": "search",
                    "generation": generation,
                    "index": i,
                    "strategy_cost": share,
                }
                enqueue_row(
                    self.study, self.space.box, x[i], {**attrs, "split": split, "remote": True}
                )
                self.enqueued += 1
        self.study.set_user_attr(QUEUED_ATTR, generation)
        t0 = time.monotonic()
        failed_since: dict[int, float] = {}
        told_waiting = False
        while True:
            now = time.monotonic()
            for i, o in enumerate(outs):
                if o.status == "failed":
                    failed_since.setdefault(i, now)
                else:
                    failed_since.pop(i, None)
            given_up = {i for i, t in failed_since.items() if now - t >= self.settle}
            if all(o.status == "done" or i in given_up for i, o in enumerate(outs)):
                break
            if not told_waiting and now - t0 > 30 and all(o.status != "done" for o in outs):
                told_waiting = True
                self.log(
                    f"generation {generation}: {len(outs)} trial(s) queued; waiting for workers "
                    "(blackbox worker CONFIG --storage URL)"
                )
            time.sleep(self.poll)
            trials = self.study.get_trials(deepcopy=False)
            outs = generation_outcomes(trials, generation, x, names)
        for i in sorted(given_up):
            if outs[i].status == "failed":
                self.log(
                    f"generation {generation}, row {i}: every try failed (workers killed); "
                    "counted as a failed evaluation (NaN)"
                )
        return self._collect(x, outs, resumed, extra)

    def _collect(
        self, x: np.ndarray, outs: list[Outcome], resumed: list[bool], extra: float
    ) -> tuple[list[Scored], int, float]:
        """Scored rows from their outcomes; the strategy's ``extra`` work is charged to the
        rows scored in this session (as the runner charges it to its new evaluations)."""
        cands = self.space.decode(x)
        new = sum(not r for r in resumed)
        share = extra / new if new else 0.0
        out: list[Scored] = []
        cost = 0.0
        for i, o in enumerate(outs):
            t = o.trial if o.status == "done" else None
            a = t.user_attrs if t is not None else {}
            value = Memo.value(t) if t is not None else math.nan
            c = float(a.get("cost") or 0.0)
            if not resumed[i]:
                c += 0.0 if "strategy_cost" in a else share  # older records: charged here
                cost += c
            s = Scored(x[i], cands[i], value, dict(a.get("metrics") or {}), c, _recorded_extra(a))
            if a.get("per_doc") is not None and hasattr(s, "per_doc"):
                s.per_doc = np.asarray(a["per_doc"], dtype=float)
            out.append(s)
        return out, sum(resumed), cost


def check_remote(cfg: Any) -> None:
    """What ``--remote`` needs, checked before the model loads (one-line ``ConfigError``):
    a storage every worker can open, and no racing (workers score whole documents sets)."""
    from blackbox.sections import ConfigError

    url = cfg.storage or ""
    if not url or url.startswith("sqlite:///:memory:") or url == "sqlite://":
        raise ConfigError(
            "--remote: workers need a shared storage; pass --storage URL "
            "(postgresql://... for many machines, journal:///FILE on one host)"
        )
    scoring = getattr(cfg, "scoring", None)
    if getattr(scoring, "racing", None) is not None:
        raise ConfigError(
            "--remote: scoring.racing is not supported with remote workers; remove it"
        )


def remote_wrapper(poll: float = 0.2, settle: float = 10.0) -> Callable[[Runner], RemoteRunner]:
    """A function making a built runner remote (for :func:`blackbox.study.pipeline.execute`)."""
    return lambda runner: RemoteRunner.from_runner(runner, poll=poll, settle=settle)
