"""Offline tasks load through lm-eval's own TaskManager, build requests and run simple_evaluate;
only our folder is indexed unless a name needs lm-eval's built-ins."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from blackbox.evals.data import read_split
from blackbox.evals.lm_eval_tasks import (
    BUNDLED_GROUPS,
    BUNDLED_TASKS,
    PLACEHOLDER,
    TEMPLATES,
    fetch_task_data,
    load_tasks,
    materialise_tasks,
    offline_names,
    quiet_lm_eval,
    task_manager_for,
)
from blackbox.evals.standard_tasks import MMLU_GROUPS


def test_materialise_writes_absolute_paths_once(tmp_path: Path) -> None:
    out = materialise_tasks(tmp_path)
    files = sorted(p.name for p in out.glob("*.yaml"))
    assert files == sorted(p.name for p in TEMPLATES.glob("*.yaml"))
    assert (out / "standard" / "hellaswag.yaml").is_file()  # standard tasks beside them
    text = (out / "bb_rotten_tomatoes.yaml").read_text()
    assert PLACEHOLDER not in text
    assert f"'{tmp_path.as_posix()}/rotten_tomatoes/test.jsonl'" in text
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.yaml")}
    (out / "bb_old_task.yaml").write_text("task: bb_old_task\n")
    assert materialise_tasks(tmp_path) == out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.yaml")} == mtimes  # stale one removed


def test_bundled_names_index_only_offline_yamls(bundled_data_dir: Path) -> None:
    manager = task_manager_for(["bb_rotten_tomatoes"])
    assert set(BUNDLED_TASKS) <= set(manager.all_tasks)
    tasks = set(manager.all_tasks) - set(manager.all_tags)
    assert tasks <= set(offline_names())  # nothing of lm-eval's ~10k built-ins
    assert set(manager.all_groups) == set(BUNDLED_GROUPS) | set(MMLU_GROUPS)


def test_unknown_bundled_name_fails_fast_on_one_line() -> None:
    with pytest.raises(ValueError, match="bb_rotten_tomatoes") as err:
        task_manager_for(["bb_rotten_tomato"])
    assert "\n" not in str(err.value) and "bb_rotten_tomato'" in str(err.value)


@pytest.mark.slow
def test_other_names_fall_back_to_lm_eval_builtins(bundled_data_dir: Path) -> None:
    """One built-in index (~8 s): a built-in name passes, an unknown one is named."""
    with pytest.raises(ValueError) as err:
        task_manager_for(["bb_rotten_tomatoes", "lambada_openai", "no_such_task_xyz"])
    message = str(err.value)
    assert "'no_such_task_xyz'" in message and "lambada_openai" not in message
    assert "bb_rotten_tomatoes" in message and "hellaswag" in message  # the offline tasks


def test_gone_bigbench_names_are_refused_on_one_line() -> None:
    with pytest.raises(ValueError) as err:
        task_manager_for(["bb_navigate"])
    assert "\n" not in str(err.value) and "'bb_navigate'" in str(err.value)
    assert "social_iqa" in str(err.value)  # the standard tasks are offered instead


def test_fetch_task_data_refuses_names_without_offline_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no offline data for 'lambada_openai'"):
        fetch_task_data(["lambada_openai"], tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("name", ["bb_rotten_tomatoes"])
def test_task_builds_multiple_choice_requests(bundled_data_dir: Path, name: str) -> None:
    with quiet_lm_eval():
        task = load_tasks([name])[name]
        task.build_all_requests(limit=4, rank=0, world_size=1)
    docs = list(task.test_docs())
    assert task.OUTPUT_TYPE == "multiple_choice"
    assert len(docs) == len(read_split(BUNDLED_TASKS[name], "test", bundled_data_dir))
    expected = [(i, j) for i, doc in enumerate(docs[:4]) for j in range(len(doc["choices"]))]
    assert [(inst.doc_id, inst.idx) for inst in task.instances] == expected
    for inst in task.instances:
        context, continuation = inst.arguments
        doc = docs[inst.doc_id]
        assert inst.request_type == "loglikelihood"
        assert context.endswith("Answer:") and doc["query"] in context
        assert continuation == " " + doc["choices"][inst.idx]
    doc = docs[0]
    n = len(doc["choices"])
    right = [(0.0 if j == doc["gold"] else -5.0, False) for j in range(n)]
    wrong = [(-5.0 if j == doc["gold"] else 0.0, False) for j in range(n)]
    assert task.process_results(doc, right)["acc"] == 1.0
    assert task.process_results(doc, wrong)["acc"] == 0.0


def test_perplexity_task_builds_one_rolling_request_per_review(bundled_data_dir: Path) -> None:
    """bb_rotten_tomatoes_ppl: the demo's test reviews as text, one loglikelihood_rolling
    request each, scored as lm-eval scores wikitext (word and byte counts of the text)."""
    name = "bb_rotten_tomatoes_ppl"
    with quiet_lm_eval():
        task = load_tasks([name])[name]
        task.build_all_requests(limit=3, rank=0, world_size=1)
    docs = list(task.test_docs())
    assert len(docs) == len(read_split(BUNDLED_TASKS[name], "test", bundled_data_dir))
    assert [inst.request_type for inst in task.instances] == ["loglikelihood_rolling"] * 3
    assert [inst.arguments[0] for inst in task.instances] == [d["query"] for d in docs[:3]]
    text = docs[0]["query"]
    m = task.process_results(docs[0], [-10.0])
    assert m["word_perplexity"] == (-10.0, len(text.split()))
    assert m["byte_perplexity"] == (-10.0, len(text.encode("utf-8")))


def test_simple_evaluate_on_tiny_llama(
    bundled_data_dir: Path, tiny_llama: Any, tokenizer: Any
) -> None:
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM

    names, limit = ["bb_rotten_tomatoes", "arc_easy"], 6
    real_hash = lm_eval.evaluator.get_git_commit_hash
    level = logging.getLogger("lm_eval").level
    with quiet_lm_eval():
        lm = HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=8, max_length=256)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=task_manager_for(names),
            limit=limit,
            bootstrap_iters=0,
        )
    assert results is not None
    for name in names:
        metrics = results["results"][name]
        assert 0.0 <= metrics["acc,none"] <= 1.0 and 0.0 <= metrics["acc_norm,none"] <= 1.0
        assert results["n-samples"][name]["effective"] == limit
        assert len(results["samples"][name]) == limit
    assert results["git_hash"] is None  # quiet_lm_eval skipped the git subprocess
    assert lm_eval.evaluator.get_git_commit_hash is real_hash  # ... and restored it
    assert logging.getLogger("lm_eval").level == level


def test_quiet_lm_eval_silences_progress_bars(bundled_data_dir: Path, capfd: Any) -> None:
    with quiet_lm_eval():
        task = load_tasks("bb_rotten_tomatoes")["bb_rotten_tomatoes"]
        task.build_all_requests(limit=20, rank=0, world_size=1)
    assert "it/s" not in capfd.readouterr().err


def test_a_task_yaml_path_is_a_task(bundled_data_dir: Path, tmp_path: Path) -> None:
    """A user's own task YAML (here a renamed copy of a bundled one) loads by its path."""
    from blackbox.evals.lm_eval_splits import load_task
    from blackbox.evals.lm_eval_tasks import materialise_tasks

    src = (materialise_tasks() / "bb_rotten_tomatoes.yaml").read_text()
    path = tmp_path / "my_task.yaml"
    path.write_text(src.replace("task: bb_rotten_tomatoes", "task: my_task"))
    task = load_task(str(path))
    assert task.config.task == "my_task" and len(task.dataset["test"]) > 100


def test_a_task_yaml_path_loads_without_the_builtin_index(
    bundled_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's YAML that needs nothing of lm-eval's built-ins never indexes them (that cost
    ~30 s of set-up per run)."""
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager

    def no_defaults(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("include_defaults") is False, "lm-eval's built-in index was built"
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", no_defaults)
    src = (materialise_tasks() / "bb_rotten_tomatoes.yaml").read_text()
    path = tmp_path / "fast_task.yaml"
    path.write_text(src.replace("task: bb_rotten_tomatoes", "task: fast_task"))
    with quiet_lm_eval():
        tasks = load_tasks([str(path)])
    assert list(tasks) == ["fast_task"]
