"""The coordinator and its workers in one process, on a closed-form objective (no model).

The model-backed, multi-process proofs (PostgreSQL, SIGKILLs) are in ``test_remote_e2e.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from blackbox.distributed.remote import STATE_ATTR, RemoteRunner, enqueue_row, outcome
from blackbox.distributed.remote_worker import RemoteWorker
from blackbox.evals.synthetic import FunctionObjective, neg_sphere
from blackbox.search_spaces.box import BoxSpace
from blackbox.strategies import make_strategy
from blackbox.strategies.base import Box
from blackbox.study.runner import Budget, Runner
from blackbox.study.storage import make_storage, open_study

BOX = Box(
    np.array([0.0, -2.0, -2.0]),
    np.array([9.0, 2.0, 2.0]),
    np.array([True, False, False]),
    ("layer", "a", "b"),
)
FN = neg_sphere([4.0, 0.5, -0.5])


def _nan_left(x: np.ndarray) -> np.ndarray:
    """The sphere, NaN where ``a < -1`` (a failing candidate)."""
    v = FN(x)
    return np.where(x[:, 1] < -1.0, np.nan, v)


def _run(
    storage: Any, strategy: str, evaluations: int, remote: bool, fn: Any = FN, **settings: Any
) -> tuple[Any, optuna.Study]:
    space = BoxSpace(BOX, baseline_point=[0.0, 0.0, 0.0])
    study = open_study(storage, "t", BOX, "fp")
    strat = make_strategy(strategy, BOX, seed=3, population=6, **settings)
    cls = RemoteRunner if remote else Runner
    kw = {"poll": 0.02, "log": lambda m: None} if remote else {}
    runner = cls(
        space, FunctionObjective(fn), strat, study, Budget(evaluations), progress=False, **kw
    )
    if not remote:
        return runner.run(), study
    out: list[Any] = []
    coordinator = threading.Thread(target=lambda: out.append(runner.run()), daemon=True)
    coordinator.start()
    coordinator.join(timeout=600)  # generous: a loaded CI machine, not a speed check
    assert out, "the coordinator finished (its workers scored every generation)"
    return out[0], study


def _workers(
    storage: Any, n: int, fn: Any = FN
) -> tuple[list[RemoteWorker], list[threading.Thread]]:
    study = optuna.load_study(study_name="t", storage=storage)
    ws = [
        RemoteWorker(
            study,
            BoxSpace(BOX),
            FunctionObjective(fn),
            batch=2,
            poll=0.02,
            log=lambda m: None,
            linger=300.0,  # a resumed study is "done" until its coordinator starts: wait for it
        )
        for _ in range(n)
    ]
    ts = [threading.Thread(target=w.run, daemon=True) for w in ws]
    for t in ts:
        t.start()
    return ws, ts


def _search(study: optuna.Study) -> dict[tuple[int, int], tuple[Any, ...]]:
    """Final search records by (generation, index): params, state, value."""
    out = {}
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL)):
        a = t.user_attrs
        if a.get("kind") != "search" or (
            t.state == TrialState.FAIL and "error" not in a and a.get("remote")
        ):
            continue
        out[(a["generation"], a["index"])] = (t.params, t.state, t.value)
    return out


@pytest.mark.parametrize(
    ("strategy", "settings"), [("pso", {}), ("nevergrad", {"optimizer": "CMA"})]
)
def test_remote_workers_give_the_single_process_trials(
    tmp_path: Path, strategy: str, settings: dict[str, Any]
) -> None:
    ref, ref_study = _run(f"sqlite:///{tmp_path / 'ref.db'}", strategy, 24, False, **settings)
    storage = make_storage(f"journal://{tmp_path / 'j.log'}")
    open_study(storage, "t", BOX, "fp")
    ws, ts = _workers(storage, 3)
    got, study = _run(storage, strategy, 24, True, **settings)
    for t in ts:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in ts), "workers leave once the coordinator is done"
    assert study.user_attrs[STATE_ATTR] == "done"
    assert _search(study) == _search(ref_study) and len(_search(study)) == 24
    assert got.best.value == ref.best.value and np.array_equal(got.best.x, ref.best.x)
    np.testing.assert_array_equal(got.history, ref.history)
    assert got.evaluations == ref.evaluations == 24
    assert sum(w.summary.told for w in ws) == 24
    assert all(t.user_attrs["worker"] for t in study.trials if t.user_attrs.get("remote"))


def test_nan_rows_fail_as_in_one_process_and_a_resumed_coordinator_reads_back(
    tmp_path: Path,
) -> None:
    ref, ref_study = _run(f"sqlite:///{tmp_path / 'ref.db'}", "pso", 30, False, fn=_nan_left)
    assert any(s[1] == TrialState.FAIL for s in _search(ref_study).values())
    storage = make_storage(f"journal://{tmp_path / 'j.log'}")
    open_study(storage, "t", BOX, "fp")
    _, ts = _workers(storage, 2, fn=_nan_left)
    first, _ = _run(storage, "pso", 12, True, fn=_nan_left)  # a coordinator that stopped early
    for t in ts:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in ts), "workers leave when the coordinator is done"
    _, ts = _workers(storage, 2, fn=_nan_left)
    got, study = _run(storage, "pso", 30, True, fn=_nan_left)  # the same command, more budget
    for t in ts:
        t.join(timeout=30)
    assert first.evaluations == 12 and got.resumed >= 12 + 1  # 12 searched + the baseline
    assert _search(study) == _search(ref_study)
    assert got.best.value == ref.best.value
    np.testing.assert_array_equal(got.history, ref.history)
    assert sum(1 for t in study.trials if t.user_attrs.get("kind") == "search") == 30


def test_a_generation_queued_by_a_dead_coordinator_is_found_not_queued_again(
    tmp_path: Path,
) -> None:
    storage = make_storage(f"journal://{tmp_path / 'j.log'}")
    study = open_study(storage, "t", BOX, "fp")
    strat = make_strategy("pso", BOX, seed=3, population=6)
    x = strat.ask()
    for i in range(4):  # the dead coordinator queued four of six rows
        attrs = {"kind": "search", "generation": 0, "index": i, "split": "search", "remote": True}
        enqueue_row(study, BOX, x[i], attrs)
    _, ts = _workers(storage, 2)
    got, study = _run(storage, "pso", 6, True)
    for t in ts:
        t.join(timeout=30)
    search = [t for t in study.trials if t.user_attrs.get("kind") == "search"]
    assert len(search) == 6 and all(t.state == TrialState.COMPLETE for t in search)
    assert sorted(t.user_attrs["index"] for t in search) == list(range(6))
    # rows the workers scored before this coordinator looked are read back, never re-queued
    assert got.resumed <= 4 and got.evaluations == 6


def _frozen(number: int, state: TrialState, error: str | None = None) -> optuna.trial.FrozenTrial:
    attrs = {"kind": "search", "remote": True, **({"error": error} if error else {})}
    return optuna.trial.FrozenTrial(
        number=number,
        state=state,
        value=1.0 if state == TrialState.COMPLETE else None,
        values=None,
        datetime_start=None,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


def test_outcome_of_a_row() -> None:
    C, F, W, R = TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING, TrialState.RUNNING
    assert outcome([]).status == "missing"
    assert outcome([_frozen(0, W)]).status == "pending"
    assert outcome([_frozen(0, F), _frozen(5, R)]).status == "pending"  # killed, retry running
    got = outcome([_frozen(0, F), _frozen(5, C)])
    assert got.status == "done" and got.trial.number == 5
    nan = outcome([_frozen(2, F, "non-finite score nan")])
    assert nan.status == "done" and nan.trial.number == 2
    assert outcome([_frozen(0, F), _frozen(5, F, "abandoned (interrupted)")]).status == "failed"


def test_remote_needs_a_shared_storage_and_no_racing() -> None:
    from types import SimpleNamespace

    from blackbox.config import ConfigError
    from blackbox.distributed.remote import check_remote

    def cfg(storage: str | None, racing: Any = None) -> Any:
        return SimpleNamespace(storage=storage, scoring=SimpleNamespace(racing=racing))

    for storage in (None, "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="--remote: workers need a shared storage"):
            check_remote(cfg(storage))
    with pytest.raises(ConfigError, match="scoring.racing is not supported"):
        check_remote(cfg("journal:///tmp/x.log", racing={"schedule": [16]}))
    check_remote(cfg("postgresql://u@h/db"))  # fine


def test_the_strategy_work_is_stored_with_the_rows_and_read_back_on_resume(tmp_path: Path) -> None:
    """A strategy that spends work of its own every generation (EPO's gradients): the costs
    the workers store sum to the coordinator's search cost, as in one process, so a resumed
    coordinator reads the whole cost back (and would not overrun a cost budget)."""

    def run(storage: Any, remote: bool) -> tuple[Any, optuna.Study]:
        study = open_study(storage, "t", BOX, "fp")
        strat = make_strategy("random", BOX, seed=3, population=6)
        strat.pop_extra_cost = lambda: 5.0  # type: ignore[attr-defined]
        cls = RemoteRunner if remote else Runner
        kw = {"poll": 0.02, "log": lambda m: None} if remote else {}
        runner = cls(
            BoxSpace(BOX), FunctionObjective(FN), strat, study, Budget(18), progress=False, **kw
        )
        if not remote:
            return runner.run(), study
        out: list[Any] = []
        thread = threading.Thread(target=lambda: out.append(runner.run()), daemon=True)
        thread.start()
        thread.join(timeout=600)
        assert out
        return out[0], study

    def stored(study: optuna.Study) -> float:
        return sum(
            float(t.user_attrs["cost"])
            for t in study.get_trials(states=(TrialState.COMPLETE,))
            if t.user_attrs.get("kind") == "search"
        )

    ref, ref_study = run(f"sqlite:///{tmp_path / 'ref.db'}", False)
    storage = make_storage(f"journal://{tmp_path / 'j.log'}")
    open_study(storage, "t", BOX, "fp")
    _, ts = _workers(storage, 2)
    got, study = run(storage, True)
    for t in ts:
        t.join(timeout=30)
    assert ref.search_cost == pytest.approx(stored(ref_study))
    assert got.search_cost == pytest.approx(ref.search_cost)
    assert stored(study) == pytest.approx(got.search_cost)  # was 3 x 6 rows, no gradient work


def test_workers_claim_a_generation_only_once_it_is_all_queued(tmp_path: Path) -> None:
    """Rows appear one by one; a worker polling mid-queue would take fewer than its batch
    (three workers took 1/2/3 rows of a generation of six).  Workers wait for the marker."""
    from blackbox.distributed.remote import QUEUED_ATTR
    from blackbox.distributed.worker import Heartbeat

    storage = make_storage(f"journal://{tmp_path / 'j.log'}")
    study = open_study(storage, "t", BOX, "fp")
    study.set_user_attr(QUEUED_ATTR, -1)  # a coordinator started; generation 0 being queued
    x = make_strategy("random", BOX, seed=0, population=6).ask()
    for i in range(3):
        attrs = {"kind": "search", "generation": 0, "index": i, "split": "search", "remote": True}
        enqueue_row(study, BOX, x[i], attrs)
    worker = RemoteWorker(
        optuna.load_study(study_name="t", storage=storage),
        BoxSpace(BOX),
        FunctionObjective(FN),
        batch=2,
        poll=0.02,
        log=lambda m: None,
    )
    with Heartbeat(storage, 60.0) as hb:
        assert worker._ask(hb) == []  # three of six rows queued: none claimed yet
        for i in range(3, 6):
            attrs = {"kind": "search", "generation": 0, "index": i, "split": "search"}
            enqueue_row(study, BOX, x[i], {**attrs, "remote": True})
        study.set_user_attr(QUEUED_ATTR, 0)
        claimed = worker._ask(hb)
    assert [t.user_attrs["index"] for t in claimed] == [0, 1]  # its batch, in queue order


def test_separately_started_workers_share_a_generation_evenly(tmp_path: Path) -> None:
    """Workers started by separate commands (one per machine) each counted only themselves and
    took a whole generation; they now count every live worker of the study."""
    from blackbox.distributed.remote import QUEUED_ATTR
    from blackbox.distributed.worker import Heartbeat

    storage = make_storage(f"journal://{tmp_path / 'j.log'}")
    study = open_study(storage, "t", BOX, "fp")
    study.set_user_attr(QUEUED_ATTR, -1)
    x = make_strategy("random", BOX, seed=0, population=7).ask()

    def worker(batch: int | None = None) -> RemoteWorker:
        w = RemoteWorker(
            optuna.load_study(study_name="t", storage=storage),
            BoxSpace(BOX),
            FunctionObjective(FN),
            batch=batch,
            poll=0.02,
            log=lambda m: None,
        )
        w._mark()  # what run() does first
        return w

    ws = [worker(), worker(), worker()]
    assert [w.live_workers() for w in ws] == [3, 3, 3]
    for i in range(7):
        attrs = {"kind": "search", "generation": 0, "index": i, "split": "search", "remote": True}
        enqueue_row(study, BOX, x[i], attrs)
    study.set_user_attr(QUEUED_ATTR, 0)
    with Heartbeat(storage, 60.0) as hb:
        taken = [len(w._ask(hb)) for w in ws]
        assert taken == [3, 3, 1]  # ceil(7 / 3) each, the rest to the last
        ws[0]._mark(0.0)  # one leaves: a generation of 7 is now shared by two
        assert ws[1].live_workers() == 2 and ws[1].share(7) == 4
        assert worker(batch=2).share(7) == 2  # --batch caps the share
