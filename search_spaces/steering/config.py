"""The steering space's config section (``space.type: steering``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from blackbox.errors import ConfigError
from blackbox.sections import Strict

COEFF_LIMIT = 1000.0
"""The largest ``|coeff|`` bound: a coefficient is relative to the layer's typical residual norm,
so 1000 is already far past any useful steering (and the box's width stays finite)."""


class VectorConfig(Strict):
    """One steering vector: contrastive prompts, a tensor file, or a logit-lens direction."""

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
        for side in ("concept", "contrast"):
            blank = [i for i, t in enumerate(getattr(self, side) or []) if not t.strip()]
            if blank:
                raise ValueError(
                    f"{side}: prompt {blank[0]} is empty; every prompt needs some text (a "
                    "vector is the mean activation difference of the prompts' last tokens)"
                )
        return self


class SteeringSpaceConfig(Strict):
    """Per steering vector a layer and a relative coefficient (finite bounds: every float of a
    :class:`Strict` section is)."""

    type: Literal["steering"] = "steering"
    vectors: list[VectorConfig] = Field(min_length=1)
    layers: tuple[int, int] = Field(description="inclusive layer range searched")
    coeff: tuple[float, float] = Field((-1.0, 1.0), description="relative coefficient range")
    fixed_layers: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="vector name -> its layer (not searched)"
    )
    read: Literal["last", "mean"] = "last"

    @model_validator(mode="after")
    def _ranges(self) -> SteeringSpaceConfig:
        if max(abs(c) for c in self.coeff) > COEFF_LIMIT:
            raise ValueError(
                f"coeff: {list(self.coeff)} is out of range; allowed: bounds within "
                f"[-{COEFF_LIMIT:g}, {COEFF_LIMIT:g}] (relative to the layer's residual norm)"
            )
        if self.layers[0] < 0:
            raise ValueError(f"layers: lower bound {self.layers[0]} is negative; allowed: >= 0")
        if self.layers[0] > self.layers[1]:
            raise ValueError(f"layers: lower bound {self.layers[0]} > upper {self.layers[1]}")
        if self.coeff[0] > self.coeff[1]:
            raise ValueError(f"coeff: lower bound {self.coeff[0]} > upper {self.coeff[1]}")
        names = [v.name for v in self.vectors]
        if len(set(names)) != len(names):
            raise ValueError(f"vectors: names must be unique, got {names}")
        unknown = [k for k in self.fixed_layers if k not in names]
        if unknown:
            raise ValueError(
                f"fixed_layers: {unknown[0]!r} is not a vector of this space; allowed: {names}"
            )
        return self

    def check_layers(self, n_layers: int) -> None:
        """``layers`` and ``fixed_layers`` within a model of ``n_layers`` decoder layers (from
        its saved config before it loads, or the loaded model): one-line ``ConfigError``."""
        lo, hi = self.layers
        if not 0 <= lo <= hi < n_layers:
            raise ConfigError(
                f"config: space.layers: [{lo}, {hi}] is outside the model's layers; "
                f"allowed 0..{n_layers - 1}"
            )
        for name, layer in self.fixed_layers.items():
            if not 0 <= layer < n_layers:
                raise ConfigError(
                    f"config: space.fixed_layers.{name}: {layer} is outside 0..{n_layers - 1}"
                )
