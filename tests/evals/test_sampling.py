"""Seeded, stratified subsamples of documents."""

from __future__ import annotations

from blackbox.evals.sampling import subsample


def test_stratified_subsample_balances_labels() -> None:

    labels = [0] * 90 + [1] * 10
    got = subsample(100, 20, seed=0, labels=labels)
    assert len(got) == 20 == len(set(got))
    assert sum(labels[i] for i in got) == 10  # half from the rare class
    assert got == subsample(100, 20, seed=0, labels=labels)  # seeded
    small = subsample(100, 30, seed=1, labels=labels)  # rare class runs out: topped up
    assert len(small) == 30 and sum(labels[i] for i in small) == 10
    assert subsample(100, 200, seed=0) == list(range(100))


def test_a_search_size_above_the_split_is_a_kept_warning(capsys) -> None:
    """All documents are used, one line on stderr, and the line is kept for result.json."""
    from types import SimpleNamespace

    from blackbox.evals.lm_eval_splits import task_splits
    from blackbox.study.context import BuildContext

    task = SimpleNamespace(
        dataset={"train": [{"g": i % 2} for i in range(10)], "test": [{"g": 0}] * 5},
        doc_to_target=lambda d: d["g"],
        config=SimpleNamespace(training_split="train", test_split="test", validation_split=None),
        has_training_docs=lambda: True,
        has_test_docs=lambda: True,
        has_validation_docs=lambda: False,
    )
    tcfg = SimpleNamespace(
        name="t",
        search_split="train",
        heldout_split="test",
        search_size=64,
        heldout_size=3,
        stratify=True,
    )
    ctx = BuildContext(cfg=None, loaded=None)  # type: ignore[arg-type]
    splits = task_splits(task, tcfg, seed=0, warn=ctx.warn)
    assert splits["search"].samples == list(range(10))
    want = "task.search_size: 64 is more than the 10 documents of split 'train'; all 10 are used"
    assert ctx.warnings == [want]
    assert capsys.readouterr().err == f"blackbox: warning: {want}\n"
    task_splits(task, tcfg, seed=0, warn=ctx.warn)  # said once
    assert ctx.warnings == [want] and capsys.readouterr().err == ""
    fits = SimpleNamespace(**{**vars(tcfg), "search_size": 10})
    task_splits(task, fits, seed=0, warn=ctx.warn)
    assert ctx.warnings == [want]
