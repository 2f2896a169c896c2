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
