"""Which documents of an lm-eval task a study searches on and holds out.

``load_task`` builds the task (bundled or any lm-eval name or task YAML) with one-line errors;
``task_splits`` draws the seeded ``search`` subsample (stratified by gold answer) and the
``heldout`` documents (never search documents when both come from one split).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blackbox.errors import ConfigError
from blackbox.evals.lm_eval_requests import TaskSplitSpec
from blackbox.evals.sampling import size_warning, subsample


def load_task(name: str) -> Any:
    """The lm-eval ``Task`` called ``name`` (one-line :class:`ConfigError` if the name is
    unknown or its data cannot be loaded)."""
    from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval

    try:
        with quiet_lm_eval():
            tasks = load_tasks([name])
    except (ValueError, ConfigError):
        raise
    except Exception as exc:  # e.g. datasets failing on an empty or malformed data file
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(
            f"config: task.name: {name!r}: its data cannot be loaded "
            f"({type(exc).__name__}{': ' + first if first else ''}); is a data file empty or malformed?"
        ) from None
    if not tasks:
        raise ConfigError(f"config: task.name: {name!r} holds no task")
    return next(iter(tasks.values()))


def build_lm(loaded: Any) -> Any:
    """An lm-eval ``HFLM`` around an already loaded model (used for its tokenisation)."""
    from lm_eval.models.huggingface import HFLM

    from blackbox.evals.lm_eval_tasks import quiet_lm_eval

    with quiet_lm_eval():
        return HFLM(
            pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=16, device=loaded.device
        )


def split_names(task: Any, search: str | None, heldout: str | None) -> tuple[str, str]:
    """The search and held-out split names.

    Defaults: search on ``train``; without one, on ``validation`` when the task also has a
    ``test`` split (MMLU: search on validation, hold out test), else on the eval split itself
    (then the held-out documents are the rest of that split).  Held out: the eval split
    (``test``, else ``validation``).
    """
    c = task.config
    named = (c.training_split, c.validation_split, c.test_split, getattr(c, "fewshot_split", None))
    available = list(dict.fromkeys(s for s in named if s))
    search = search or c.training_split or (c.validation_split if c.test_split else None)
    search = search or c.test_split or c.validation_split
    heldout = heldout or c.test_split or c.validation_split
    for field, split in (("search_split", search), ("heldout_split", heldout)):
        if split not in available:
            raise ConfigError(
                f"config: task.{field}: {split!r} is not a split of this task; allowed: {available}"
            )
    return search, heldout


def gold_labels(task: Any, split: str) -> list[Any] | None:
    """Gold target of every document of ``split`` (``None`` if the task has none)."""
    try:
        return [task.doc_to_target(doc) for doc in task.dataset[split]]
    except Exception:
        return None


def task_splits(
    task: Any, tcfg: Any, seed: int, warn: Callable[[str], None] | None = None
) -> dict[str, TaskSplitSpec]:
    """The seeded ``search`` subsample and the ``heldout`` documents of ``tcfg`` (a
    :class:`~blackbox.config.task.TaskConfig`); ``warn`` hears of a size above the split's."""
    search_split, heldout_split = split_names(task, tcfg.search_split, tcfg.heldout_split)
    n_search = len(task.dataset[search_split])
    if n_search == 0:
        raise ConfigError(
            f"config: task.search_split: split {search_split!r} of {tcfg.name!r} is empty"
        )
    labels = gold_labels(task, search_split) if tcfg.stratify else None
    search_docs = subsample(n_search, tcfg.search_size, seed, labels=labels)
    if warn is not None and tcfg.search_size > n_search:
        warn(size_warning("task.search_size", tcfg.search_size, n_search, search_split))
    exclude = set(search_docs) if heldout_split == search_split else None
    heldout_docs = subsample(len(task.dataset[heldout_split]), tcfg.heldout_size, seed + 1, exclude)
    if not heldout_docs:
        raise ConfigError(f"config: task.heldout_split: no documents left in {heldout_split!r}")
    if warn is not None and heldout_split != search_split:
        shared = shared_documents(task, search_split, search_docs, heldout_split, heldout_docs)
        if shared:
            warn(
                f"task: {shared} held-out document(s) of split {heldout_split!r} also appear "
                f"(same prompt and target) among the search documents of {search_split!r}: "
                "the held-out score is not a clean estimate"
            )
    return {
        "search": TaskSplitSpec(search_split, search_docs),
        "heldout": TaskSplitSpec(heldout_split, heldout_docs),
    }


def shared_documents(
    task: Any, split_a: str, docs_a: list[int], split_b: str, docs_b: list[int]
) -> int:
    """How many documents ``docs_b`` of ``split_b`` equal (prompt and target) one of ``docs_a``
    of ``split_a`` (0 when the task cannot render them)."""

    def keys(split: str, idx: list[int]) -> list[tuple[str, str]]:
        docs = task.dataset[split]
        if task.config.process_docs is not None:
            docs = task.config.process_docs(docs)
        return [(str(task.doc_to_text(docs[i])), str(task.doc_to_target(docs[i]))) for i in idx]

    try:
        seen = set(keys(split_a, docs_a))
        return sum(k in seen for k in keys(split_b, docs_b))
    except Exception:
        return 0


def describe_documents(specs: dict[str, Any], tcfg: Any, seed: int) -> dict[str, Any]:
    """How the search and held-out documents were drawn, for ``result.json``."""
    search, heldout = specs["search"], specs["heldout"]
    same = search.split == heldout.split

    def count(spec: Any) -> int | str:
        return "all" if spec.samples is None else len(spec.samples)

    return {
        "search": {
            "split": search.split,
            "documents": count(search),
            "drawn": f"seeded random sample (seed {seed})"
            + (", stratified by gold answer" if tcfg.stratify else ""),
        },
        "heldout": {
            "split": heldout.split,
            "documents": count(heldout),
            "drawn": f"seeded random sample (seed {seed + 1})"
            + (", excluding every search document" if same else ""),
        },
        "disjoint": True if same else "different splits (checked for repeated documents)",
    }
