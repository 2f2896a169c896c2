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
