"""Records in the Optuna storage say what they are: a refused candidate is not a crash."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from blackbox.strategies.base import dummy_box
from blackbox.study.storage import REJECTED, add_record


@pytest.mark.parametrize(
    ("value", "metrics", "state", "reason"),
    [
        (0.5, {}, TrialState.COMPLETE, None),
        (math.nan, {"rejected": True}, TrialState.FAIL, REJECTED),
        (math.nan, {}, TrialState.FAIL, "the objective returned a non-finite value (NaN or inf)"),
        (
            math.inf,
            {"acc": 1.0},
            TrialState.FAIL,
            "the objective returned a non-finite value (NaN or inf)",
        ),
    ],
)
def test_a_failed_record_says_why(value, metrics, state, reason) -> None:
    study = optuna.create_study(direction="maximize")
    t = add_record(study, dummy_box(), None, value, {"kind": "search", "metrics": metrics})
    assert t.state == state
    assert t.user_attrs.get("fail_reason") == reason


def test_baseline_and_heldout_records_live_beside_the_search_study(tmp_path) -> None:
    """Optuna and optuna-dashboard open the study by its name: its best trial must be a search
    score, never a held-out one (a selection leak for anyone who picks from there)."""
    from blackbox.multiobjective import ObjectiveSpec, SideColumn
    from blackbox.study.storage import Memo, eval_study, open_eval_study, open_study, records

    url = f"sqlite:///{tmp_path / 's.db'}"
    box = dummy_box()
    spec = ObjectiveSpec("acc", (SideColumn("kl", 0, bound=0.5),))
    study = open_study(url, "run", box, "fp", objectives=spec)
    assert eval_study(study) is None  # nothing made before a record needs it
    add_record(
        study, box, None, 0.6, {"kind": "search", "generation": 0, "index": 0, "extra": {"kl": 0.1}}
    )
    ev = open_eval_study(study)
    add_record(
        ev, box, None, 0.5, {"kind": "baseline", "generation": -1, "index": 0, "extra": {"kl": 0.0}}
    )
    add_record(
        ev, box, None, 0.9, {"kind": "heldout", "generation": -1, "index": 0, "extra": {"kl": 0.2}}
    )

    opened = optuna.load_study(study_name="run", storage=url)
    assert [t.user_attrs["kind"] for t in opened.trials] == ["search"]
    assert [t.values for t in opened.best_trials] == [[0.6, 0.1]]
    sibling = optuna.load_study(study_name="run:eval", storage=url)
    assert sibling.directions == opened.directions and sibling.metric_names == ["acc", "kl"]
    assert sibling.trials[1].values == [0.9, 0.2]  # side values and constraints as in the study
    assert sibling.trials[1].system_attrs["constraints:kl"] == pytest.approx(0.2 - 0.5)
    assert opened.user_attrs["eval_study"] == "run:eval"
    assert [t.user_attrs["kind"] for t in records(opened)] == ["search", "baseline", "heldout"]
    assert set(Memo.load(opened).by_key) == {
        ("search", 0, 0),
        ("baseline", -1, 0),
        ("heldout", -1, 0),
    }
    # opening it again reuses the sibling
    assert open_eval_study(study).trials[0].values == [0.5, 0.0]


def test_runs_recorded_before_the_split_still_replay() -> None:
    """A study made before the sibling existed holds its baselines itself: still read back."""
    from blackbox.study.storage import Memo, records

    study = optuna.create_study(direction="maximize")
    box = dummy_box()
    add_record(study, box, None, 0.5, {"kind": "baseline", "generation": -1, "index": 0})
    add_record(study, box, None, 0.7, {"kind": "search", "generation": 0, "index": 0})
    assert len(records(study)) == 2
    assert Memo.load(study).get("baseline", -1, 0).value == 0.5


def _raise_once(monkeypatch: pytest.MonkeyPatch, message: str) -> list[int]:
    """Make Optuna's RDBStorage fail once with an SQLite OperationalError(``message``)."""
    import sqlalchemy

    real, calls = optuna.storages.RDBStorage, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception(message))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    monkeypatch.setattr("blackbox.study.storage.time.sleep", lambda s: None)
    return calls


def test_a_table_made_meanwhile_by_another_process_is_retried(tmp_path, monkeypatch) -> None:
    """SQLite reports two processes creating a fresh database's tables at once as
    "table ... already exists" (an OperationalError): the loser opens it again (a killed-run
    test met this when its reader opened the study while the run created it)."""
    from blackbox.study.storage import make_storage

    calls = _raise_once(monkeypatch, "table trial_user_attributes already exists")
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []


def test_other_operational_errors_are_one_line_at_once(tmp_path, monkeypatch) -> None:
    from blackbox.study.storage import StorageError, make_storage

    calls = _raise_once(monkeypatch, "unable to open database file")
    with pytest.raises(StorageError, match="unable to open database file") as err:
        make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 1 and "\n" not in str(err.value)


def _open(url: str) -> str:
    from blackbox.study.storage import make_storage

    make_storage(url)
    return "ok"


def test_processes_opening_a_fresh_sqlite_database_at_once_all_succeed(tmp_path) -> None:
    import concurrent.futures
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'study.db'}"
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(6, mp_context=ctx) as pool:
        assert list(pool.map(_open, [url] * 6)) == ["ok"] * 6
