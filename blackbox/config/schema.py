"""The study config: typed pydantic sections (model, task, space, objective, strategy, budget).

One schema for every study: any space with any objective and any strategy.  The ``space:`` and
``objective:`` sections are the unions of the sections the registries hold
(:data:`~blackbox.search_spaces.registry.SPACES`, :data:`~blackbox.evals.registry.OBJECTIVES`),
so a new component's section is in the schema once it is registered
(:func:`study_schema`); which combinations can run is derived from the classes' traits
(:mod:`.rules`).  Older configs keep working: a space without ``type`` is steering, a study
with a ``task`` and no ``objective`` scores the task, and a few moved fields are moved
(``space.chat_template`` -> ``objective.chat``, ``objective.projection`` ->
``space.projection``, ``objective.baseline`` -> ``space.baseline``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    create_model,
    field_validator,
    model_validator,
)

from blackbox.config.side_effects import SideEffectConfig, duplicate_column
from blackbox.config.task import TaskConfig
from blackbox.evals.registry import OBJECTIVES
from blackbox.registry import Registry
from blackbox.search_spaces.registry import SPACES
from blackbox.sections import ConfigError, Population, Strict, check_name, check_storage_url

__all__ = ["ConfigError", "StudyConfig", "TaskConfig"]


class ModelConfig(Strict):
    name: str = Field(
        "smollm2-135m-instruct", min_length=1, description="hub id, local path or embedded name"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: on CPU the faster of float32 and bfloat16 on this machine (timed at "
        "load, bf16 only if it passes the exactness check), on CUDA bfloat16 where supported; "
        "a run saves the precision that ran and resumes in it",
    )
    _adopted: str | None = PrivateAttr(None)
    """Set when ``auto`` took the precision of a stored run (see ``adopt_dtype``)."""

    def adopt(self, dtype: str, why: str) -> None:
        """Resolve ``auto`` to ``dtype`` (a stored run's precision), saying why."""
        self.dtype = dtype  # type: ignore[assignment]
        self._adopted = why


UNSET_NOT_FINGERPRINTED: tuple[tuple[str, str, Any], ...] = (
    ("task", "max_gen_toks", None),
    ("task", "chat_template", False),
    ("task", "system_instruction", None),
    ("task", "fewshot_as_multiturn", None),
)
"""Fields added after studies were stored, ``(section, key, unset value)``: left out of the
fingerprint while they hold their unset value (the behaviour from before they existed), so that
those studies still resume."""


def section_union(sections: tuple[Any, ...]) -> Any:
    """The config sections of a registry as one field type, told apart by ``type``."""
    if len(sections) == 1:
        return sections[0]
    return Annotated[Union[sections], Field(discriminator="type")]  # noqa: UP007


def _sections(registry: Registry) -> tuple[Any, ...]:
    return tuple(registry.sections())


class StrategyConfig(Strict):
    name: str = "pso"
    population: Population = 8
    settings: dict[str, Any] = Field(default_factory=dict)


class BudgetConfig(Strict):
    evaluations: int | None = Field(None, ge=1)
    seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    cost: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="forward-pass equivalents"
    )

    @model_validator(mode="after")
    def _some(self) -> BudgetConfig:
        if self.evaluations is None and self.seconds is None and self.cost is None:
            raise ValueError("set evaluations, seconds or cost")
        return self


class RacingConfig(Strict):
    """Racing (``scoring.racing``): see :mod:`blackbox.study.racing`."""

    schedule: list[Annotated[int, Field(ge=1)]] = Field(
        [16, 32],
        min_length=1,
        description="documents after which candidates are tested (then all documents)",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="1 - the chance of stopping a candidate that would win"
    )

    @field_validator("schedule")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"must increase, got {v}")
        return v


def _racing(v: Any) -> Any:
    """``racing: true`` is the default schedule; ``false`` / ``null`` is off."""
    if v is True:
        return {}
    return None if v is False else v


class ScoringConfig(Strict):
    racing: Annotated[RacingConfig | None, BeforeValidator(_racing)] = Field(
        None,
        description="score search candidates on growing slices of documents and stop those "
        "that cannot beat the incumbent (true: schedule 16, 32, all; confidence 0.95)",
    )
    max_batch_tokens: int | None = Field(
        None,
        ge=64,
        description="tokens per forward pass (halved on out-of-memory); default: 2048 on CPU, "
        "where cache-sized batches run fastest, 16384 on GPU",
    )
    trunk_cache_mb: int = Field(
        1024, ge=0, description="memory for trunks reused across generations"
    )
    branch: bool = Field(True, description="share the unsteered trunk across candidates")
    pack: bool = Field(
        True, description="run each shared context once: the choices of a question in one row"
    )
    max_rows: int | None = Field(
        None, ge=1, description="rows (candidates x documents) per spliced forward call"
    )
    gen_rows: int = Field(
        64,
        ge=1,
        description="generative tasks: rows (candidates x requests) per prefill chunk and in "
        "the running decoding batch; raise it on a GPU, where a step's cost barely grows with "
        "its rows",
    )


SpaceSection = section_union(_sections(SPACES))
"""``space:``: the sections of the registered spaces (at import; see :func:`study_schema`)."""
ObjectiveSection = section_union(_sections(OBJECTIVES))
"""``objective:``: the sections of the registered objectives."""


def _migrate(data: Any) -> Any:
    """Older configs: default space type, default objective, moved fields."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    space = data.get("space")
    if isinstance(space, dict):
        space = data["space"] = {"type": "steering", **space}
    if data.get("task") is not None and data.get("objective") is None:
        data["objective"] = {"type": "lm_eval_task"}
    objective = data.get("objective")
    if not (isinstance(space, dict) and isinstance(objective, dict)):
        return data
    objective = data["objective"] = dict(objective)
    if space.get("type") == "tokens" and "chat_template" in space:
        space = data["space"] = dict(space)
        chat = space.pop("chat_template")
        objective.setdefault("chat", chat)
    if space.get("type") == "soft_prompt":
        for key in ("projection", "baseline"):
            if key not in objective:
                continue
            value = objective.pop(key)
            if isinstance(value, dict) and isinstance(space.get(key), dict):
                value = {**value, **space[key]}  # --set space.projection.x=... refines it
            elif key in space:
                continue
            space = data["space"] = {**space, key: value}
    elif space.get("type") == "tokens" and "baseline" in objective and "baseline" not in space:
        data["space"] = {**space, "baseline": objective.pop("baseline")}
    return data


class StudyConfig(Strict):
    """A whole study: model, task, search space, objective, strategy, budget, storage."""

    name: str = Field(min_length=1, description="names the run directory and the study")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds data, strategy and torch")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig | None = Field(None, description="lm-eval task (objective lm_eval_task)")
    objective: ObjectiveSection
    space: SpaceSection
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig(evaluations=64))
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    storage: str | None = Field(
        None, description="Optuna storage URL; default SQLite in the run dir"
    )
    side_effects: list[SideEffectConfig] | None = Field(
        None, min_length=1, description="KL retention, guard tasks, fluency (extra objectives)"
    )

    @model_validator(mode="before")
    @classmethod
    def _older_configs(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("objective") is None and data.get("task") is None:
            if isinstance(data.get("space"), dict):
                names = [
                    n if n != "lm_eval_task" else "lm_eval_task with a task:"
                    for n in OBJECTIVES.ordered_names()
                ]
                raise ValueError(
                    f"objective: a study needs an objective ({', '.join(names[:-1])} or "
                    f"{names[-1]})"
                )
        return _migrate(data)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        return None if v is None else check_storage_url(v)

    @model_validator(mode="after")
    def _side_effects(self) -> StudyConfig:
        twice = duplicate_column(self.side_effects or [])
        if twice:
            raise ValueError(f"side_effects: {twice!r} is measured twice; keep one entry")
        return self

    @model_validator(mode="after")
    def _task(self) -> StudyConfig:
        wants_task = self.objective.type == "lm_eval_task"
        if wants_task and self.task is None:
            raise ValueError("task: objective 'lm_eval_task' needs a task (an lm-eval task name)")
        if self.task is not None and not wants_task:
            raise ValueError(
                f"task: objective {self.objective.type!r} does not read a task; remove it"
            )
        return self

    def resolved(self) -> dict[str, Any]:
        """The full config with defaults filled in (JSON-friendly)."""
        return json.loads(self.model_dump_json())

    def with_dtype(self, dtype: str) -> StudyConfig:
        """A copy whose ``model.dtype`` is ``dtype``."""
        copy = self.model_copy(deep=True)
        copy.model.dtype = dtype  # type: ignore[assignment]
        return copy

    def adopt_dtype(self, fingerprint: str | None, why: str, **kwargs: Any) -> bool:
        """``model.dtype: auto`` meets a stored run: take the concrete precision whose
        fingerprint (``self.fingerprint(**kwargs)``) is the stored one, so a resumed run goes on
        in the precision it started in rather than timing again.  Returns whether it did."""
        if self.model.dtype != "auto" or not fingerprint:
            return False
        for dtype in ("float32", "bfloat16", "float16"):
            if self.with_dtype(dtype).fingerprint(**kwargs) == fingerprint:
                self.model.adopt(dtype, why)
                return True
        return False

    def fingerprint(self, ignore: tuple[str, ...] = ("budget", "storage", "scoring")) -> str:
        """Hash of everything that changes results.

        Budget and storage are excluded, and so is ``scoring``: its settings (batching,
        branching, packing, trunk cache) change speed, not scores, so a run may resume with
        other ones.
        """
        data = {k: v for k, v in self.resolved().items() if k not in ignore and v is not None}
        for section, key, unset in UNSET_NOT_FINGERPRINTED:  # stores made before the field
            if isinstance(data.get(section), dict) and data[section].get(key, unset) is unset:
                data[section].pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_BUILT_WITH = (_sections(SPACES), _sections(OBJECTIVES))
_SCHEMAS: dict[tuple[tuple[Any, ...], tuple[Any, ...]], type[StudyConfig]] = {}


def study_schema() -> type[StudyConfig]:
    """The study schema for the components registered now: :class:`StudyConfig` itself, or,
    after a user registered a space or objective of their own (``SPACES.add(MySpace)``), a
    subclass whose ``space:`` and ``objective:`` also take its section (built once per set of
    sections)."""
    key = (_sections(SPACES), _sections(OBJECTIVES))
    if key == _BUILT_WITH:
        return StudyConfig
    if key not in _SCHEMAS:
        _SCHEMAS[key] = create_model(
            "StudyConfig",
            __base__=StudyConfig,
            __module__=__name__,
            objective=(section_union(key[1]), ...),
            space=(section_union(key[0]), ...),
        )
    return _SCHEMAS[key]
