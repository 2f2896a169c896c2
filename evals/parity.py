"""Reference scores from lm-eval's own ``simple_evaluate`` (for parity tests and benchmarks).

``reference_scores`` evaluates one candidate the slow, trusted way: lm-eval's ``HFLM`` runs the
task's requests with the candidate's hooks installed, and ``simple_evaluate`` aggregates.  The
fast path (:class:`~blackbox.evals.lm_eval_task.LMEvalObjective`) must give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from blackbox.evals.lm_eval_tasks import is_offline, quiet_lm_eval, task_manager_for


def reference_scores(
    lm: Any, task: Any, split: str, samples: Sequence[int], apply_one: Any
) -> tuple[dict[str, float], list[list[float]]]:
    """Score one candidate with ``simple_evaluate`` on documents ``samples`` of ``split``.

    Args:
        lm: an lm-eval ``HFLM``.
        task: the lm-eval ``Task``.
        split: the task split.
        samples: document indices.
        apply_one: a context manager factory installing the candidate on ``lm.model``
            (``None``: unsteered).

    Returns:
        aggregated metrics (``{"acc": ..., ...}``) and, per document (in ``samples`` order),
        the log-likelihood of each choice.
    """
    out = evaluate_samples(lm, task, split, samples, apply_one)
    name = task.config.task
    res = out["results"][name]
    metrics = {k.split(",")[0]: float(v) for k, v in res.items() if "," in k and "stderr" not in k}
    per_doc = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in per_doc]
    return metrics, lls


def evaluate_samples(
    lm: Any, task: Any, split: str, samples: Sequence[int], apply_one: Any, **kw: Any
) -> dict[str, Any]:
    """``simple_evaluate``'s whole output for documents ``samples`` of ``split`` (samples
    logged), with ``apply_one()`` installed (``None``: unintervened); ``kw`` go to
    ``simple_evaluate`` (e.g. the chat-template keywords)."""
    import contextlib

    import lm_eval

    task.config.test_split = split
    name = task.config.task
    with quiet_lm_eval():
        # Without a task manager simple_evaluate indexes every built-in task (seconds).
        manager = task_manager_for([name]) if is_offline(name) else None
    with quiet_lm_eval(), apply_one() if apply_one else contextlib.nullcontext():
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task],
            samples={name: list(samples)},
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
            task_manager=manager,
            **kw,
        )
    return out
