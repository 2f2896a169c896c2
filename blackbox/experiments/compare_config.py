"""The config of ``blackbox compare``: a study, more spaces, entries, seeds and one budget.

Validated before any model loads: every entry's space, objective and strategy must meet
(:func:`blackbox.study.pipeline.check`), with one line naming the entry.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from blackbox.config import (
    BudgetConfig,
    ConfigError,
    Strict,
    StudyConfig,
    apply_overrides,
    format_validation_error,
    read_yaml,
)
from blackbox.config.schema import SpaceSection, section_union, study_schema
from blackbox.masking import short_repr
from blackbox.sections import NAME_PATTERN, Population, Seed, StorageURL

LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.+-]+")


class RunStrategy(Strict):
    """One entry of the matrix (a curve in the report): a strategy on a space."""

    name: str = Field(description="registered strategy name (pso, nevergrad, optuna, random, ...)")
    label: str | None = Field(None, description="curve name; default the strategy name")
    population: Population = 8
    settings: dict[str, Any] = Field(default_factory=dict)
    space: str | None = Field(None, description="a key of `spaces`; default the study's space")

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not LABEL_PATTERN.fullmatch(v):  # fullmatch: no final newline
            raise ValueError(
                f"{short_repr(v)} is not a curve name; allowed: letters, digits, '_', '.', '+', '-'"
            )
        return v

    @property
    def key(self) -> str:
        return self.label or self.name


class CompareBudget(BudgetConfig):
    """One budget for every run; ``cost`` (forward-pass equivalents) is the fair unit."""

    evaluations: int | None = Field(None, ge=1)


class CompareConfig(Strict):
    """A comparison: a study config, more spaces, entries, seeds and one budget."""

    study: StudyConfig
    spaces: dict[str, SpaceSection] = Field(default_factory=dict)
    tasks: list[str] | None = Field(None, min_length=1, description="one matrix per task")
    strategies: list[RunStrategy] = Field(min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    budget: CompareBudget
    threshold: float | None = Field(None, description="report: score to reach")
    storage: StorageURL | None = Field(None, description="Optuna storage URL")

    @model_validator(mode="after")
    def _unique(self) -> CompareConfig:
        labels = [s.key for s in self.strategies]
        if len(set(labels)) != len(labels):
            raise ValueError(f"strategies: labels must be unique, got {labels} (set label:)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: must be unique, got {self.seeds}")
        for s in self.strategies:
            if s.space is not None and s.space not in self.spaces:
                raise ValueError(
                    f"strategies: {s.key!r}: space {s.space!r} is not a key of spaces "
                    f"({', '.join(self.spaces) or 'none'})"
                )
        if self.tasks and self.study.task is None:
            raise ValueError("tasks: the study scores no task (objective lm_eval_task)")
        if self.tasks and len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: must be unique, got {self.tasks}")
        for task in self.tasks or []:
            if not NAME_PATTERN.fullmatch(task):
                raise ValueError(
                    f"tasks: {task!r}: each task names its report's directory, so it must be a "
                    "task name (letters, digits, '_', '.', '-'), not a path; a task YAML goes "
                    "in study.task.name of a one-task comparison"
                )
        return self

    @property
    def name(self) -> str:
        return self.study.name

    def study_for(self, entry: RunStrategy, task: str | None = None) -> StudyConfig:
        """The study config of one entry: its space and strategy (and the task)."""
        from blackbox.config.loading import validate

        data = self.study.resolved()
        if entry.space is not None:
            data["space"] = json.loads(self.spaces[entry.space].model_dump_json())
        data["strategy"] = {
            "name": entry.name,
            "population": entry.population,
            "settings": dict(entry.settings),
        }
        if task is not None:
            data["task"] = dict(data["task"], name=task)
        return validate(data, rules=False)


def _check_raw(data: dict[str, Any]) -> None:
    study = data.get("study")
    if isinstance(study, dict):
        for key in ("strategy", "budget"):
            if key in study:
                raise ConfigError(
                    f"config: study.{key}: not used by compare; set the top-level "
                    f"{'strategies' if key == 'strategy' else 'budget'} instead"
                )


@functools.cache
def _compare_for(study: type[StudyConfig]) -> type[CompareConfig]:
    """:class:`CompareConfig` over a study schema that takes a user's registered components."""
    from blackbox.search_spaces.registry import SPACES

    spaces = section_union(tuple(SPACES.sections()))  # the sections the study schema took
    return create_model(
        "CompareConfig",
        __base__=CompareConfig,
        __module__=__name__,
        study=(study, ...),
        spaces=(dict[str, spaces], Field(default_factory=dict)),  # type: ignore[valid-type]
    )


def compare_schema() -> type[CompareConfig]:
    """The compare schema for the components registered now (see
    :func:`blackbox.config.schema.study_schema`)."""
    study = study_schema()
    return CompareConfig if study is StudyConfig else _compare_for(study)


def validate_compare(data: dict[str, Any]) -> CompareConfig:
    """Validate a compare mapping (one-line :class:`ConfigError`)."""
    _check_raw(data)
    schema = compare_schema()
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, schema)) from None


def load_compare(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read, override (``--set study.task.search_size=16``) and validate a compare config;
    every entry's space, objective and strategy must meet (before any model is loaded)."""
    cfg = validate_compare(apply_overrides(read_yaml(path), overrides or []))
    from blackbox.study.pipeline import check  # torch and transformers: after the YAML checks

    for s in cfg.strategies:
        try:
            check(cfg.study_for(s))
        except ConfigError as exc:
            msg = str(exc).removeprefix("config: ")
            raise ConfigError(f"config: strategies.{s.key}: {msg}") from None
    return cfg
