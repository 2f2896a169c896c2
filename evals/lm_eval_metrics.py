"""Which metrics an lm-eval task offers an objective, and which are means over documents."""

from __future__ import annotations

from typing import Any

from blackbox.errors import UserError

__all__ = ["check_metric", "metric_per_document", "task_metrics"]


def task_metrics(task: Any) -> list[str]:
    """The metrics an objective can maximise on ``task``: its metrics (and, for a generative
    task, ``metric,filter`` for each filter ensemble), or ``gold_logprob`` for a
    loglikelihood task."""
    from blackbox.evals.lm_eval_generate import filter_keys

    names = list(task.aggregation())
    if task.config.output_type == "generate_until":
        return names + [f"{m},{k}" for k in filter_keys(task) for m in names]
    if task.config.output_type == "loglikelihood_rolling":
        return names
    return [*names, "gold_logprob"]


def check_metric(task: Any, metric: str) -> None:
    """Raise ``ValueError`` unless ``metric`` is one of :func:`task_metrics`."""
    metrics = task_metrics(task)
    if metric not in metrics:
        raise UserError(
            f"metric: {metric!r} is not a metric of task {task.config.task!r}; allowed: {metrics}"
        )


def metric_per_document(task: Any, metric: str) -> bool:
    """``metric`` is a mean over documents: aggregated by lm-eval's ``mean`` (accuracy-type
    metrics), or ``gold_logprob`` (the mean of the gold choice's log-probability)."""
    from lm_eval.api.metrics import mean

    return metric == "gold_logprob" or task.aggregation().get(metric.split(",")[0]) is mean
