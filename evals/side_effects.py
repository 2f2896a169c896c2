"""Side effects next to any primary objective: KL retention, guard tasks and fluency as columns.

:class:`SideEffects` wraps the study's primary objective.  ``evaluate`` scores the primary as
before and every side measure on the same intervention, and returns the primary's values with
the side columns appended to ``extra`` (after the primary's own extras, so a token prompt's
``xentropy`` stays column 0 for EPO):

- ``kl``: :class:`~blackbox.evals.kl.KLDivergence` on neutral texts (nats per token);
- ``drop:<task>``: ``100 * (reference - score)`` of a guard lm-eval task, the reference being
  its score without intervention (measured once per split by :meth:`SideEffects.set_reference`);
- ``xentropy``: the primary's fluency column (token spaces), nothing more to compute.

Every side column is minimised; bounds make constraints (see :mod:`blackbox.multiobjective`).
Cost is exact: the primary's plus one forward-pass equivalent per side document and
candidate (repeats are free, as everywhere); the one-off references (base log-probs of the KL
texts, the guard's unintervened score) are counted in :attr:`SideEffects.reference_cost`.
Everything else (gradients, fluency lookups, calibration) is the primary's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blackbox.api import Evaluation
from blackbox.multiobjective import ObjectiveSpec, SideColumn


@dataclass
class Measure:
    """One side column measured by an objective of its own.

    Attributes:
        column: the column name (``kl``, ``drop:rte``).
        objective: the objective measuring it (``evaluate(iv, split)``); ``None`` for a column
            the primary already reports (``xentropy``).
        points: guard: the column is ``points * (reference - value)`` (a drop); else the value.
        reference: guard: the unintervened score per split.
    """

    column: str
    objective: Any = None
    points: float | None = None
    reference: dict[str, float] = field(default_factory=dict)

    def split(self, split: str) -> str:
        """The measure's split for the primary's ``split`` (its search split otherwise)."""
        return split if self.objective is not None and split in self.objective.splits else "search"


class SideEffects:
    """The primary objective with side columns (see the module docstring).

    Args:
        primary: the study's objective.
        measures: the side measures, in column order.
        spec: the columns' bounds, weights and Pareto roles (indices into ``extra``).
    """

    def __init__(self, primary: Any, measures: list[Measure], spec: ObjectiveSpec) -> None:
        self.primary, self.measures = primary, list(measures)
        self.objective_spec = spec
        own = tuple(primary.extra_names)
        self.extra_names = own + tuple(m.column for m in measures if m.column not in own)
        self.extra_directions = tuple(primary.extra_directions) + ("minimize",) * (
            len(self.extra_names) - len(own)
        )
        self._guard_cost = 0.0

    @property
    def reference_cost(self) -> float:
        """One-off forward-pass equivalents: the guards' unintervened scores and the base
        log-probs of the KL texts scored so far."""
        kl = sum(
            float(getattr(m.objective, "reference_cost", lambda: 0.0)()) for m in self.measures
        )
        return self._guard_cost + kl

    def __getattr__(self, name: str) -> Any:  # gradients, splits, traits...: the primary's
        if name == "primary":
            raise AttributeError(name)
        return getattr(self.primary, name)

    def cost_per_candidate(self, split: str = "search") -> float:
        """Forward-pass equivalents of one new candidate on ``split`` (all measures)."""
        n = float(_cost_of(self.primary, split))
        for m in self.measures:
            if m.objective is not None:
                n += float(_cost_of(m.objective, m.split(split)))
        return n

    def reset_cache(self, keep: Any = ()) -> None:
        self.primary.reset_cache(keep)
        for m in self.measures:
            if m.objective is not None:
                m.objective.reset_cache(keep)

    def set_reference(self, iv: Any) -> None:
        """Score the guards on the unintervened candidate ``iv`` (one) on every split."""
        for m in self.measures:
            if m.points is None or m.objective is None:
                continue
            for split in m.objective.splits:
                ev = m.objective.evaluate(iv, split)
                m.reference[split] = float(ev.values[0])
                self._guard_cost += float(ev.cost)

    def evaluate(self, iv: Any, split: str = "search", limit: int | None = None) -> Evaluation:
        """The primary's evaluation with the side columns in ``extra`` ``(n, k)``."""
        ev = self.primary.evaluate(iv, split, limit)
        n = len(ev.values)
        own = len(self.primary.extra_names)
        extra = np.full((n, len(self.extra_names)), np.nan)
        if own and ev.extra is not None:
            extra[:, :own] = ev.extra
        cost = float(ev.cost)
        metrics = [dict(m) for m in ev.metrics] if ev.metrics else [{} for _ in range(n)]
        for m in self.measures:
            if m.objective is None:
                continue
            sub = m.split(split)
            side = m.objective.evaluate(iv, sub)
            cost += float(side.cost)
            col = np.asarray(side.values, dtype=float)
            if m.points is not None:
                metrics_name = m.column.replace("drop:", "guard:")
                for i in range(n):
                    metrics[i][metrics_name] = float(col[i])
                col = m.points * (m.reference.get(sub, np.nan) - col)
            extra[:, self.extra_names.index(m.column)] = col
            for i in range(n):
                metrics[i][m.column] = float(col[i])
        return Evaluation(ev.values, metrics, extra=extra, cost=cost, per_doc=ev.per_doc)


def _cost_of(objective: Any, split: str) -> float:
    own = getattr(objective, "cost_per_candidate", None)
    return float(own(split)) if own is not None else float(objective.n_examples(split))


def spec_of(cfg_items: list[Any], extra_names: tuple[str, ...], primary: str) -> ObjectiveSpec:
    """The :class:`ObjectiveSpec` of the config's side effects over ``extra_names``."""
    return ObjectiveSpec(
        primary,
        tuple(
            SideColumn(
                s.column,
                extra_names.index(s.column),
                bound=s.bound,
                select_bound=s.selection_bound,
                objective=s.objective,
                weight=s.weight,
            )
            for s in cfg_items
        ),
    )


def config_spec(cfg: Any) -> ObjectiveSpec:
    """The spec from the config alone (before any model loads: the strategy check)."""
    items = list(cfg.side_effects or [])
    names = tuple(s.column for s in items)
    return spec_of(items, names, cfg.task.metric if cfg.task is not None else "value")


def kl_texts(item: Any, cfg: Any, ctx: Any) -> dict[str, list[str]]:
    """The KL measure's texts by split: bundled headlines, a text file or the task's inputs."""
    from blackbox.evals.neutral_text import guardian_headlines, read_texts, split_texts

    if item.texts_file:
        texts = read_texts(item.texts_file)
    elif item.texts == "task":
        texts = task_inputs(cfg, ctx)
    else:
        texts = guardian_headlines()
    return split_texts(texts, item.size, item.heldout_size, cfg.seed + 7)


def task_inputs(cfg: Any, ctx: Any) -> list[str]:
    """The study task's document inputs (``doc_to_text``) of its search split."""
    from blackbox.errors import ConfigError

    if cfg.task is None:
        objective_docs = ctx.documents(cfg.objective)
        return [d for d in objective_docs["search"] if d]
    task = ctx.task()
    docs = task.training_docs() if task.has_training_docs() else task.test_docs()
    if docs is None:
        raise ConfigError("config: side_effects: texts 'task': the task has no documents")
    return [str(task.doc_to_text(d)) for d in docs]


def build(cfg: Any, ctx: Any, primary: Any, space: Any, guard_tasks: dict[str, Any]) -> SideEffects:
    """The wrapped objective of a study with ``side_effects``, references measured."""
    from blackbox.errors import ConfigError
    from blackbox.evals.kl import KLDivergence
    from blackbox.evals.lm_eval_splits import task_splits
    from blackbox.evals.lm_eval_task import LMEvalTask
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval

    items = list(cfg.side_effects)
    measures: list[Measure] = []
    sc = cfg.scoring
    for i, item in enumerate(items):
        if item.type == "fluency":
            measures.append(Measure(item.column))
        elif item.type == "kl":
            try:
                kl = KLDivergence.from_texts(
                    ctx.model,
                    ctx.tokenizer,
                    kl_texts(item, cfg, ctx),
                    max_tokens=item.max_tokens,
                    max_rows=sc.max_rows or 32,
                )
            except ValueError as exc:
                raise ConfigError(f"config: side_effects.{i}: {exc}") from None
            measures.append(Measure(item.column, kl))
        else:
            tc = item.task_config()
            task = guard_tasks[item.task]
            splits = task_splits(task, tc, cfg.seed, warn=ctx.warn)
            try:
                guard = LMEvalTask(
                    task,
                    ctx.lm(),
                    splits,
                    metric=item.metric,
                    max_batch_tokens=sc.max_batch_tokens,
                    branch=sc.branch,
                    trunk_cache_mb=sc.trunk_cache_mb,
                    pack=sc.pack,
                    **ctx.objective_kw(max_rows=32),
                )
            except ValueError as exc:
                msg = str(exc).split(": ", 1)[-1]
                raise ConfigError(f"config: side_effects.{i}.metric: {msg}") from None
            with quiet_lm_eval():  # lm-eval's own request-building bars: none (--no-progress)
                for split in splits:
                    guard.prepared(split)
            measures.append(Measure(item.column, guard, points=100.0))
    wrapped = SideEffects(primary, measures, ObjectiveSpec(primary.metric, ()))
    wrapped.objective_spec = spec_of(items, wrapped.extra_names, primary.metric)
    base = space.baselines() if hasattr(space, "baselines") else {}
    ref = base.get("unsteered", base.get("no prompt"))
    if ref is not None and any(m.points is not None for m in measures):
        wrapped.set_reference(space.intervention([ref]))
    return wrapped
