"""Conformance suite every objective inherits (as strategies inherit theirs).

Subclass :class:`ObjectiveConformance` in a ``Test*`` class of your tests and supply two
fixtures: ``problem`` (a :class:`~blackbox.api.Problem`: a space bound to the objective under
test) and ``candidates`` (a list of that space's candidates, at least three, not all equal):

    import numpy as np, pytest
    from blackbox.testing.objectives import ObjectiveConformance

    class TestMyObjective(ObjectiveConformance):
        component = "my_objective"  # its registry name (checked: the problem's objective)
        @pytest.fixture
        def problem(self, tiny_llama, tokenizer):
            return Problem(TokenSpace(tokenizer, n_tokens=3), MyObjective(tiny_llama, ...))
        @pytest.fixture
        def candidates(self, problem):
            return problem.space.sample(4, np.random.default_rng(0))

The suite checks what the runner and every strategy rely on:

- a batch scores exactly as its candidates one by one (batching is a speed-up, not a change);
- cost accounting: candidates x documents for new candidates, nothing for repeats;
- determinism: the same candidates give the same values after the repeat cache is emptied;
- ``limit`` scores a prefix of the documents and charges only for it;
- the value is one of the metrics, under the objective's metric name;
- per document (``per_document = True``, the default): ``Evaluation.per_doc[i]`` is ``(D,)``
  for a split of ``D`` documents, averages to ``values[i]``, and slices ``limit=(start, stop)``
  concatenate to the whole split.

``component`` (the registry name, or ``None`` for an objective that is not registered) is read
by ``tests/test_conformance_coverage.py``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from blackbox.api import Problem


class ObjectiveConformance:
    component: ClassVar[str | None] = None
    atol: float = 1e-4

    @pytest.fixture
    def problem(self) -> Problem:
        raise NotImplementedError("a conformance subclass must supply `problem`")

    @pytest.fixture
    def candidates(self) -> list:
        raise NotImplementedError("a conformance subclass must supply `candidates`")

    def test_builds_the_registered_component(self, problem) -> None:
        """The problem's objective is the class registered as ``component`` (when declared)."""
        if self.component is None:
            return
        from blackbox.evals.registry import OBJECTIVES

        obj = problem.objective
        assert type(obj) is OBJECTIVES.get(self.component), (type(obj), self.component)

    def test_a_batch_scores_as_its_candidates_one_by_one(self, problem, candidates) -> None:
        problem.objective.reset_cache()
        batch = problem.evaluate(candidates)
        problem.objective.reset_cache()
        single = [problem.evaluate([c]) for c in candidates]
        np.testing.assert_allclose(
            batch.values, [s.values[0] for s in single], atol=self.atol, rtol=1e-4
        )
        for b, s in zip(batch.metrics, single):
            assert set(b) == set(s.metrics[0])

    def test_cost_counts_documents_and_repeats_are_free(self, problem, candidates) -> None:
        problem.objective.reset_cache()
        docs = problem.n_examples("search")
        ev = problem.evaluate(candidates)
        valid = sum(not m.get("rejected") for m in ev.metrics)
        assert ev.cost == pytest.approx(valid * docs)
        again = problem.evaluate(candidates)
        assert again.cost == 0 and all(m["cache_hit"] for m in again.metrics if "rejected" not in m)
        np.testing.assert_array_equal(again.values, ev.values)

    def test_deterministic_and_the_value_is_its_metric(self, problem, candidates) -> None:
        problem.objective.reset_cache()
        a = problem.evaluate(candidates)
        problem.objective.reset_cache()
        b = problem.evaluate(candidates)
        np.testing.assert_allclose(a.values, b.values, atol=1e-6, rtol=0)
        metric = problem.objective.metric
        for v, m in zip(a.values, a.metrics):
            if np.isfinite(v):
                assert m[metric] == pytest.approx(v)
        assert np.isfinite(a.values).sum() >= 2 and np.unique(np.round(a.values, 6)).size >= 2

    def test_limit_scores_a_prefix(self, problem, candidates) -> None:
        problem.objective.reset_cache()
        first = next(c for c in candidates if getattr(c, "valid", True))
        ev = problem.evaluate([first], limit=1)
        assert ev.cost == pytest.approx(1.0) and np.isfinite(ev.values[0])

    # Objectives whose value is not a mean over documents (set False in the subclass).
    per_document: bool = True

    def test_per_document_values_average_to_the_value(self, problem, candidates) -> None:
        """Paired statistics and racing read ``per_doc``: one value per document of the split,
        in order, whose mean is the candidate's value (repeats from the cache too)."""
        assert problem.objective.per_document == self.per_document  # what racing is told
        problem.objective.reset_cache()
        ev = problem.evaluate(candidates)
        again = problem.evaluate(candidates)
        docs = problem.n_examples("search")
        if not self.per_document:
            assert ev.per_doc is None or all(d is None for d in ev.per_doc)
            return
        assert ev.per_doc is not None and again.per_doc is not None
        for v, d, d2, m in zip(ev.values, ev.per_doc, again.per_doc, ev.metrics):
            if m.get("rejected"):
                assert d is None
                continue
            assert d is not None and d.shape == (docs,)
            assert float(d.mean()) == pytest.approx(v, abs=self.atol)
            np.testing.assert_array_equal(d, d2)
        head = problem.evaluate([c for c in candidates if getattr(c, "valid", True)][:1], limit=1)
        assert head.per_doc[0].shape == (1,)

    def test_slices_of_documents_concatenate_to_the_whole_split(self, problem, candidates) -> None:
        """Racing scores documents ``[start, stop)`` a slice at a time: the slices' per-document
        values are the whole split's, and each slice costs its documents."""
        if not self.per_document:
            return
        problem.objective.reset_cache()
        cands = [c for c in candidates if getattr(c, "valid", True)][:2]
        whole = problem.evaluate(cands)
        docs = problem.n_examples("search")
        cut = max(1, docs // 2)
        parts = [problem.evaluate(cands, limit=(0, cut))]
        if cut < docs:
            parts.append(problem.evaluate(cands, limit=(cut, docs)))
        assert sum(p.cost for p in parts) == pytest.approx(len(cands) * docs)
        for i in range(len(cands)):
            joined = np.concatenate([p.per_doc[i] for p in parts])
            np.testing.assert_allclose(joined, whole.per_doc[i], atol=self.atol, rtol=1e-4)
