"""`blackbox compare` on closed-form objectives: one budget, one storage, resume, extend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from blackbox.config import ConfigError
from blackbox.evals.synthetic import FunctionObjective, neg_sphere
from blackbox.experiments.compare import (
    reset_objective,
    run_fingerprint,
    run_matrix,
    run_specs,
    stop_at_cost,
)
from blackbox.experiments.compare_config import RunStrategy, load_compare
from blackbox.search_spaces.box import BoxSpace
from blackbox.strategies.base import Box
from blackbox.study.runner import Budget, Progress

BOX = Box(np.array([0.0, -2.0]), np.array([9.0, 2.0]), np.array([True, False]), ("layer", "a"))
FN = neg_sphere([4.0, 0.5])
STRATEGIES = [RunStrategy(name="pso", population=4), RunStrategy(name="random", population=4)]


class Counting(FunctionObjective):
    """Counts candidates scored per split; may interrupt after some calls."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__(FN)
        self.stop_after = stop_after
        self._cache[("search", None, "stale")] = (0.0, {}, None)

    def _score(self, iv, split, limit):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        return super()._score(iv, split, limit)


def _matrix(storage, seeds, objective, cost=20.0):
    return run_matrix(
        BoxSpace(BOX, baseline_point=[0, 0.0]),
        objective,
        run_specs(STRATEGIES, seeds),
        Budget(evaluations=100, cost=cost),
        storage,
        "cmp",
        "fp",
        log=lambda _: None,
    )


def _search(storage, name):
    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials() if t.user_attrs["kind"] == "search"], study


def test_one_budget_in_cost_one_study_per_run_tagged() -> None:
    storage = optuna.storages.InMemoryStorage()
    obj = Counting()
    status = _matrix(storage, [0], obj)
    assert status == {"cmp/pso/seed0": "done", "cmp/random/seed0": "done"}
    assert ("search", None, "stale") not in obj._cache  # every run starts afresh
    for label in ("pso", "random"):
        trials, study = _search(storage, f"cmp/{label}/seed0")
        spent = sum(t.user_attrs["cost"] for t in trials)
        assert 20 <= spent < 20 + 4  # stops after the generation that reaches the budget
        assert study.user_attrs["label"] == label and study.user_attrs["seed"] == 0
        assert study.user_attrs["strategy"] == label


def test_resume_and_extend_with_seeds_without_rerunning_finished() -> None:
    storage = optuna.storages.InMemoryStorage()
    _matrix(storage, [0], Counting())
    before = {n: len(_search(storage, n)[0]) for n in ("cmp/pso/seed0", "cmp/random/seed0")}
    more = Counting()
    status = _matrix(storage, [0, 1], more)
    assert status["cmp/pso/seed0"] == status["cmp/random/seed0"] == "skipped"
    assert status["cmp/pso/seed1"] == status["cmp/random/seed1"] == "done"
    # only the new runs were scored: 20 search + held-out best each, and the shared baseline
    # (search and held-out) once: the repeat cache keeps it across runs
    assert more.calls == 2 * (20 + 1) + 2
    assert {n: len(_search(storage, n)[0]) for n in before} == before


def test_an_interrupted_run_resumes_by_replay() -> None:
    ref = optuna.storages.InMemoryStorage()
    _matrix(ref, [0], Counting())
    url = optuna.storages.InMemoryStorage()
    with pytest.raises(KeyboardInterrupt):
        _matrix(url, [0], Counting(stop_after=1 + 8))  # baseline + 2 generations of pso
    again = Counting()
    _matrix(url, [0], again)
    # pso: its baseline and 8 searches are read back, 12 searches and 2 held-out scored;
    # random: its baseline on search (read back, never scored, so not cached in this process),
    # 20 searches and its held-out best (the held-out baseline is cached)
    assert again.calls == (12 + 2) + (1 + 20 + 1)
    for name in ("cmp/pso/seed0", "cmp/random/seed0"):
        got = [t.value for t in _search(url, name)[0]]
        want = [t.value for t in _search(ref, name)[0]]
        np.testing.assert_allclose(got, want)


def test_reset_keeps_only_the_shared_baseline() -> None:
    obj = Counting()
    obj._cache = {
        ("search", None, (0, 0.0)): 1,
        ("heldout", None, (0, 0.0)): 2,
        ("search", None, (1, 0.5)): 3,
    }
    obj.cache_hits = 4
    reset_objective(obj, keep=[(0, 0.0)])
    assert obj._cache == {("search", None, (0, 0.0)): 1, ("heldout", None, (0, 0.0)): 2}
    assert obj.cache_hits == 0


def test_stop_at_cost_zeroes_the_seconds_budget() -> None:
    b = Budget(evaluations=10, cost=5.0)
    stop = stop_at_cost(b)
    stop(Progress(1, 4, 4.0, 0.1, 0.0))
    assert b.seconds is None
    stop(Progress(2, 8, 8.0, 0.1, 0.0))
    assert b.seconds == 0.0


def test_run_fingerprint_changes_with_strategy_and_seed() -> None:
    a, b = run_specs(STRATEGIES, [0, 1])[:2], run_specs(STRATEGIES, [1])
    assert len({run_fingerprint("fp", s) for s in [*a, *b]}) == 4


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {
    "study": {
        "name": "c",
        "task": {"name": "bb_rotten_tomatoes"},
        "space": {"layers": [1, 2], "vectors": [{"name": "v", "file": "v.pt"}]},
    },
    "strategies": [{"name": "pso"}, {"name": "random"}],
    "budget": {"cost": 100},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"study": {**BASE["study"], "strategy": {"name": "pso"}}}, "study.strategy: not used"),
        ({"strategies": [{"name": "pso"}, {"name": "pso"}]}, "labels must be unique"),
        ({"strategies": [{"name": "nope"}]}, "strategies.nope: strategy.name: unknown name"),
        (
            {"strategies": [{"name": "adam"}]},
            "strategies.adam: strategy.name: 'adam' cannot search a steering space",
        ),
        ({"strategies": [{"name": "pso", "space": "x"}]}, "space 'x' is not a key of spaces"),
        ({"strategies": [{"name": "pso", "settings": {"c9": 1}}]}, "unknown setting"),
        ({"seed": 3}, "unknown key 'seed'; allowed here: study, spaces, tasks, strategies"),
        ({"budget": {}}, "budget: set evaluations, seconds or cost"),
        ({"tasks": ["../up"]}, "tasks: '../up': each task names its report's directory"),
        ({"seeds": [0, -1]}, "seeds.1: Input should be greater than or equal to 0"),
        ({"storage": "postgresql://u:p@w@h/db"}, "percent-encode it as %40"),
        (
            {"strategies": [{"name": "pso", "settings": {"w": "heavy"}}]},
            "strategy.settings.w: 'heavy' is not valid for 'pso'",
        ),
    ],
)
def test_config_errors_are_one_line(tmp_path, change, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_compare(_write(tmp_path, {**BASE, **change}))
    assert "\n" not in str(info.value)


def test_the_shipped_compare_config_validates() -> None:
    cfg = load_compare(Path(__file__).parents[2] / "studies/compare_steer_rotten_tomatoes.yaml")
    assert [s.key for s in cfg.strategies] == ["pso", "cma-es", "tpe", "random"]
    assert cfg.budget.cost and cfg.seeds == [0, 1, 2]


@pytest.mark.slow
def test_compare_cli_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir) -> None:
    import torch

    from blackbox.cli import main

    torch.save(torch.ones(4, 64), tmp_path / "v.pt")
    cfg = {
        "study": {
            "name": "tiny",
            "model": {"name": str(tiny_model_dir), "device": "cpu"},
            "task": {"name": "bb_rotten_tomatoes", "search_size": 2, "heldout_size": 2},
            "space": {"layers": [0, 3], "vectors": [{"name": "v", "file": str(tmp_path / "v.pt")}]},
        },
        "strategies": [{"name": "random", "population": 2}, {"name": "pso", "population": 2}],
        "seeds": [0],
        "budget": {"cost": 16, "evaluations": 20},
    }
    path = _write(tmp_path, cfg)
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--no-progress"]) == 0
    assert (
        main(["compare", str(path), "--out", str(out), "--no-progress", "--set=seeds=[0,1]"]) == 0
    )
    url = f"sqlite:///{out / 'compare.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    runs = [f"tiny/{s}/seed{k}" for s in ("pso", "random") for k in (0, 1)]
    assert names == sorted(runs + [f"{r}:eval" for r in runs])  # held-out records beside each
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| random | 2 |" in text and (out / "landscape.png").exists()


def test_the_shipped_soft_prompt_compare_config_validates() -> None:
    cfg = load_compare(Path(__file__).parents[2] / "studies/compare_soft_rotten_tomatoes.yaml")
    assert [s.key for s in cfg.strategies] == ["adam", "cma-nevergrad", "cma-optuna", "random"]
    assert cfg.study.space.type == "soft_prompt" and cfg.study.space.subspace_dim == 64


def test_the_shipped_intervention_compare_config_validates() -> None:
    cfg = load_compare(Path(__file__).parents[2] / "studies/compare_interventions.yaml")
    assert cfg.tasks == ["bb_rotten_tomatoes", "arc_easy"]
    spaces = {s.key: s.space or "study" for s in cfg.strategies}
    assert set(spaces.values()) == {"study", "tokens", "soft_full", "soft_sub"}
    assert (
        cfg.spaces["soft_sub"].subspace_dim == 64 and cfg.spaces["soft_full"].subspace_dim is None
    )


@pytest.mark.slow
def test_compare_across_interventions_and_tasks_on_a_tiny_model(tmp_path, tiny_model_dir) -> None:
    """Steering, a token prompt and a soft prompt (random search and Adam) on two lm-eval tasks,
    one budget: one study per task x entry x seed, every budget held, one report per task and
    an index."""
    import torch

    from blackbox.cli import main

    torch.save(torch.ones(4, 64), tmp_path / "v.pt")
    soft = {"type": "soft_prompt", "n_tokens": 2, "placement": "after_input", "init": "random"}
    cfg = {
        "study": {
            "name": "tiny",
            "model": {"name": str(tiny_model_dir), "device": "cpu"},
            "task": {"name": "bb_rotten_tomatoes", "search_size": 2, "heldout_size": 2},
            "space": {"layers": [0, 3], "vectors": [{"name": "v", "file": str(tmp_path / "v.pt")}]},
        },
        "spaces": {
            "tok": {"type": "tokens", "n_tokens": 2, "placement": "after_input"},
            "soft_sub": {**soft, "subspace_dim": 4, "projection": {"enabled": False}},
            "soft_full": {**soft, "projection": {"enabled": False}},
        },
        "tasks": ["bb_rotten_tomatoes", "arc_easy"],
        "strategies": [
            {"label": "steer", "name": "random", "population": 2},
            {"label": "tokens", "space": "tok", "name": "random", "population": 2},
            {"label": "soft", "space": "soft_sub", "name": "random", "population": 2},
            {"label": "adam", "space": "soft_full", "name": "adam", "settings": {"minibatch": 0}},
        ],
        "seeds": [0],
        "budget": {"cost": 12},
    }
    path = _write(tmp_path, cfg)
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--no-progress"]) == 0
    url = f"sqlite:///{out / 'compare.db'}"
    summaries = {
        s.study_name: s
        for s in optuna.get_all_study_summaries(url)
        if s.user_attrs.get("kind") != "eval"
    }
    tasks, labels = cfg["tasks"], ["adam", "soft", "steer", "tokens"]
    assert sorted(summaries) == sorted(f"tiny/{t}/{k}/seed0" for t in tasks for k in labels)
    for name in summaries:
        trials, _ = _search(url, name)
        spent = sum(float(t.user_attrs.get("cost") or 0) for t in trials)
        assert 0 < spent <= 12 + 1e-9, (name, spent)  # one budget, held by every intervention
    attrs = {n.split("/")[2]: summaries[n].user_attrs for n in summaries}
    assert {k: a["space"] for k, a in attrs.items()} == {
        "steer": None,
        "tokens": "tok",
        "soft": "soft_sub",
        "adam": "soft_full",
    }
    assert len({a["space_signature"] for a in attrs.values()}) == 4  # four distinct boxes
    index = (out / "report.md").read_text()
    for task in tasks:
        text = (out / task / "report.md").read_text()
        assert all(f"| {k} | 1 |" in text for k in labels), text
        assert f"({task}/report.md)" in index
