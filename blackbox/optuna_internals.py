"""The one module that names Optuna's private attributes.

Optuna has no public way to reach a study's storage, a study's or trial's storage id, or its
heartbeat helpers, and the distributed code (:mod:`blackbox.distributed`: heartbeats, failing a
stale trial, claiming a queued one) and a run's ``NAME:eval`` sibling study
(:func:`blackbox.study.storage.open_eval_study`) need them.  Everything private is reached
through here, so an Optuna release that moves one breaks this module only; pyproject pins the
Optuna range the test suite ran on, and ``tests/test_optuna_internals.py`` fails if any other
module names one of them.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

__all__ = ["BaseHeartbeat", "is_heartbeat_enabled", "storage_of", "study_id", "trial_id"]


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage ``study`` reads and writes (``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """``study``'s id in its storage (``Study._study_id``)."""
    return int(study._study_id)


def trial_id(trial: Any) -> int:
    """A :class:`~optuna.trial.Trial`'s or :class:`~optuna.trial.FrozenTrial`'s id in its
    storage (``_trial_id``; ``trial.number`` counts within the study only)."""
    return int(trial._trial_id)
