"""Internal-activation objectives for dreaming (Fluent Dreaming, Thompson et al. 2024).

All read the last position of ``[prefix | tokens | suffix]``:

* :class:`NeuronObjective`: an MLP neuron, the input of ``down_proj`` (``act(gate) * up``).
* :class:`ResidualDirectionObjective`: alignment of the residual stream after a decoder layer
  with a direction, normalised as ``<h, v> / (||h|| ||v||)`` (our reading of the paper's eq. 4);
  after :meth:`~ResidualDirectionObjective.calibrate` on random prompts each candidate also
  reports ``z = (f - mu) / sigma`` (eq. 5).
* :class:`FeatureDirectionObjective`: ``<h, v> + bias`` with ``v`` loaded from a tensor file
  (an SAE decoder row, loaded with ``torch.load(weights_only=True)``).
* :class:`LpFeaturesObjective`: ``(sum_i relu(a_i + offset_i)^p)^(1/p)`` over several feature
  dot products (``p < 1`` rewards activating all of them together).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from blackbox.evals.token_objective import TokenObjective
from blackbox.forward.token_forward import ForwardOut, decoder_layers
from blackbox.search_spaces.tokens import TokenContext


def load_direction(
    source: str | Path | torch.Tensor | np.ndarray, row: int | None = None
) -> torch.Tensor:
    """``(d,)`` or ``(k, d)`` float direction(s) from a tensor, array or ``.pt`` file.

    A file is read with ``torch.load(weights_only=True)``; a dict must hold one tensor (or a
    ``"W_dec"``/``"direction"`` entry).  ``row`` picks rows of a 2-D matrix (an SAE decoder).
    """
    if isinstance(source, (str, Path)):
        obj = torch.load(source, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            for key in ("direction", "W_dec", "w_dec"):
                if key in obj:
                    obj = obj[key]
                    break
            else:
                if len(obj) != 1:
                    raise ValueError(f"{source}: dict with keys {sorted(obj)}; name one tensor")
                obj = next(iter(obj.values()))
        source = obj
    t = torch.as_tensor(source).float()
    if row is not None:
        t = t[row]
    return t


def lp_combine(acts: torch.Tensor, offsets: torch.Tensor, p: float) -> torch.Tensor:
    """``(B,)`` ``(sum_i relu(a_i + o_i)^p)^(1/p)`` of ``acts`` ``(B, k)`` (pure)."""
    r = torch.relu(acts + offsets)  # (B, k)
    pos = r > 0
    terms = torch.where(pos, torch.where(pos, r, torch.ones_like(r)).pow(p), torch.zeros_like(r))
    total = terms.sum(-1)  # (B,)
    alive = total > 0
    return torch.where(alive, torch.where(alive, total, torch.ones_like(total)).pow(1.0 / p), total)


class _LastPosition(TokenObjective):
    """Reads the residual stream after ``layer`` at the last position."""

    needs_hidden: ClassVar[bool] = True

    def __init__(
        self, model: torch.nn.Module, layer: int, context: TokenContext | None = None, **kw: Any
    ) -> None:
        super().__init__(model, context, **kw)
        self.layer = int(layer)

    def residual(self, out: ForwardOut) -> torch.Tensor:
        """``(B, d)`` residual stream after decoder layer ``layer`` at the last position."""
        return out.hidden_states[self.layer + 1][:, -1].float()


class NeuronObjective(TokenObjective):
    """Activation of MLP neuron ``index`` in decoder layer ``layer`` at the last position."""

    name: ClassVar[str] = "neuron"
    metric = "activation"

    def __init__(
        self,
        model: torch.nn.Module,
        layer: int,
        index: int,
        context: TokenContext | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, context, **kw)
        self.layer, self.index = int(layer), int(index)
        self._down = decoder_layers(self.model)[self.layer].mlp.down_proj

    def capture_modules(self) -> dict[str, torch.nn.Module]:
        return {"mlp": self._down}

    def score(self, out: ForwardOut) -> torch.Tensor:
        return out.captured["mlp"][:, -1, self.index].float()  # (B,)


class ResidualDirectionObjective(_LastPosition):
    """Cosine alignment of the residual after ``layer`` with ``direction`` ``(d,)`` (eq. 4).

    Args:
        model: causal LM.
        layer: decoder layer whose output is read.
        direction: ``(d,)`` tensor, array or ``.pt`` file.
        standardise: once calibrated, make the value the z-score itself (eq. 5), so that
            fluency weights have the same meaning for every direction.
        context, **kw: as :class:`TokenObjective`.
    """

    name: ClassVar[str] = "residual_direction"
    metric = "alignment"

    def __init__(
        self,
        model: torch.nn.Module,
        layer: int,
        direction: Any,
        context: TokenContext | None = None,
        standardise: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(model, layer, context, **kw)
        v = load_direction(direction).to(self.forward.device)
        self.direction = v / v.norm()  # (d,)
        self.standardise = bool(standardise)
        self.mu: float | None = None
        self.sigma: float | None = None

    def alignment(self, out: ForwardOut) -> torch.Tensor:
        """``(B,)`` ``<h, v> / (||h|| ||v||)`` at the last position."""
        h = self.residual(out)  # (B, d)
        return h @ self.direction / h.norm(dim=-1).clamp_min(1e-12)

    def score(self, out: ForwardOut) -> torch.Tensor:
        a = self.alignment(out)
        if self.standardise and self.mu is not None and self.sigma:
            return (a - self.mu) / self.sigma
        return a

    def calibrate(self, random_ids: np.ndarray) -> float:
        """Fit eq. 5's mean and std on random prompts ``(R, n)``; returns the cost spent."""
        self.mu = self.sigma = None
        values, _ = self._score_ids(np.asarray(random_ids))
        self.set_calibration(values)
        return float(len(values))

    def set_calibration(self, random_values: np.ndarray) -> None:
        """Set eq. 5's mean and std from alignments of random prompts ``(R,)``."""
        self.mu = float(np.mean(random_values))
        self.sigma = float(np.std(random_values, ddof=1))

    def z_score(self, alignment: np.ndarray) -> np.ndarray:
        """``(f - mu) / sigma`` (eq. 5); needs :meth:`calibrate` first."""
        if self.mu is None or not self.sigma:
            raise RuntimeError("residual_direction: call calibrate() before z_score()")
        return (np.asarray(alignment) - self.mu) / self.sigma

    def metrics_of(self, values: np.ndarray) -> list[dict[str, Any]]:
        if self.mu is None or not self.sigma:
            return [{} for _ in values]
        if self.standardise:
            return [{"z": float(v), "cosine": float(v * self.sigma + self.mu)} for v in values]
        return [{"z": float(z)} for z in self.z_score(values)]


class FeatureDirectionObjective(_LastPosition):
    """``<h, v> + bias`` for a direction loaded from ``source`` (an SAE decoder row)."""

    name: ClassVar[str] = "feature_direction"
    metric = "feature"

    def __init__(
        self,
        model: torch.nn.Module,
        layer: int,
        source: Any,
        row: int | None = None,
        bias: float = 0.0,
        context: TokenContext | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, layer, context, **kw)
        self.direction = load_direction(source, row).to(self.forward.device)  # (d,)
        self.bias = float(bias)

    def score(self, out: ForwardOut) -> torch.Tensor:
        return self.residual(out) @ self.direction + self.bias


class LpFeaturesObjective(_LastPosition):
    """L_p (p < 1) combination of several feature dot products (the two-feature objective)."""

    name: ClassVar[str] = "lp_features"
    metric = "lp"

    def __init__(
        self,
        model: torch.nn.Module,
        layer: int,
        source: Any,
        rows: Sequence[int] | None = None,
        offsets: Sequence[float] | float = 0.0,
        p: float = 0.5,
        context: TokenContext | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, layer, context, **kw)
        dirs = load_direction(source)
        dirs = dirs[list(rows)] if rows is not None else dirs
        self.directions = dirs.reshape(-1, dirs.shape[-1]).to(self.forward.device)  # (k, d)
        k = self.directions.shape[0]
        self.offsets = torch.as_tensor(np.broadcast_to(offsets, (k,)).copy(), dtype=torch.float32)
        if not 0 < p:
            raise ValueError(f"p: must be > 0, got {p}")
        self.p = float(p)

    def score(self, out: ForwardOut) -> torch.Tensor:
        acts = self.residual(out) @ self.directions.T  # (B, k)
        return lp_combine(acts, self.offsets.to(acts.device), self.p)
