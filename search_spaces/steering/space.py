"""Activation-steering search space: per steering vector, a layer and a coefficient.

Genome layout (one block per vector, in order): ``[layer, coeff]``, or ``[coeff]`` for a vector
whose layer is fixed.  Coefficients are *relative*: the addition at layer ``l`` is
``coeff * scale[l] * unit(v_l)`` with ``scale[l]`` the typical residual norm there
(:mod:`steering_vectors`), so one coefficient range means the same at every layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from blackbox.api import HookIntervention, SpaceTraits
from blackbox.errors import UserError
from blackbox.forward.hooks import add_per_row
from blackbox.search_spaces.base import SearchSpace
from blackbox.search_spaces.steering.config import SteeringSpaceConfig
from blackbox.search_spaces.steering.finishing import SteeringFinisher
from blackbox.search_spaces.steering.vectors import SteeringVector
from blackbox.strategies.base import Box

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


@dataclass(frozen=True)
class Edit:
    """One steering vector applied at one layer with one relative coefficient."""

    vector: str
    layer: int
    coeff: float


SteeringCandidate = tuple[Edit, ...]
"""A candidate: one :class:`Edit` per steering vector (empty tuple = no steering)."""


class SteeringSpace(SearchSpace[SteeringCandidate]):
    """Layers and coefficients of a set of steering vectors.

    Args:
        vectors: the steering vectors (all with the same number of layers).
        layer_range: inclusive ``(lo, hi)`` layer range searched for vectors without a fixed layer.
        coeff_range: inclusive ``(lo, hi)`` relative coefficient range.
        fixed_layers: vector name -> layer, for vectors whose layer is not searched.
    """

    traits = SpaceTraits("hooks")
    noun = "a steering space (integer layers and coefficients, applied as hooks)"
    config = SteeringSpaceConfig
    finisher = SteeringFinisher

    def __init__(
        self,
        vectors: Sequence[SteeringVector],
        layer_range: tuple[int, int],
        coeff_range: tuple[float, float] = (-1.0, 1.0),
        fixed_layers: dict[str, int] | None = None,
    ) -> None:
        if not vectors:
            raise UserError("steering: need at least one steering vector")
        names = [v.name for v in vectors]
        if len(set(names)) != len(names):
            raise UserError(f"steering: vector names must be unique, got {names}")
        n_layers = vectors[0].num_layers
        lo, hi = int(layer_range[0]), int(layer_range[1])
        if not 0 <= lo <= hi < n_layers:
            raise UserError(
                f"steering.layers: [{lo}, {hi}] is outside the model's layers [0, {n_layers - 1}]"
            )
        fixed = dict(fixed_layers or {})
        for key, layer in fixed.items():
            if key not in names:
                raise UserError(f"steering.fixed_layers: unknown vector {key!r}; vectors: {names}")
            if not 0 <= layer < n_layers:
                raise UserError(
                    f"steering.fixed_layers.{key}: layer {layer} is outside [0, {n_layers - 1}]"
                )
        self.vectors = list(vectors)
        self.by_name = {v.name: v for v in vectors}
        self.layer_range = (lo, hi)
        self.coeff_range = (float(coeff_range[0]), float(coeff_range[1]))
        self.fixed_layers = fixed
        lower, upper, integer, dim_names = [], [], [], []
        for v in self.vectors:
            if v.name not in fixed:
                lower.append(lo), upper.append(hi), integer.append(True)
                dim_names.append(f"{v.name}.layer")
            lower.append(self.coeff_range[0]), upper.append(self.coeff_range[1])
            integer.append(False), dim_names.append(f"{v.name}.coeff")
        self._box = Box(np.array(lower), np.array(upper), np.array(integer), tuple(dim_names))

    @property
    def box(self) -> Box:
        return self._box

    def decode(self, x: np.ndarray) -> list[SteeringCandidate]:
        x = self.box.clip(np.atleast_2d(x))
        out: list[SteeringCandidate] = []
        for row in x:
            edits, j = [], 0
            for v in self.vectors:
                if v.name in self.fixed_layers:
                    layer = self.fixed_layers[v.name]
                else:
                    layer, j = int(row[j]), j + 1
                edits.append(Edit(v.name, layer, float(row[j])))
                j += 1
            out.append(tuple(edits))
        return out

    def encode(self, candidates: Sequence[SteeringCandidate]) -> np.ndarray:
        rows = []
        for cand in candidates:
            by_vec = {e.vector: e for e in cand}
            row: list[float] = []
            for v in self.vectors:
                e = by_vec.get(v.name)
                if e is None:
                    raise ValueError(f"steering: candidate has no edit for vector {v.name!r}")
                if v.name not in self.fixed_layers:
                    row.append(float(e.layer))
                row.append(float(e.coeff))
            rows.append(row)
        return np.asarray(rows, dtype=float).reshape(len(rows), self.dim)

    def additions(
        self, candidates: Sequence[SteeringCandidate], rows: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """Per-layer additions for a batch.

        Args:
            candidates: the batch's candidates.
            rows: ``(B,)`` candidate index per batch row, or ``None`` for one candidate on all rows.

        Returns:
            layer -> ``(B, d)`` (or ``(d,)`` when ``rows`` is None); layers with no edit or
            only zero coefficients are omitted.
        """
        if rows is None and len(candidates) != 1:
            raise ValueError("steering: rows=None needs exactly one candidate")
        per_layer: dict[int, torch.Tensor] = {}
        width = len(candidates)
        for c, cand in enumerate(candidates):
            for e in cand:
                if e.coeff == 0.0:
                    continue
                delta = self.by_name[e.vector].delta(e.layer, e.coeff)  # (d,)
                if e.layer not in per_layer:
                    per_layer[e.layer] = torch.zeros(width, delta.shape[0])
                per_layer[e.layer][c] += delta
        if rows is None:
            return {layer: t[0] for layer, t in per_layer.items()}
        idx = rows.to("cpu", torch.long)
        return {layer: t[idx] for layer, t in per_layer.items()}  # (B, d)

    @contextmanager
    def apply(
        self,
        model: torch.nn.Module,
        candidates: Sequence[SteeringCandidate],
        rows: torch.Tensor | None = None,
        repeat: int = 1,
    ) -> Iterator[None]:
        """Steer ``model`` with ``candidates`` inside the block (hooks always removed).

        Args:
            model: the model.
            candidates: the candidates.
            rows: ``(B,)`` candidate index of each row; ``None`` = one candidate on all rows.
            repeat: branch factor (see :func:`add_per_row`).
        """
        with add_per_row(model, self.additions(candidates, rows), repeat=repeat):
            yield

    def baseline(self) -> SteeringCandidate:
        """The unsteered candidate: every coefficient 0 (layers at the range's lower end)."""
        return tuple(
            Edit(v.name, self.fixed_layers.get(v.name, self.layer_range[0]), 0.0)
            for v in self.vectors
        )

    def baselines(self) -> dict[str, SteeringCandidate]:
        """The reference candidates scored before the search: the unsteered model."""
        return {"unsteered": self.baseline()}

    @staticmethod
    def key(candidate: SteeringCandidate) -> tuple:
        """Identity of a candidate (coefficients to 1e-6; zero edits drop out)."""
        return tuple(
            (e.vector, e.layer, round(e.coeff, 6)) for e in candidate if round(e.coeff, 6) != 0
        )

    def intervention(self, candidates: Sequence[SteeringCandidate]) -> HookIntervention:
        """Per-row hooks adding each candidate's ``coeff * v`` at its layers."""
        cands = list(candidates)
        return HookIntervention(
            apply=lambda model, rows, repeat=1: self.apply(model, cands, rows, repeat),
            lowest_layer=[self.lowest_layer(c) for c in cands],
            keys=[("steer", self.key(c)) for c in cands],
            candidates=cands,
        )

    def lowest_layer(self, candidate: SteeringCandidate) -> int | None:
        """The lowest layer the candidate changes (``None`` if it changes nothing)."""
        layers = [e.layer for e in candidate if e.coeff != 0.0]
        return min(layers) if layers else None

    @classmethod
    def from_config(cls, section: SteeringSpaceConfig, ctx: BuildContext) -> SteeringSpace:
        """Build the vectors (contrastive prompts cached per model, files, logit lens) and the
        space of ``section`` on ``ctx.model`` (one-line errors naming the field)."""
        from pathlib import Path

        from blackbox.errors import ConfigError
        from blackbox.models.layers import layer_path, num_layers
        from blackbox.search_spaces.steering.vectors import (
            cached_contrastive_vector,
            load_vector_file,
            unembedding_vector,
        )

        sc, model, tok = section, ctx.model, ctx.tokenizer
        n_layers = num_layers(model)
        sc.check_layers(n_layers)
        lo, hi = sc.layers
        vectors = []
        hidden = int(model.config.hidden_size)
        hookpoints = {layer_path(model, i): i for i in range(n_layers)}
        for v in sc.vectors:
            if v.file is not None:
                try:
                    vec = load_vector_file(Path(v.file), v.name, n_layers, hidden, hookpoints)
                except ValueError as exc:
                    raise ConfigError(f"config: space.vectors.{v.name}.file: {exc}") from None
                searched = (
                    [sc.fixed_layers[v.name]]
                    if v.name in sc.fixed_layers
                    else list(range(lo, hi + 1))
                )
                missing = [i for i in searched if vec.layers is not None and i not in vec.layers]
                if missing:
                    raise ConfigError(
                        f"config: space.vectors.{v.name}.file: has directions for layers "
                        f"{list(vec.layers or ())} only, not {missing}; set space.layers (or "
                        f"space.fixed_layers.{v.name}) within them"
                    )
                vectors.append(vec)
            elif v.unembed is not None:
                try:
                    vectors.append(unembedding_vector(model, tok, v.name, *v.unembed))
                except ValueError as exc:
                    raise ConfigError(f"config: space.vectors.{v.name}.{exc}") from None
            else:
                vectors.append(
                    cached_contrastive_vector(
                        model,
                        tok,
                        ctx.model_key,
                        v.name,
                        v.concept or [],
                        v.contrast or [],
                        read=sc.read,
                    )
                )
        try:
            return cls(vectors, (lo, hi), sc.coeff, sc.fixed_layers)
        except ValueError as exc:
            raise ConfigError(f"config: space: {exc}") from None

    def describe(self, candidate: SteeringCandidate) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for e in candidate:
            out[f"{e.vector}.layer"] = e.layer
            out[f"{e.vector}.coeff"] = round(e.coeff, 6)
        return out

    def steer_config(self, candidate: SteeringCandidate) -> dict[int, torch.Tensor]:
        """layer -> ``(d,)`` total addition of one candidate (for export)."""
        return self.additions([candidate])
