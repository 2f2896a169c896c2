"""Internal-activation objectives (Fluent Dreaming, Thompson et al. 2024), for any intervention.

Each reads the last position of every document (after the prompt and the document, where the
model is about to answer) and averages over documents:

* :class:`NeuronObjective`: an MLP neuron, the input of the block's MLP output projection
  (``act(gate) * up`` for gated MLPs), found for any architecture by
  :func:`~blackbox.models.layers.mlp_output_projection`.
* :class:`ResidualDirectionObjective`: cosine alignment ``<h, v> / (||h|| ||v||)`` of the
  residual stream after a decoder layer with a direction (the paper's eq. 4).
* :class:`FeatureDirectionObjective`: ``<h, v> + bias`` with ``v`` loaded from a tensor file (an
  SAE decoder row, loaded with ``torch.load(weights_only=True)`` or safetensors) or from a
  sae-lens SAE directory (``cfg.json`` + ``sae_weights.safetensors``: row ``row`` of ``W_dec``
  ``(d_sae, d_in)`` is feature ``row``'s direction; :func:`load_sae_decoder`).
* :class:`LpFeaturesObjective`: ``(sum_i relu(a_i + offset_i)^p)^(1/p)`` over several feature
  dot products (``p < 1`` rewards activating all of them together).

Every one is :class:`~blackbox.evals.document_objective.Standardised`: calibrated on random
candidates its value is a z-score (eq. 5), the default, so fluency weights mean the same for
every objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from blackbox.errors import UserError
from blackbox.evals.document_objective import Standardised, at_last
from blackbox.evals.sae import load_sae_decoder, sae_layer
from blackbox.evals.sections import (
    DirectionObjectiveConfig,
    Documents,
    FeatureObjectiveConfig,
    LpFeaturesObjectiveConfig,
    NeuronObjectiveConfig,
)
from blackbox.forward.splice import Capture, Items, SpliceOut

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


def load_direction(
    source: str | Path | torch.Tensor | np.ndarray, row: int | Sequence[int] | None = None
) -> torch.Tensor:
    """``(d,)`` or ``(k, d)`` float direction(s) from a tensor, array, ``.pt`` or
    ``.safetensors`` file.

    A ``.pt`` file is read with ``torch.load(weights_only=True)``; a dict (or safetensors file)
    must hold one tensor or a ``"direction"``/``"W_dec"`` entry.  ``row`` picks rows of a 2-D
    matrix (an SAE decoder).
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        source = load_sae_decoder(Path(source))[0]
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            for key in ("direction", "W_dec", "w_dec"):
                if key in obj:
                    obj = obj[key]
                    break
            else:
                if len(obj) != 1:
                    raise UserError(f"{source}: a dict with keys {sorted(obj)}; name one tensor")
                obj = next(iter(obj.values()))
        source = obj
    t = torch.as_tensor(source).float()
    if row is not None:
        t = t[list(row)] if isinstance(row, Sequence) else t[row]
    return t


def lp_combine(acts: torch.Tensor, offsets: torch.Tensor, p: float) -> torch.Tensor:
    """``(B,)`` ``(sum_i relu(a_i + o_i)^p)^(1/p)`` of ``acts`` ``(B, k)`` (pure)."""
    r = torch.relu(acts + offsets)  # (B, k)
    pos = r > 0
    terms = torch.where(pos, torch.where(pos, r, torch.ones_like(r)).pow(p), torch.zeros_like(r))
    total = terms.sum(-1)  # (B,)
    alive = total > 0
    return torch.where(alive, torch.where(alive, total, torch.ones_like(total)).pow(1.0 / p), total)


def _standardise_kw(o: Any) -> dict[str, Any]:
    return {"standardise": bool(o.standardise and o.calibrate)}


class _Residual(Standardised):
    """Reads the residual stream after decoder block ``layer`` at each document's last token."""

    def __init__(self, model: torch.nn.Module, splits: dict[str, Items], layer: int, **kw: Any):
        super().__init__(model, splits, **kw)
        self.layer = int(layer)
        self.captures = (Capture(self.layer, "residual"),)

    def residual(self, out: SpliceOut) -> torch.Tensor:
        """``(R, d)`` residual stream after block ``layer`` at each row's last position."""
        return at_last(out.captured[self.captures[0]], out).float()


class NeuronObjective(Standardised):
    """Activation of MLP neuron ``index`` of decoder block ``layer`` at the last position."""

    config = NeuronObjectiveConfig

    raw_metric = "activation"

    def __init__(
        self, model: torch.nn.Module, splits: dict[str, Items], layer: int, index: int, **kw: Any
    ) -> None:
        super().__init__(model, splits, **kw)
        self.layer, self.index = int(layer), int(index)
        self.captures = (Capture(self.layer, "mlp"),)

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        return {"value": at_last(out.captured[self.captures[0]], out)[:, self.index].float()}

    @classmethod
    def from_config(cls, section: NeuronObjectiveConfig, ctx: BuildContext) -> NeuronObjective:
        from blackbox.errors import ConfigError
        from blackbox.models.layers import mlp_width

        o = section
        ctx.check_layer("objective.layer", o.layer)
        try:
            width = mlp_width(ctx.model, o.layer)
        except ValueError as exc:
            raise ConfigError(f"config: objective.type: 'neuron': {exc}") from None
        if o.index >= width:
            raise ConfigError(f"config: objective.index: {o.index} is outside 0..{width - 1}")
        return cls(
            ctx.model, _splits(o, ctx), o.layer, o.index, **_standardise_kw(o), **ctx.objective_kw()
        )


class ResidualDirectionObjective(_Residual):
    """Cosine alignment of the residual after ``layer`` with ``direction`` ``(d,)`` (eq. 4)."""

    config = DirectionObjectiveConfig

    raw_metric = "alignment"

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        layer: int,
        direction: Any,
        **kw: Any,
    ) -> None:
        super().__init__(model, splits, layer, **kw)
        v = load_direction(direction).to(self.splice.device).reshape(-1)
        self.direction = v / v.norm()  # (d,)

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        h = self.residual(out)  # (R, d)
        return {"value": h @ self.direction / h.norm(dim=-1).clamp_min(1e-12)}

    @classmethod
    def from_config(
        cls, section: DirectionObjectiveConfig, ctx: BuildContext
    ) -> ResidualDirectionObjective:
        from blackbox.models.layers import hidden_size

        o = section
        ctx.check_layer("objective.layer", o.layer)
        if o.direction_file:
            direction: Any = _file_direction(o.direction_file, "objective.direction_file", ctx)
        else:
            g = torch.Generator().manual_seed(int(o.direction_seed or 0))
            direction = torch.randn(hidden_size(ctx.model), generator=g)
        return cls(
            ctx.model,
            _splits(o, ctx),
            o.layer,
            direction,
            **_standardise_kw(o),
            **ctx.objective_kw(),
        )


class FeatureDirectionObjective(_Residual):
    """``<h, v> + bias`` for a direction ``v`` ``(d,)`` (an SAE decoder row)."""

    config = FeatureObjectiveConfig

    raw_metric = "feature"

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        layer: int,
        direction: Any,
        bias: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(model, splits, layer, **kw)
        self.direction = load_direction(direction).to(self.splice.device).reshape(-1)
        self.bias = float(bias)

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        return {"value": self.residual(out) @ self.direction + self.bias}

    @classmethod
    def from_config(
        cls, section: FeatureObjectiveConfig, ctx: BuildContext
    ) -> FeatureDirectionObjective:
        o = section
        ctx.check_layer("objective.layer", o.layer)
        if o.unembed is not None:
            v = _unembedding(o.unembed, ctx)[0]
        else:
            v = _file_direction(o.file, "objective.file", ctx, row=o.row, layer=o.layer)
        return cls(
            ctx.model,
            _splits(o, ctx),
            o.layer,
            v,
            bias=o.bias,
            **_standardise_kw(o),
            **ctx.objective_kw(),
        )


class LpFeaturesObjective(_Residual):
    """L_p (p < 1 by default) combination of several feature dot products."""

    config = LpFeaturesObjectiveConfig

    raw_metric = "lp"

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        layer: int,
        directions: Any,
        offsets: Sequence[float] | float = 0.0,
        p: float = 0.5,
        **kw: Any,
    ) -> None:
        super().__init__(model, splits, layer, **kw)
        dirs = load_direction(directions)
        self.directions = dirs.reshape(-1, dirs.shape[-1]).to(self.splice.device)  # (k, d)
        k = self.directions.shape[0]
        self.offsets = torch.as_tensor(np.broadcast_to(offsets, (k,)).copy(), dtype=torch.float32)
        if not p > 0:
            raise UserError(f"p: must be > 0, got {p}")
        self.p = float(p)

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        acts = self.residual(out) @ self.directions.T  # (R, k)
        st = {"value": lp_combine(acts, self.offsets.to(acts.device), self.p)}
        for i in range(acts.shape[1]):
            st[f"feature{i}"] = acts[:, i]
        return st

    @classmethod
    def from_config(
        cls, section: LpFeaturesObjectiveConfig, ctx: BuildContext
    ) -> LpFeaturesObjective:
        from blackbox.errors import ConfigError

        o = section
        ctx.check_layer("objective.layer", o.layer)
        if o.unembed is not None:
            dirs = _unembedding(o.unembed, ctx)
        else:
            dirs = _file_direction(
                o.file, "objective.file", ctx, row=o.rows, matrix=True, layer=o.layer
            )
        k = dirs.reshape(-1, dirs.shape[-1]).shape[0]
        if isinstance(o.offsets, list) and len(o.offsets) not in (1, k):
            raise ConfigError(
                f"config: objective.offsets: {len(o.offsets)} values for {k} features"
            )
        return cls(
            ctx.model,
            _splits(o, ctx),
            o.layer,
            dirs,
            offsets=o.offsets,
            p=o.p,
            **_standardise_kw(o),
            **ctx.objective_kw(),
        )


def _splits(section: Documents, ctx: BuildContext) -> dict[str, Items]:
    """The documents of an objective's ``section`` laid out for the study's space."""
    from blackbox.evals.documents import layout

    lay = ctx.layout_kw(section)
    return {k: layout(ctx.tokenizer, v, **lay)[0] for k, v in ctx.documents(section).items()}


def _unembedding(words: Sequence[str], ctx: Any) -> torch.Tensor:
    """``(k, d)`` unembedding rows of the words' (first) tokens: the residual directions that
    write each word (the logit lens)."""
    from blackbox.errors import ConfigError

    out = ctx.model.get_output_embeddings().weight
    rows = []
    for w in words:
        ids = ctx.tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(
                f"config: objective.unembed: {w!r} is {len(ids)} tokens; give words that are one "
                "token (a leading space often makes one)"
            )
        rows.append(out[ids[0]].detach().float())
    return torch.stack(rows)


def _file_direction(
    path: str,
    field: str,
    ctx: Any,
    row: Any = None,
    matrix: bool = False,
    layer: int | None = None,
) -> torch.Tensor:
    """A direction ``(d,)`` (or rows ``(k, d)``) from a file or a sae-lens SAE directory,
    checked against the model's width and (an SAE's hook) ``layer`` (one-line
    :class:`~blackbox.errors.ConfigError` naming ``field``)."""
    from blackbox.errors import ConfigError
    from blackbox.models.layers import hidden_size

    if Path(path).is_dir():
        try:
            w, cfg = load_sae_decoder(Path(path))
        except ValueError as exc:
            raise ConfigError(f"config: {field}: {exc}") from None
        at = sae_layer(cfg)
        if layer is not None and at is not None and at != layer:
            raise ConfigError(
                f"config: objective.layer: {layer}, but the SAE in {path!r} reads the output of "
                f"layer {at} ({cfg.get('hook_name') or cfg.get('metadata', {}).get('hook_name')})"
            )
        if w.shape[1] != hidden_size(ctx.model):
            raise ConfigError(
                f"config: {field}: the SAE in {path!r} has d_in {w.shape[1]}; the model's width "
                f"is {hidden_size(ctx.model)}"
            )
        rows = [row] if isinstance(row, int) else list(row or [])
        if row is None or any(not 0 <= r < w.shape[0] for r in rows):
            raise ConfigError(
                f"config: {field}: give the feature index with "
                f"{'rows' if matrix else 'row'}: (0..{w.shape[0] - 1}) for the SAE in {path!r}"
            )
    elif not Path(path).is_file():
        raise ConfigError(f"config: {field}: {path!r} does not exist")
    try:
        t = load_direction(path, row)
    except Exception as exc:  # unpickling, safetensors and indexing errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(
            f"config: {field}: {path!r} cannot be read as a direction ({first})"
        ) from None
    d = hidden_size(ctx.model)
    ok = t.shape[-1] == d and (t.dim() == 1 or (matrix and t.dim() == 2))
    if not ok:
        want = f"(k, {d}) or ({d},)" if matrix else f"({d},) (pick a row of a matrix with row:)"
        raise ConfigError(
            f"config: {field}: {path!r} holds shape {tuple(t.shape)}; expected {want}"
        )
    return t
