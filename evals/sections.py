"""The config sections of the bundled objectives (``objective.type``), and what they share:
where their documents come from (:class:`Documents`), z-scoring against random candidates
(:class:`Standardise`) and a feature direction's source (:class:`FeatureSource`).

Each objective class names its section (``NeuronObjective.config = NeuronObjectiveConfig``),
and the study schema's ``objective:`` is assembled from :data:`~blackbox.evals.registry.OBJECTIVES`.
The bundled sections live here, in one module of pydantic alone, and not beside their
objectives, because a config is validated before torch is imported (a mistyped field is told in
well under a second, not after the 4-8 s of torch, transformers and lm-eval imports); a user's
own objective may keep its section in its module.

Every objective but ``lm_eval_task`` measures candidates over *documents*
(:mod:`blackbox.evals.documents`): a list of prompts (or a text file, one per line) rendered
through ``template`` (``{query}`` is the document), an optional system turn and the chat
template.  Token prompts without documents are scored on one empty document (dreaming a prompt
on its own); steering, which has no prompt of its own, needs documents for every objective but
an lm-eval task.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from blackbox.sections import Strict


class Documents(Strict):
    """Where an objective's documents come from and how each becomes a prompt."""

    prompts: list[str] | None = Field(None, description="documents searched on")
    prompts_file: str | None = Field(None, description="a text file, one document per line")
    heldout_prompts: list[str] | None = Field(None, description="documents held out")
    heldout_prompts_file: str | None = None
    template: str = Field("{query}", description="user text of a document ({query})")
    system: str | None = Field(None, description="system turn text (needs chat)")
    chat: bool = Field(False, description="wrap the turns in the tokenizer's chat template")

    def has_documents(self) -> bool:
        return bool(self.prompts or self.prompts_file)


class Standardise(Strict):
    """Internal objectives: z-scores against random candidates of the search space."""

    standardise: bool = Field(
        True, description="maximise the z-score against random candidates (Fluent Dreaming eq. 5)"
    )
    calibrate: int = Field(
        256, ge=0, description="random candidates the z-score is measured against (0: raw value)"
    )


class FeatureSource(Strict):
    """A feature direction from a tensor file (an SAE decoder) or the unembedding of words."""

    file: str | None = Field(None, description=".pt or .safetensors: a vector or a matrix")
    unembed: list[str] | None = Field(
        None, min_length=1, description="words whose unembedding rows are the directions"
    )

    @model_validator(mode="after")
    def _one_source(self) -> FeatureSource:
        if (self.file is None) == (self.unembed is None):
            raise ValueError("file: give exactly one of file or unembed")
        return self


class LmEvalTaskObjectiveConfig(Strict):
    """The study's ``task:`` (any lm-eval task: multiple choice, loglikelihood, perplexity
    (``loglikelihood_rolling``) or generative (``generate_until``))."""

    type: Literal["lm_eval_task"]


class ClassificationObjectiveConfig(Documents):
    """Label log-likelihood / accuracy of a bundled labelled dataset."""

    type: Literal["classification"]
    data: Literal["rotten_tomatoes"] = "rotten_tomatoes"
    template: str = Field("Review: {query}\nAnswer:", description="user text ({query})")
    labels: list[str] = Field(["negative", "positive"], min_length=2)
    search_split: str = "train"
    search_size: int = Field(64, ge=1)
    heldout_split: str = "test"
    heldout_size: int | None = Field(400, ge=1, description="null: the whole split")

    @model_validator(mode="after")
    def _no_prompts(self) -> ClassificationObjectiveConfig:
        if self.prompts or self.prompts_file or self.heldout_prompts or self.heldout_prompts_file:
            raise ValueError("prompts: classification takes its documents from `data`")
        return self


class BehaviourObjectiveConfig(Documents):
    """Match the model's own completions under a reference prompt, over user prompts."""

    type: Literal["behaviour"]
    reference: str = Field(min_length=1, description="the prompt whose behaviour to match")
    chat: bool = True
    max_new_tokens: int = Field(48, ge=1, le=512)
    k: int = Field(32, ge=1, description="first k completion tokens weigh more; @k metrics")
    weight: float = Field(3.0, gt=0)


class ReferenceObjectiveConfig(Documents):
    """Teacher-forced cross-entropy of a target string after each document (GCG's loss)."""

    type: Literal["reference"]
    target: str = Field(min_length=1, description="string the model should say")
    k: int = Field(32, ge=1, description="first k target tokens weigh `weight` times more")
    weight: float = Field(1.0, gt=0, description="1: a plain mean (as GCG)")


class NeuronObjectiveConfig(Documents, Standardise):
    type: Literal["neuron"]
    layer: int = Field(ge=0)
    index: int = Field(ge=0)


class DirectionObjectiveConfig(Documents, Standardise):
    type: Literal["residual_direction"]
    layer: int = Field(ge=0)
    direction_seed: int | None = Field(0, description="random unit direction from this seed")
    direction_file: str | None = None


class FeatureObjectiveConfig(Documents, Standardise, FeatureSource):
    type: Literal["feature_direction"]
    layer: int = Field(ge=0)
    row: int | None = Field(None, ge=0, description="row of a 2-D matrix (an SAE decoder)")
    bias: float = 0.0

    @model_validator(mode="after")
    def _one_word(self) -> FeatureObjectiveConfig:
        if self.unembed is not None and len(self.unembed) != 1:
            raise ValueError("unembed: feature_direction takes one word (lp_features takes many)")
        return self


class LpFeaturesObjectiveConfig(Documents, Standardise, FeatureSource):
    type: Literal["lp_features"]
    layer: int = Field(ge=0)
    rows: list[int] | None = Field(None, min_length=1, description="rows of a 2-D matrix")
    offsets: list[float] | float = 0.0
    p: float = Field(0.5, gt=0)


class LogitObjectiveConfig(Documents, Standardise):
    type: Literal["logit"]
    target: str = Field(min_length=1, description="target word; its variants are banned")
    ban_variants: bool = True


class FluencyObjectiveConfig(Documents):
    type: Literal["fluency"]
