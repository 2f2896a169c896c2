"""Racing: slices, stopping rule, exact cost, full-fidelity best, Optuna records, resume."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from blackbox.api import Evaluation, PointIntervention
from blackbox.evals.base import Objective, doc_range
from blackbox.search_spaces.box import BoxSpace
from blackbox.strategies.base import Box
from blackbox.strategies.random_search import RandomSearch
from blackbox.study.racing import Racing, race
from blackbox.study.runner import Budget, Runner
from blackbox.study.storage import open_study

D = 64


class Documents(Objective):
    """Accuracy over ``D`` documents: document ``d`` is right when ``u_d < p(x)``, with
    ``p(x) = x_0`` and ``u`` fixed uniforms, so a candidate's per-document outcomes are paired
    with every other's (a better ``p`` is right on a superset of documents)."""

    per_document = True
    metric = "acc"

    def __init__(self, n_docs: int = D) -> None:
        super().__init__()
        self.u = np.random.default_rng(0).random(n_docs)
        self._splits = {"search": None, "heldout": None}
        self.scored_docs = 0

    def n_examples(self, split: str = "search") -> int:
        return self.u.size

    def _score(self, iv: PointIntervention, split: str, limit) -> Evaluation:  # type: ignore[override]
        a, b = doc_range(limit, self.u.size)
        p = np.asarray(iv.points, dtype=float).reshape(len(iv), -1)[:, 0]
        per = [(self.u[a:b] < q).astype(float) for q in p]
        self.scored_docs += len(iv) * (b - a)
        return Evaluation(
            np.array([d.mean() for d in per]),
            [{"acc": float(d.mean())} for d in per],
            cost=float(len(iv) * (b - a)),
            per_doc=per,
        )


def _score_with(obj: Documents, ps: list[float]):
    return lambda idx, docs: obj.evaluate(
        PointIntervention(np.array([[ps[i]] for i in idx]), [(ps[i],) for i in idx]), "search", docs
    )


def test_a_clearly_worse_candidate_stops_early_and_survivors_are_exact() -> None:
    obj = Documents()
    ps = [0.9, 0.2, 0.85, 0.1]
    raced = race(_score_with(obj, ps), 4, D, Racing((16, 32), 0.95), reference=None)
    whole = obj.evaluate(PointIntervention(np.array([[p] for p in ps]), [(p, 1) for p in ps]))
    assert raced.seen[0] == D and raced.seen[2] == D  # the leader and a close second
    assert raced.seen[1] < D and raced.seen[3] < D  # far worse: stopped at a look
    for i in (0, 2):
        assert raced.evaluation.values[i] == whole.values[i]
        np.testing.assert_array_equal(raced.evaluation.per_doc[i], whole.per_doc[i])
    assert raced.evaluation.cost == sum(raced.seen)  # exactly the documents scored
    stopped = raced.evaluation.per_doc[1]
    assert stopped.shape == (raced.seen[1],) and raced.evaluation.values[1] == stopped.mean()


def test_against_an_incumbent_everything_worse_stops_and_the_level_is_split() -> None:
    obj = Documents()
    ref = (obj.u < 0.8).astype(float)
    raced = race(_score_with(obj, [0.3, 0.35]), 2, D, Racing((16, 32), 0.95), reference=ref)
    assert all(k in (16, 32) for k in raced.seen) and raced.evaluation.cost == sum(raced.seen)
    assert Racing((16, 32, 128), 0.9).stops(D) == [16, 32, D]
    assert Racing((16, 32), 0.9).alpha(D) == pytest.approx(0.05)
    same = race(_score_with(obj, [0.8, 0.8]), 2, D, Racing((8,), 0.95), reference=ref)
    assert same.seen == [D, D]  # equal to the reference: never stopped


def test_a_race_on_a_budget_shortens_its_last_slice_and_cuts_the_candidates_alive() -> None:
    """120 candidate-documents for 4 level candidates: 16 each (64), then the 32-slice cannot
    be paid for all four, so it ends at 30 (14 more each: 120 in all) and they are cut there."""
    obj = Documents()
    ps = [0.8, 0.78, 0.79, 0.81]
    raced = race(_score_with(obj, ps), 4, D, Racing((16, 32), 0.95), budget=120)
    assert raced.seen == [30, 30, 30, 30] and raced.evaluation.cost == 120 == obj.scored_docs
    assert all(raced.stopped(i) and raced.by(i) == "budget" for i in range(4))
    for i, p in enumerate(ps):
        np.testing.assert_array_equal(raced.evaluation.per_doc[i], (obj.u[:30] < p).astype(float))
    # a stopped candidate is stopped by the test, not the budget; enough budget cuts nothing
    free = race(_score_with(Documents(), [0.9, 0.1]), 2, D, Racing((16, 32), 0.95), budget=10**6)
    assert free.seen[0] == D and free.seen[1] < D and free.by(1) == "test"
    assert not any(free.cut)


def _runner(url: str, obj: Documents, racing: Racing | None, cost: float) -> Runner:
    box = Box(np.array([0.0, 0.0]), np.array([1.0, 1.0]), np.array([False, False]), ("p", "q"))
    space = BoxSpace(box, baseline_point=[0.5, 0.5])
    return Runner(
        space,
        obj,
        RandomSearch(box, seed=0, population=8),
        open_study(url, "race", box, "fp"),
        Budget(cost=cost),
        progress=False,
        racing=racing,
    )


def test_a_raced_run_records_pruned_trials_spends_exactly_and_resumes(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    obj = Documents()
    summary = _runner(url, obj, Racing((16, 32), 0.95), cost=4000).run()
    trials = optuna.load_study(study_name="race", storage=url).get_trials()
    search = [t for t in trials if t.user_attrs["kind"] == "search"]
    pruned = [t for t in search if t.state == TrialState.PRUNED]
    full = [t for t in search if t.state == TrialState.COMPLETE]
    assert pruned and full
    for t in pruned:
        k, by = t.user_attrs["raced"]["documents"], t.user_attrs["raced"]["by"]
        assert k in (16, 32) if by == "test" else by == "budget" and 0 < k < D
        assert t.intermediate_values == {k: t.user_attrs["raced"]["estimate"]}
        assert len(t.user_attrs["per_doc"]) == k and t.user_attrs["cost"] == k
    assert all(len(t.user_attrs["per_doc"]) == D and t.user_attrs["cost"] == D for t in full)
    assert summary.best.full and summary.best.value == max(t.value for t in full)
    assert summary.search_cost == sum(t.user_attrs["cost"] for t in search) <= 4000
    assert obj.scored_docs == summary.cost  # cost counts exactly what was run
    # more candidates than the same budget buys without racing
    plain_obj = Documents()
    plain = _runner(f"sqlite:///{tmp_path / 'p.db'}", plain_obj, None, cost=4000).run()
    assert summary.evaluations > plain.evaluations
    # resume: the same run replays everything, scores nothing, finds the same best
    again_obj = Documents()
    again = _runner(url, again_obj, Racing((16, 32), 0.95), cost=4000).run()
    assert again_obj.scored_docs == 0 and again.best.value == summary.best.value
    assert (
        again.search_cost == summary.search_cost
        and again.best.x.tolist() == summary.best.x.tolist()
    )


@pytest.mark.parametrize("cost", [1000, 1337, 4000])
def test_a_raced_run_spends_its_cost_budget_up_to_less_than_one_slice(tmp_path, cost) -> None:
    """The last generation races on what is left (a cut generation is told, so the strategy
    does not repeat it): what is left unspent cannot pay one more first slice (16) or one more
    document for each of a generation's 8 candidates."""
    obj = Documents()
    s = _runner(f"sqlite:///{tmp_path / 's.db'}", obj, Racing((16, 32), 0.95), cost).run()
    assert cost - 16 < s.search_cost <= cost and s.cost == obj.scored_docs and not s.stalled
    trials = optuna.load_study(study_name="race", storage=f"sqlite:///{tmp_path / 's.db'}")
    cut = [t for t in trials.get_trials() if t.user_attrs.get("raced", {}).get("by") == "budget"]
    assert all(t.state == TrialState.PRUNED and t.user_attrs["cost"] < D for t in cut)


def test_a_cost_budget_that_only_repeats_stops_instead_of_looping(tmp_path) -> None:
    """Two possible candidates and a cost budget far above what they cost: once both are
    scored every generation is a free repeat, and the run stops (it used to loop forever)."""
    from blackbox.study.runner import STALL_GENERATIONS

    box = Box(np.array([0.0]), np.array([1.0]), np.array([True]), ("p",))
    obj = Documents()
    runner = Runner(
        BoxSpace(box),
        obj,
        RandomSearch(box, seed=0, population=4),
        open_study(f"sqlite:///{tmp_path / 's.db'}", "stall", box, "fp"),
        Budget(cost=10**6),
        progress=False,
        racing=Racing((16,), 0.95),
    )
    s = runner.run()
    assert s.stalled and s.cost == obj.scored_docs and s.search_cost <= 2 * D
    assert s.evaluations >= 4 * STALL_GENERATIONS


def test_a_schedule_with_no_look_below_the_split_says_so_in_the_result(
    tiny_model_dir, tmp_path
) -> None:
    """Looks at or above the split's size would silently race nothing: a warning that is also
    kept in result.json's ``warnings``."""
    import torch

    from blackbox.config import validate
    from blackbox.study.pipeline import prepare

    torch.save(torch.ones(4, 64), tmp_path / "v.pt")

    def study(schedule: list[int]) -> dict:
        return {
            "name": "looks",
            "model": {"name": str(tiny_model_dir), "device": "cpu"},
            "task": {"name": "bb_rotten_tomatoes", "search_size": 8, "heldout_size": 2},
            "space": {"layers": [0, 3], "vectors": [{"name": "v", "file": str(tmp_path / "v.pt")}]},
            "strategy": {"name": "random", "population": 2},
            "budget": {"evaluations": 2},
            "scoring": {"racing": {"schedule": schedule}},
        }

    far = prepare(validate(study([8, 16])), progress=False)
    assert far.context.warnings == [
        "scoring.racing.schedule [8, 16] has no look below the 8 search documents, so every "
        "candidate is scored on all of them (racing stops nothing)"
    ]
    near = prepare(validate(study([4, 16])), progress=False, loaded=far.loaded)
    assert near.context.warnings == []
