"""The token space's config section (``space.type: tokens``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from blackbox.sections import Placement, Strict


class TokenSpaceConfig(Strict):
    """A sequence of ``n_tokens`` token ids from an allowed vocabulary."""

    type: Literal["tokens"]
    n_tokens: int = Field(8, ge=1, le=256)
    ascii_only: bool = True
    banned: list[str] = Field(default_factory=list, description="case-insensitive substrings")
    placement: Placement = Field(
        "before_input", description="where the tokens go in each of the objective's documents"
    )
    prefix: str = Field("", description="fixed text right before the tokens")
    suffix: str = Field("", description="fixed text right after the tokens")
    baseline: str | None = Field(
        None, description="hand-written text in the tokens' place, scored as a baseline"
    )
