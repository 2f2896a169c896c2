"""Study configuration: YAML (safe-loaded) validated into typed pydantic models.

``load_config(path, overrides)`` reads a YAML file, applies ``--set a.b=c`` overrides (values
parsed as YAML scalars), and validates.  Every problem is raised as :class:`ConfigError` with
one line naming the field and what is allowed.  No ``exec``, no pickle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field("smollm2-135m-instruct", description="hub id, local path or embedded name")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    dtype: Literal["float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = "float32"


class TaskConfig(_Strict):
    name: str = Field(description="bundled task (bb_rotten_tomatoes, ...) or any lm-eval task name")
    metric: str = "acc"
    search_split: str | None = Field(None, description="default: train, else the eval split")
    search_size: int = Field(64, ge=1, description="documents subsampled (by seed) for search")
    heldout_split: str | None = Field(None, description="default: test, else validation")
    heldout_size: int | None = Field(None, ge=1, description="documents for held-out; all if null")
    stratify: bool = Field(True, description="search subsample with equal numbers per gold answer")


class VectorConfig(_Strict):
    name: str = Field(min_length=1)
    concept: list[str] | None = None
    contrast: list[str] | None = None
    file: str | None = None
    unembed: tuple[str, str] | None = Field(
        None, description="[a, b]: unembedding row of token a minus that of token b"
    )

    @model_validator(mode="after")
    def _one_source(self) -> VectorConfig:
        prompts = self.concept is not None or self.contrast is not None
        if prompts + (self.file is not None) + (self.unembed is not None) != 1:
            raise ValueError("give exactly one of concept+contrast prompts, file or unembed")
        if prompts and (not self.concept or not self.contrast):
            raise ValueError("concept and contrast both need at least one prompt")
        return self


class SpaceConfig(_Strict):
    type: Literal["steering"] = "steering"
    vectors: list[VectorConfig] = Field(min_length=1)
    layers: tuple[int, int] = Field(description="inclusive layer range searched")
    coeff: tuple[float, float] = Field((-1.0, 1.0), description="relative coefficient range")
    fixed_layers: dict[str, int] = Field(default_factory=dict)
    read: Literal["last", "mean"] = "last"

    @model_validator(mode="after")
    def _ranges(self) -> SpaceConfig:
        if self.layers[0] > self.layers[1]:
            raise ValueError(f"layers: lower bound {self.layers[0]} > upper {self.layers[1]}")
        if self.coeff[0] > self.coeff[1]:
            raise ValueError(f"coeff: lower bound {self.coeff[0]} > upper {self.coeff[1]}")
        names = [v.name for v in self.vectors]
        if len(set(names)) != len(names):
            raise ValueError(f"vectors: names must be unique, got {names}")
        return self


class TokenSpaceConfig(_Strict):
    """A sequence of ``n_tokens`` token ids from an allowed vocabulary."""

    type: Literal["tokens"]
    n_tokens: int = Field(8, ge=1, le=256)
    ascii_only: bool = True
    banned: list[str] = Field(default_factory=list, description="case-insensitive substrings")
    prefix: str = ""
    suffix: str = ""
    chat_template: bool = Field(
        False, description="put the tokens in the chat template's user turn (prefix/suffix)"
    )


class SoftPromptSpaceConfig(_Strict):
    """``n_tokens`` soft vectors ``p = A z + p0`` (``subspace_dim: null`` = the full space)."""

    type: Literal["soft_prompt"]
    n_tokens: int = Field(4, ge=1, le=256)
    placement: Literal["before_input", "after_input", "system", "template"] = Field(
        "after_input", description="where the vectors go (template: at the template's {soft})"
    )
    init: Literal["random", "text"] = "random"
    init_text: str | None = Field(None, description="text whose token embeddings start p0")
    subspace_dim: int | None = Field(
        None, ge=1, description="k of the random subspace z (Black-Box Tuning); null: full n*d"
    )
    bound: float = Field(5.0, gt=0, description="box half-width of z, in embedding spreads")

    @model_validator(mode="after")
    def _init_text(self) -> SoftPromptSpaceConfig:
        if self.init == "text" and not self.init_text:
            raise ValueError("init_text: init 'text' needs a non-empty init_text")
        return self


class ProjectionConfig(_Strict):
    """Soft prompt -> tokens after the search: nearest-token beam, then HotFlip repair."""

    enabled: bool = True
    beam_k: int = Field(3, ge=1, description="nearest tokens per position in the beam")
    beam_max: int = Field(81, ge=1, description="most beam combinations scored")
    repair_steps: int = Field(16, ge=0)
    repair_topk: int = Field(16, ge=1, description="swaps proposed per position and step")
    ban: list[str] = Field(
        default_factory=list, description="texts whose tokens repair may not use"
    )


class ClassificationObjectiveConfig(_Strict):
    """Label log-likelihood / accuracy of a bundled labelled dataset with the soft prompt."""

    type: Literal["classification"]
    data: Literal["rotten_tomatoes"] = "rotten_tomatoes"
    template: str = Field(
        "Review: {query}\nAnswer:", description="user text; {query} is the document"
    )
    system: str | None = Field(None, description="system turn text (needs chat)")
    chat: bool = False
    labels: list[str] = Field(["negative", "positive"], min_length=2)
    baseline: str = Field(
        "Is this review positive or negative?",
        description="hand-written text in the soft prompt's place (the baseline)",
    )
    search_split: str = "train"
    search_size: int = Field(64, ge=1)
    heldout_split: str = "test"
    heldout_size: int | None = Field(400, ge=1, description="null: the whole split")
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)


class BehaviourObjectiveConfig(_Strict):
    """Match the model's own completions under a reference prompt, over user prompts."""

    type: Literal["behaviour"]
    reference: str = Field(min_length=1, description="the prompt whose behaviour to match")
    prompts: list[str] = Field(min_length=1, description="user prompts searched on")
    heldout_prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(48, ge=1, le=512)
    k: int = Field(32, ge=1, description="first k completion tokens weigh more; @k metrics")
    weight: float = Field(3.0, gt=0)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)


class LmEvalTaskObjectiveConfig(_Strict):
    """The study's ``task:`` (any lm-eval task) scored with the soft prompt inserted."""

    type: Literal["lm_eval_task"]
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)


class NeuronObjectiveConfig(_Strict):
    type: Literal["neuron"]
    layer: int = Field(ge=0)
    index: int = Field(ge=0)


class DirectionObjectiveConfig(_Strict):
    type: Literal["residual_direction"]
    layer: int = Field(ge=0)
    direction_seed: int | None = Field(0, description="random unit direction from this seed")
    direction_file: str | None = None
    calibrate: int = Field(256, ge=0, description="random prompts for the z-score (0: none)")
    standardise: bool = Field(True, description="maximise the z-score itself")


class LogitObjectiveConfig(_Strict):
    type: Literal["logit"]
    target: str = Field(min_length=1, description="target word; its variants are banned")
    ban_variants: bool = True


class ReferenceObjectiveConfig(_Strict):
    type: Literal["reference"]
    target: str = Field(min_length=1, description="string the prompt should make the model say")


class FeatureObjectiveConfig(_Strict):
    type: Literal["feature_direction"]
    layer: int = Field(ge=0)
    file: str
    row: int | None = None


ObjectiveConfig = Annotated[
    NeuronObjectiveConfig
    | DirectionObjectiveConfig
    | LogitObjectiveConfig
    | ReferenceObjectiveConfig
    | FeatureObjectiveConfig
    | ClassificationObjectiveConfig
    | BehaviourObjectiveConfig
    | LmEvalTaskObjectiveConfig,
    Field(discriminator="type"),
]


TOKEN_OBJECTIVES = ("neuron", "residual_direction", "logit", "reference", "feature_direction")
SOFT_OBJECTIVES = ("classification", "behaviour", "lm_eval_task")


class StrategyConfig(_Strict):
    name: str = "pso"
    population: int = Field(8, ge=1)
    settings: dict[str, Any] = Field(default_factory=dict)


class BudgetConfig(_Strict):
    evaluations: int | None = Field(None, ge=1)
    seconds: float | None = Field(None, gt=0)
    cost: float | None = Field(None, gt=0, description="forward-pass equivalents")

    @model_validator(mode="after")
    def _some(self) -> BudgetConfig:
        if self.evaluations is None and self.seconds is None and self.cost is None:
            raise ValueError("set evaluations, seconds or cost")
        return self


class ScoringConfig(_Strict):
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


class StudyConfig(_Strict):
    """A whole study: model, task, search space, strategy, budget, storage."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig | None = Field(None, description="lm-eval task (steering studies)")
    objective: ObjectiveConfig | None = Field(
        None, description="internal objective (token studies)"
    )
    space: Annotated[
        SpaceConfig | TokenSpaceConfig | SoftPromptSpaceConfig, Field(discriminator="type")
    ]
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig(evaluations=64))
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    storage: str | None = Field(
        None, description="Optuna storage URL; default SQLite in the run dir"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_space_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("space"), dict):
            data = dict(data, space={"type": "steering", **data["space"]})
        return data

    @model_validator(mode="after")
    def _sections(self) -> StudyConfig:
        if self.space.type == "steering":
            if self.task is None:
                raise ValueError("task: a steering study needs a task (an lm-eval task name)")
            if self.objective is not None:
                raise ValueError("objective: steering studies are scored by their task; remove it")
        else:
            kind = "token" if self.space.type == "tokens" else "soft-prompt"
            allowed = TOKEN_OBJECTIVES if self.space.type == "tokens" else SOFT_OBJECTIVES
            if self.objective is None:
                raise ValueError(
                    f"objective: a {kind} study needs an objective ({', '.join(allowed)})"
                )
            if self.objective.type not in allowed:
                raise ValueError(
                    f"objective.type: {self.objective.type!r} does not score a {kind} study; "
                    f"allowed: {', '.join(allowed)}"
                )
            wants_task = self.objective.type == "lm_eval_task"
            if wants_task and self.task is None:
                raise ValueError(
                    "task: objective 'lm_eval_task' needs a task (an lm-eval task name)"
                )
            if self.task is not None and not wants_task:
                raise ValueError(f"task: {kind} studies are scored by their objective; remove it")
        return self

    def resolved(self) -> dict[str, Any]:
        """The full config with defaults filled in (JSON-friendly)."""
        return json.loads(self.model_dump_json())

    def fingerprint(self, ignore: tuple[str, ...] = ("budget", "storage", "scoring")) -> str:
        """Hash of everything that changes results.

        Budget and storage are excluded, and so is ``scoring``: its settings (batching,
        branching, packing, trunk cache) change speed, not scores, so a run may resume with
        other ones.
        """
        data = {k: v for k, v in self.resolved().items() if k not in ignore and v is not None}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic model classes inside an annotation (through Optional, Union, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_models_in(arg))
    return out


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type | None]:
    """Drop discriminator tags from ``loc``; also return the model holding its last key."""
    current: Any = model
    clean: list[Any] = []
    parts = list(loc)
    i = 0
    while i < len(parts):
        part = parts[i]
        clean.append(part)
        i += 1
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            current = None
            continue
        models = _models_in(field.annotation)
        if len(models) > 1 and i < len(parts) and isinstance(parts[i], str):
            tagged = [m for m in models if _tag(m) == parts[i]]
            if tagged:  # pydantic puts the union member's tag into the location: drop it
                current = tagged[0]
                i += 1
                continue
        current = models[0] if models else None
    return tuple(clean), current


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    args = getattr(field.annotation, "__args__", ()) if field is not None else ()
    return args[0] if args else None


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at ``loc``'s parent (for 'unknown key' messages)."""
    _, parent = _walk(model, loc[:-1])
    return list(getattr(parent, "model_fields", {})) if loc[:-1] else list(model.model_fields)


def format_validation_error(exc: ValidationError, model: type[BaseModel] = StudyConfig) -> str:
    """One line for the first error: the field, what is wrong, what is allowed."""
    err = exc.errors()[0]
    raw = tuple(err.get("loc", ()))
    loc, _ = _walk(model, raw)
    where = _field_path(loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, raw)
        return f"config: unknown key {where!r}; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"config: {where}: required field is missing"
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    named = re.match(r"^([a-z_]+): ", msg)
    if named and raw and err["type"] == "value_error":  # a section's check names its field
        return f"config: {where}.{msg}{shown}"
    if not loc:  # a whole-config check names its own field ("task: ...")
        return f"config: {msg}{shown}"
    return f"config: {where}: {msg}{shown}"


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (``c`` parsed as YAML) to a nested dict (copied)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key segment")
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a mapping")
            node = nxt
        node[parts[-1]] = _parse_scalar(value)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Safe-load a YAML mapping from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"config: {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path}: top level must be a mapping of keys to values")
    return data


def validate(data: dict[str, Any]) -> StudyConfig:
    """Validate a config mapping; raise :class:`ConfigError` with one line on failure."""
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read, override and validate a study config."""
    return validate(apply_overrides(read_yaml(path), overrides or []))
