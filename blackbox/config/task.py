"""Config of the study's lm-eval task (``task:``), also the shape of a guard task's
(:meth:`~blackbox.config.side_effects.GuardSideEffectConfig.task_config`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from blackbox.sections import Strict


class TaskConfig(Strict):
    name: str = Field(
        min_length=1, description="bundled task (bb_rotten_tomatoes, ...), lm-eval task or YAML"
    )
    metric: str = "acc"
    search_split: str | None = Field(None, description="default: train, else the eval split")
    search_size: int = Field(64, ge=1, description="documents subsampled (by seed) for search")
    heldout_split: str | None = Field(None, description="default: test, else validation")
    heldout_size: int | None = Field(None, ge=1, description="documents for held-out; all if null")
    stratify: bool = Field(True, description="search subsample with equal numbers per gold answer")
    max_gen_toks: int | None = Field(
        None,
        ge=1,
        le=8192,
        description="generative tasks: cap the tokens generated per answer (lm-eval's "
        "max_gen_toks, as `lm_eval --gen_kwargs max_gen_toks=N`); null: the task's own",
    )
    chat_template: bool = Field(
        False,
        description="render each request's context through the model's chat template, as "
        "`lm_eval --apply_chat_template` does (the model's tokenizer must have one)",
    )
    system_instruction: str | None = Field(
        None,
        min_length=1,
        description="chat_template: a system turn before the task's description, as "
        "`lm_eval --system_instruction TEXT`",
    )
    fewshot_as_multiturn: bool | None = Field(
        None,
        description="chat_template: few-shot examples as user/assistant turns (true) or one "
        "user turn (false), as `lm_eval --fewshot_as_multiturn`; null: lm-eval's default, "
        "true with the chat template",
    )

    @model_validator(mode="after")
    def _chat_options_need_the_chat_template(self) -> TaskConfig:
        if self.chat_template:
            return self
        for key in ("system_instruction", "fewshot_as_multiturn"):
            if getattr(self, key) is not None:
                raise ValueError(
                    f"{key}: applies only with task.chat_template: true (lm-eval's "
                    f"--{key} goes with --apply_chat_template); allowed: null, or set "
                    "task.chat_template: true"
                )
        return self

    @property
    def multiturn(self) -> bool:
        """Whether few-shot examples are separate turns (lm-eval's ``fewshot_as_multiturn``
        as ``lm_eval --apply_chat_template`` resolves it: on unless set false)."""
        return bool(self.chat_template) and self.fewshot_as_multiturn is not False
