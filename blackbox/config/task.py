"""Config of the study's lm-eval task (``task:``), also the shape of a guard task's
(:meth:`~blackbox.config.side_effects.GuardSideEffectConfig.task_config`)."""

from __future__ import annotations

from pydantic import Field

from blackbox.config.base import Strict


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
