"""The soft-prompt space's config section (``space.type: soft_prompt``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from blackbox.sections import Placement, Strict

BOUND_LIMIT = 1000.0
"""The largest soft-prompt ``bound``, in embedding spreads."""


class ProjectionConfig(Strict):
    """Soft prompt -> tokens after the search: nearest-token beam, then HotFlip repair."""

    enabled: bool = True
    beam_k: int = Field(3, ge=1, description="nearest tokens per position in the beam")
    beam_max: int = Field(81, ge=1, description="most beam combinations scored")
    repair_steps: int = Field(16, ge=0)
    repair_topk: int = Field(16, ge=1, description="swaps proposed per position and step")
    ban: list[str] = Field(
        default_factory=list, description="texts whose tokens repair may not use"
    )


class SoftPromptSpaceConfig(Strict):
    """``n_tokens`` soft vectors ``p = A z + p0`` (``subspace_dim: null`` = the full space)."""

    type: Literal["soft_prompt"]
    n_tokens: int = Field(4, ge=1, le=256)
    placement: Placement = Field(
        "after_input", description="where the vectors go in each of the objective's documents"
    )
    init: Literal["random", "text"] = "random"
    init_text: str | None = Field(None, description="text whose token embeddings start p0")
    subspace_dim: int | None = Field(
        None, ge=1, description="k of the random subspace z (Black-Box Tuning); null: full n*d"
    )
    bound: float = Field(
        5.0, gt=0, le=BOUND_LIMIT, description="box half-width of z, in embedding spreads"
    )
    baseline: str | None = Field(
        None, description="hand-written text in the soft prompt's place, scored as a baseline"
    )
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)

    @model_validator(mode="after")
    def _init_text(self) -> SoftPromptSpaceConfig:
        if self.init == "text" and not self.init_text:
            raise ValueError("init_text: init 'text' needs a non-empty init_text")
        return self
