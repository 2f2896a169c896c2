"""`blackbox tune` on a closed-form objective: pruning, known optimum, tuned config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from blackbox.config import ConfigError, StudyConfig
from blackbox.evals.synthetic import FunctionObjective, neg_sphere
from blackbox.experiments.tune import ParamRange, TuneSettings, load_tune, tune_runs, tuned_config
from blackbox.search_spaces.box import BoxSpace
from blackbox.strategies import make_strategy
from blackbox.strategies.base import Box, Strategy
from blackbox.study.runner import Budget

BOX = Box(np.full(2, -3.0), np.full(2, 3.0), np.zeros(2, dtype=bool), ("a", "b"))
OPTIMUM = 1.2


class Centred(Strategy):
    """Samples around a setting: the best setting is known (``center`` = the optimum)."""

    name = "centred"

    def __init__(
        self,
        box: Box,
        seed: int = 0,
        population: int = 4,
        center: float = 0.0,
        spread: float = 0.05,
    ) -> None:
        super().__init__(box, seed=seed, population=population)
        self.center, self.spread = center, spread

    def _ask(self, n: int) -> np.ndarray:
        return self.center + self.spread * self.rng.normal(size=(n, self.box.dim))

    def _tell(self, x: np.ndarray, values: np.ndarray) -> None:
        pass


def _make(name: str, box: Box, seed: int = 0, population: int = 4, **settings: Any) -> Strategy:
    return (
        Centred(box, seed, population, **settings)
        if name == "centred"
        else make_strategy(name, box, seed=seed, population=population, **settings)
    )


def test_pruner_stops_bad_trials_and_the_tuned_setting_is_near_the_optimum() -> None:
    settings = TuneSettings(
        trials=24,
        sampler="tpe",
        pruner="median",
        pruner_settings={"n_startup_trials": 4},
        checkpoints=4,
        record_inner=False,
        params={"center": ParamRange(low=-3.0, high=3.0)},
    )
    objective = FunctionObjective(neg_sphere([OPTIMUM, OPTIMUM]))
    study = tune_runs(
        BoxSpace(BOX),
        objective,
        "centred",
        4,
        {"spread": 0.05},
        0,
        Budget(cost=32),
        settings,
        optuna.storages.InMemoryStorage(),
        "t",
        make=_make,
    )
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) >= 1
    assert len(study.trials) == 24
    assert study.best_params["center"] == pytest.approx(OPTIMUM, abs=0.25)
    best = study.best_trial
    assert sorted(best.intermediate_values) == [1, 2, 3, 4]  # checkpoints of the budget
    values = [best.intermediate_values[k] for k in (1, 2, 3, 4)]
    assert np.all(np.diff(values) >= 0)  # best-so-far


def test_hyperband_and_resume_to_the_requested_trials(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    settings = TuneSettings(
        trials=3,
        pruner="hyperband",
        checkpoints=3,
        params={
            "w": ParamRange(low=0.3, high=0.9),
            "population": ParamRange(low=3, high=6, int=True),
        },
    )
    space = BoxSpace(BOX)
    obj = FunctionObjective(neg_sphere([0.5, -0.5]))
    tune_runs(space, obj, "pso", 4, {}, 0, Budget(evaluations=8), settings, url, "p")
    calls = obj.calls
    more = settings.model_copy(update={"trials": 4})
    study = tune_runs(space, obj, "pso", 4, {}, 0, Budget(evaluations=8), more, url, "p")
    assert len(study.trials) == 4 and obj.calls - calls <= 8
    # inner runs are recorded as their own studies
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert {"p", "p/trial0", "p/trial3"} <= names


def test_tuned_config_is_a_ready_study_config() -> None:
    root = Path(__file__).parents[2]
    cfg = load_tune(root / "studies/tune_pso_steer_rotten_tomatoes.yaml")
    tuned = tuned_config(cfg.study, {"c1": 1.1, "w": 0.5, "population": 6, "topology": "local"})
    again = StudyConfig.model_validate(yaml.safe_load(yaml.safe_dump(tuned.resolved())))
    assert again.strategy.population == 6 and again.strategy.settings["c1"] == 1.1
    assert again.strategy.settings["topology"] == "local" and again.name.endswith("_tuned")


def test_tune_config_errors_are_one_line(tmp_path) -> None:
    root = Path(__file__).parents[2]
    data = yaml.safe_load((root / "studies/tune_pso_steer_rotten_tomatoes.yaml").read_text())
    data["tune"]["params"]["c9"] = {"low": 0, "high": 1}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tune.params.c9: not a setting of 'pso'"):
        load_tune(path)
    data["tune"]["params"]["c9"] = {"low": 2, "high": 1}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"tune.params.c9: give low <= high"):
        load_tune(path)


@pytest.mark.slow
def test_tune_cli_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir) -> None:
    import torch

    from blackbox.cli import main

    torch.save(torch.ones(4, 64), tmp_path / "v.pt")
    cfg = {
        "study": {
            "name": "tiny",
            "model": {"name": str(tiny_model_dir), "device": "cpu"},
            "task": {"name": "bb_rotten_tomatoes", "search_size": 2, "heldout_size": 2},
            "space": {"layers": [0, 3], "vectors": [{"name": "v", "file": str(tmp_path / "v.pt")}]},
            "strategy": {"name": "pso", "population": 2},
            "budget": {"cost": 12},
        },
        "tune": {
            "trials": 3,
            "checkpoints": 2,
            "params": {
                "w": {"low": 0.3, "high": 0.9},
                "population": {"low": 2, "high": 3, "int": True},
            },
        },
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["tune", str(path), "--out", str(out), "--no-progress"]) == 0
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    assert tuned["name"] == "tiny_tuned" and "w" in tuned["strategy"]["settings"]
    assert "| trial |" in (out / "tune.md").read_text()
