"""``benchmarks/bench_baselines.py``'s pure pieces: document samples, intervals, the group
aggregate, the equality test and the table (the runs themselves score the embedded model on
every standard task and are run on demand)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_baselines", ROOT / "benchmarks" / "bench_baselines.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_documents_are_a_seeded_sorted_sample_without_replacement(bench) -> None:
    docs = bench.sample_docs(1000, 50, seed=0)
    assert len(docs) == 50 == len(set(docs)) and docs == sorted(docs)
    assert all(isinstance(d, int) and 0 <= d < 1000 for d in docs)
    assert docs == bench.sample_docs(1000, 50, seed=0)  # reproducible
    assert docs != bench.sample_docs(1000, 50, seed=1)
    expected = sorted(np.random.default_rng(7).choice(1000, size=50, replace=False).tolist())
    assert bench.sample_docs(1000, 50, seed=7) == expected  # numpy's default_rng, as documented
    assert bench.sample_docs(56, 500, seed=3) == list(range(56))  # the whole (small) split
    assert bench.sample_docs(56, 56, seed=3) == list(range(56))
    assert bench.sample_docs(0, 5, seed=0) == []
    with pytest.raises(ValueError, match="must be >= 0"):
        bench.sample_docs(10, -1, seed=0)


def test_wilson_interval_matches_known_values(bench) -> None:
    lo, hi = bench.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = bench.wilson_interval(0, 10)  # never the degenerate [0, 0] of the normal interval
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    lo, hi = bench.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(1 - 3.8415 / 13.8415, abs=1e-4)
    lo, hi = bench.wilson_interval(15, 20)
    assert (round(lo, 3), round(hi, 3)) == (0.531, 0.888)
    small, large = bench.wilson_interval(30, 100), bench.wilson_interval(300, 1000)
    assert small[0] < 0.3 < small[1] and large[0] < 0.3 < large[1]
    assert large[1] - large[0] < small[1] - small[0]  # more documents, narrower
    assert all(math.isnan(x) for x in bench.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="11 successes out of 10"):
        bench.wilson_interval(11, 10)


def test_bootstrap_interval_is_seeded_and_survives_degenerate_resamples(bench) -> None:
    rng = np.random.default_rng(0)
    items = list(rng.normal(0.5, 0.1, size=200))
    lo, hi = bench.bootstrap_interval(items, lambda xs: float(np.mean(xs)), iters=500, seed=1)
    assert lo < np.mean(items) < hi and hi - lo < 0.05
    assert (lo, hi) == bench.bootstrap_interval(
        items, lambda xs: float(np.mean(xs)), iters=500, seed=1
    )
    assert bench.bootstrap_interval([2.0] * 5, lambda xs: float(np.mean(xs))) == (2.0, 2.0)

    def fails_on_one_class(pairs: list[tuple[int, int]]) -> float:
        if len({g for g, _ in pairs}) < 2:
            raise ValueError("one class")
        return float(np.mean([g == p for g, p in pairs]))

    pairs = [(0, 0), (1, 1), (1, 0)]  # some resamples hold one class: skipped, not fatal
    lo, hi = bench.bootstrap_interval(pairs, fails_on_one_class, iters=200, seed=0)
    assert 0.0 <= lo <= hi <= 1.0
    assert all(math.isnan(x) for x in bench.bootstrap_interval([], fails_on_one_class))


def test_interval_is_wilson_for_right_or_wrong_documents_else_a_bootstrap(bench) -> None:
    acc = [1.0, 0.0, 1, 1, 0, 1, 1, 0, 1, 1]
    assert bench.is_binary(acc) and not bench.is_binary([0.5, 1.0]) and not bench.is_binary([])
    assert bench.interval(acc) == bench.wilson_interval(7, 10)
    f1_items = [(0, 0), (1, 1), (2, 1), (1, 1), (0, 2), (2, 2)] * 5  # (gold, pred): not 0/1
    assert not bench.is_binary(f1_items)
    calls = []

    def agg(items: list[Any]) -> float:
        calls.append(len(items))
        return float(np.mean([g == p for g, p in items]))

    lo, hi = bench.interval(f1_items, agg, seed=0)
    assert calls and set(calls) == {30} and lo <= agg(f1_items) <= hi
    assert all(math.isnan(x) for x in bench.interval(f1_items))  # no aggregation: no interval


def test_group_accuracy_is_lm_evals_size_weighted_mean(bench) -> None:
    from lm_eval.api.metrics import aggregate_subtask_metrics

    per_doc = {"a": [1, 0, 0, 0], "b": [1, 1], "c": [0, 1, 1]}
    accs = [float(np.mean(v)) for v in per_doc.values()]
    sizes = [len(v) for v in per_doc.values()]
    value = bench.weighted_by_size(accs, sizes)
    assert value == pytest.approx(aggregate_subtask_metrics(accs, sizes, weight_by_size=True))
    assert value == pytest.approx(5 / 9)  # the mean over every sampled document
    assert value != pytest.approx(float(np.mean(accs)))  # not the mean of the subjects
    with pytest.raises(ValueError, match="2 values"):
        bench.weighted_by_size([0.1, 0.2], [3])


def test_equality_is_to_1e_9_and_never_for_missing_values(bench) -> None:
    assert bench.equal(0.55, 0.55) and bench.equal(0.55, 0.55 + 5e-10)
    assert not bench.equal(0.55, 0.55 + 1e-8)
    assert not bench.equal(0.55, None) and not bench.equal(None, None)
    assert not bench.equal(math.nan, math.nan)


def test_evaluation_split_is_test_else_validation(bench) -> None:
    def task(test: str | None, validation: str | None) -> Any:
        config = SimpleNamespace(test_split=test, validation_split=validation, task="t")
        return SimpleNamespace(config=config)

    assert bench.eval_split(task("test", "validation")) == "test"  # MMLU
    assert bench.eval_split(task(None, "validation")) == "validation"  # every other task
    with pytest.raises(ValueError, match="neither a test nor a validation split"):
        bench.eval_split(task(None, None))


def test_per_document_values_go_through_process_results(bench) -> None:
    seen = []

    class Task:
        def process_results(self, doc: dict, results: list[tuple[float, bool]]) -> dict:
            seen.append(results)
            pred = int(np.argmax([ll for ll, _ in results]))
            return {"acc": float(pred == doc["gold"]), "f1": (doc["gold"], pred)}

    docs = [{"gold": 0}, {"gold": 1}, {"gold": 2}]
    lls = [[-1.0, -2.0], [-1.0, -0.5], [-3.0, -2.0, -9.0]]
    out = bench.per_doc_values(Task(), docs, lls)
    assert out == {"acc": [1.0, 1.0, 0.0], "f1": [(0, 0), (1, 1), (2, 1)]}
    assert seen[0] == [(-1.0, False), (-2.0, False)]  # no greedy flags given: False
    bench.per_doc_values(Task(), docs[:1], lls[:1], greedy=[[True, False]])
    assert seen[-1] == [(-1.0, True), (-2.0, False)]
    with pytest.raises(ValueError, match="3 documents but log-likelihoods of 2"):
        bench.per_doc_values(Task(), docs, lls[:2])


def _result(**metrics: dict[str, Any]) -> dict[str, Any]:
    return {"task": "hellaswag", "split": "validation", "n_docs": 20, "n_split": 10042} | {
        "metrics": metrics
    }


def test_table_marks_mismatches_errors_and_the_model_card_loudly(bench) -> None:
    ok = {"fast": 0.45, "ref": 0.45, "ci": [0.25, 0.66], "equal": True}
    off = {"fast": 0.55, "ref": 0.5, "ci": [0.34, 0.74], "equal": False}
    rows = bench.table_rows(_result(acc=ok, acc_norm=off))
    assert [r["metric"] for r in rows] == ["acc", "acc_norm"]
    assert rows[0]["fast"] == "0.4500 [0.250, 0.660]" and rows[0]["ref"] == "0.4500"
    assert rows[0]["equal"] == "yes" and rows[0]["docs"] == "20 of 10042"
    assert rows[1]["equal"] == "**MISMATCH** (diff +5.00e-02)"
    assert rows[0]["card"] == "0.409" and rows[1]["card"] == ""  # the card's figure once

    failed = bench.table_rows({"task": "copa", "error": "OSError: no data"})
    assert len(failed) == 1 and failed[0]["fast"] == "**ERROR**: OSError: no data"
    assert failed[0]["equal"] == "**ERROR**" and failed[0]["card"] == ""  # copa: no figure
    no_ref = dict(ok, ref=None, equal=False)
    assert bench.table_rows(_result(acc=no_ref))[0]["equal"] == "**ERROR**"
    partial = _result(acc=ok) | {"task": "mmlu", "error": "1 of 57 subtasks failed: x"}
    rows = bench.table_rows(partial)
    assert len(rows) == 2 and rows[1]["fast"].startswith("**ERROR**: 1 of 57")
    assert rows[0]["card"] == "0.293 (cloze formulation)"

    text = bench.markdown_table(bench.table_rows(_result(acc=ok, acc_norm=off)) + failed)
    lines = text.splitlines()
    assert lines[0].startswith("| task | split | docs | metric | fast path [95% CI] |")
    assert "different harness" in lines[0]
    assert len(lines) == 5 and all(line.count("|") == 9 for line in lines[2:])
    assert "MISMATCH" in lines[3] and "ERROR" in lines[4]
    piped = bench.markdown_table([{"task": "a|b"}], (("task", "task"),))
    assert piped.splitlines()[2] == "| a\\|b |"  # a cell's | cannot break the row


def test_timing_rows_add_both_fast_path_stages(bench) -> None:
    results = [
        {"task": "copa", "n_docs": 20, "seconds": {"fast_prepare": 1.0, "fast_score": 3.0}}
        | {"seconds": {"fast_prepare": 1.0, "fast_score": 3.0, "simple_evaluate": 10.0}},
        {"task": "rte", "error": "x", "seconds": {"load_task": 0.2}},
    ]
    rows = bench.timing_rows(results)
    assert rows[0] == {
        "task": "copa",
        "docs": "20",
        "prep": "1.0",
        "score": "3.0",
        "ref": "10.0",
        "ratio": "2.5x",
    }
    assert rows[1]["ref"] == "n/a" and rows[1]["ratio"] == "n/a"


def test_model_card_figures_name_tasks_of_the_table(bench) -> None:
    assert set(bench.MODEL_CARD) <= set(bench.TASKS)
    assert all(0.0 < v < 1.0 for v, _ in bench.MODEL_CARD.values())  # fractions, not percent
    assert bench.card_cell("copa") == "" and bench.card_cell("piqa") == "0.663"


def test_per_document_values_are_written_as_json(bench) -> None:
    import json

    values = [1.0, np.float64(0.0), (np.int64(2), np.int64(1)), np.bool_(True), None]
    out = [bench.jsonable(v) for v in values]
    assert out == [1.0, 0.0, [2.0, 1.0], True, "None"]
    assert json.loads(json.dumps(out)) == out  # numpy scalars would not serialise
