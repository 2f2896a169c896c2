"""The study loop on a closed-form objective: records, resume by replay, failures."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from blackbox.evals.synthetic import FunctionObjective, neg_sphere
from blackbox.search_spaces.box import BoxSpace
from blackbox.strategies.base import Box
from blackbox.strategies.pso import PSO
from blackbox.study.runner import Budget, Runner
from blackbox.study.storage import open_study, records

BOX = Box(
    np.array([0.0, -2.0, -2.0]),
    np.array([9.0, 2.0, 2.0]),
    np.array([True, False, False]),
    ("layer", "a", "b"),
)
FN = neg_sphere([4.0, 0.5, -0.5])


def _runner(storage: str, objective: FunctionObjective, evaluations: int = 24) -> Runner:
    space = BoxSpace(BOX, baseline_point=[0.0, 0.0, 0.0])
    study = open_study(storage, "t", BOX, "fp")
    strategy = PSO(BOX, seed=3, population=6)
    return Runner(
        space, objective, strategy, study, Budget(evaluations=evaluations), progress=False
    )


def test_every_evaluation_is_a_trial(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    summary = _runner(url, FunctionObjective(FN)).run()
    study = optuna.load_study(study_name="t", storage=url)
    trials = study.get_trials()
    # the study people open holds search trials only: its best is never a held-out score
    assert [t.user_attrs["kind"] for t in trials] == ["search"] * 24
    assert study.best_trial.user_attrs["kind"] == "search"
    assert study.user_attrs["eval_study"] == "t:eval"
    evals = optuna.load_study(study_name="t:eval", storage=url)
    kinds = [t.user_attrs["kind"] for t in evals.get_trials()]
    assert kinds == ["baseline", "heldout", "heldout"]
    assert evals.user_attrs == {"kind": "eval", "search_study": "t"}
    assert [t.user_attrs["kind"] for t in records(study)] == ["search"] * 24 + kinds
    assert summary.evaluations == 24
    search = [t for t in trials if t.user_attrs["kind"] == "search"]
    assert max(t.value for t in search) == pytest.approx(summary.best.value)
    assert summary.best.value >= summary.baseline.value
    # integer dimension stored as an int parameter
    assert all(float(t.params["layer"]).is_integer() for t in search)
    assert np.all(np.diff(summary.history) >= 0)


class _Interrupting(FunctionObjective):
    def __init__(self, fn, stop_after_calls: int) -> None:
        super().__init__(fn)
        self.stop_after = stop_after_calls

    def evaluate(self, candidates, split="search", limit=None):
        if self.calls >= self.stop_after:
            raise KeyboardInterrupt
        return super().evaluate(candidates, split, limit)


def test_resume_replays_without_reevaluating(tmp_path) -> None:
    ref_url = f"sqlite:///{tmp_path / 'ref.db'}"
    ref = _runner(ref_url, FunctionObjective(FN)).run()

    url = f"sqlite:///{tmp_path / 'r.db'}"
    with pytest.raises(KeyboardInterrupt):
        _runner(url, _Interrupting(FN, stop_after_calls=13)).run()  # baseline + 2 batches of 6
    done = len(records(optuna.load_study(study_name="t", storage=url)))
    assert done == 13  # the baseline (in t:eval) and 12 search trials
    second = FunctionObjective(FN)
    resumed = _runner(url, second).run()
    # Only the evaluations not yet stored are computed again.
    assert second.calls == 1 + 24 + 2 - 13
    assert resumed.resumed == 13
    assert resumed.best.value == pytest.approx(ref.best.value)
    np.testing.assert_allclose(resumed.history, ref.history)


def test_extending_the_budget_continues(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    first = _runner(url, FunctionObjective(FN), evaluations=12).run()
    more = FunctionObjective(FN)
    s = _runner(url, more, evaluations=24).run()
    assert s.evaluations == 24
    new_best = not np.allclose(first.best.x, s.best.x)
    # 12 new search evaluations, plus a held-out score only if the best changed (the
    # held-out baseline is read back from storage).
    assert more.calls == 12 + int(new_best)


def test_nan_scores_are_failed_trials_and_run_goes_on(tmp_path) -> None:
    def sometimes_nan(x: np.ndarray) -> np.ndarray:
        v = FN(x)
        v[x[:, 1] > 1.0] = np.nan
        return v

    url = f"sqlite:///{tmp_path / 'n.db'}"
    s = _runner(url, FunctionObjective(sometimes_nan), evaluations=30).run()
    trials = optuna.load_study(study_name="t", storage=url).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the box makes some x[1] > 1 likely; expected failed trials"
    assert s.evaluations == 30 and np.isfinite(s.best.value)


def test_cost_budget_stops_and_replayed_cost_counts(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    space = BoxSpace(BOX)
    study = open_study(url, "t", BOX, "fp")
    run = Runner(
        space,
        FunctionObjective(FN),
        PSO(BOX, seed=3, population=6),
        study,
        Budget(cost=20),
        progress=False,
    )
    s = run.run()
    assert s.evaluations == 20  # 3 generations of 6 (cost 1 each), then 2 of the 4th
    assert s.search_cost == 20
    again = Runner(
        space,
        FunctionObjective(FN),
        PSO(BOX, seed=3, population=6),
        open_study(url, "t", BOX, "fp"),
        Budget(cost=20),
        progress=False,
    ).run()
    assert again.search_cost == 20 and again.resumed == again.evaluations + 1


@pytest.mark.parametrize("name", ["pso", "nevergrad", "optuna", "random"])
def test_no_strategy_spends_more_than_its_cost_budget(name, tmp_path) -> None:
    from blackbox.strategies import make_strategy

    url = f"sqlite:///{tmp_path / 'b.db'}"
    strategy = make_strategy(name, BOX, seed=0, population=8)
    s = Runner(
        BoxSpace(BOX),
        FunctionObjective(FN),
        strategy,
        open_study(url, "t", BOX, "fp"),
        Budget(cost=37),
        progress=False,
    ).run()
    # 4 batches of 8 and 5 of the 5th (repeats served from the cache are free: maybe more)
    assert s.search_cost == 37 and s.evaluations >= 37


@pytest.mark.parametrize("name", ["epo", "token_ga", "gcg"])
def test_gradient_strategies_stop_before_paying_for_nothing(name, tmp_path, tiny_llama, tokenizer):
    """A strategy's gradient pass is paid before its candidates: the runner asks only when the
    budget still pays for the gradients and at least one candidate."""
    from blackbox.evals.activation import NeuronObjective
    from blackbox.evals.documents import layout
    from blackbox.search_spaces.tokens.space import TokenSpace
    from blackbox.strategies import make_strategy

    space = TokenSpace(tokenizer, n_tokens=3)
    items = layout(tokenizer, ["Hi", "Why?"], chat=True)[0]
    obj = NeuronObjective(tiny_llama, {"search": items}, 2, 5)
    obj.enable_fluency()
    settings = {"token_ga": {"mutation": {"gradient_topk": 1.0}}}.get(name, {})
    strategy = make_strategy(name, space.box, seed=0, population=2, **settings)
    box = space.box
    s = Runner(
        space,
        obj,
        strategy,
        open_study(f"sqlite:///{tmp_path / 'g.db'}", "t", box, "fp"),
        Budget(cost=61),
        progress=False,
        baselines={},
    ).run()
    assert 40 < s.search_cost <= 61, s.search_cost


def test_a_resumed_epo_run_reads_fluency_from_its_records(tmp_path, tiny_llama, tokenizer):
    """EPO's tell needs each candidate's cross-entropy: on replay it comes from the records, so
    the resumed run makes the same asks, spends the same budget and evaluates nothing."""
    from blackbox.evals.activation import NeuronObjective
    from blackbox.evals.documents import layout
    from blackbox.search_spaces.tokens.space import TokenSpace
    from blackbox.strategies import make_strategy

    space = TokenSpace(tokenizer, n_tokens=3)
    items = layout(tokenizer, ["Hi", "Why?"], chat=True)[0]
    url = f"sqlite:///{tmp_path / 'r.db'}"

    def run():
        obj = NeuronObjective(tiny_llama, {"search": items}, 2, 5)
        obj.enable_fluency()
        calls, evaluate = [], obj.evaluate
        obj.evaluate = lambda *a, **k: calls.append(1) or evaluate(*a, **k)
        strategy = make_strategy("epo", space.box, seed=0, population=2, children=4)
        summary = Runner(
            space,
            obj,
            strategy,
            open_study(url, "t", space.box, "fp"),
            Budget(cost=120),
            progress=False,
            baselines={},
        ).run()
        return summary, len(calls)

    first, _ = run()
    again, calls = run()
    assert again.evaluations == first.evaluations and again.search_cost == first.search_cost
    assert again.resumed == first.evaluations and again.best.value == first.best.value
    assert calls == 0  # neither candidates nor their fluency measured again (gradients aside)
