"""Soft prompts: ``n`` free vectors of the model's embedding width, searched as ``p = A z + p0``.

A candidate is a :class:`SoftPrompt`, ``(n, d)`` embeddings.  The search box is over ``z``:

- ``full`` mode (``subspace_dim=None``): ``z`` has ``n * d`` coordinates and ``A = sigma I``,
  so one unit of ``z`` moves one embedding coordinate by ``sigma``, the standard deviation of
  the embedding matrix's entries (the gradient baseline, Adam, works here);
- subspace mode (``subspace_dim=k``, Black-Box Tuning): ``A`` is a fixed ``(n * d, k)``
  Gaussian matrix drawn from ``seed`` and scaled by ``sigma / sqrt(k)``, so ``z ~ N(0, I)``
  gives moves of the size of the embeddings' own spread; CMA-ES, PSO and random search work
  on these ``k`` coordinates.

``p0`` is the initial soft prompt: rows of random vocabulary embeddings (``init="random"``,
seeded) or the embeddings of a text's tokens (``init="text"``, cycled or cut to ``n``).  Where
the vectors go in the prompt is the objective's business (``evals.soft_prompt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from blackbox.api import PromptIntervention, SpaceTraits
from blackbox.errors import UserError
from blackbox.search_spaces.base import SearchSpace
from blackbox.search_spaces.soft_prompt.config import SoftPromptSpaceConfig
from blackbox.search_spaces.soft_prompt.finishing import SoftFinisher
from blackbox.strategies.base import Box

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


@dataclass
class SoftPrompt:
    """``n`` soft-prompt vectors.

    Attributes:
        embeddings: ``(n, d)`` float tensor (CPU, float32).
        ids: the token ids these are the embeddings of, for projected or hand-written prompts.
        label: a short name for reports ("soft", "projected", ...).
    """

    embeddings: torch.Tensor
    ids: tuple[int, ...] | None = None
    label: str = "soft"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])


def init_embeddings(
    embedding: torch.Tensor,
    n: int,
    init: str = "random",
    seed: int = 0,
    text_ids: Sequence[int] | None = None,
    allowed: Sequence[int] | None = None,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(n, d)`` initial vectors and the token ids they were taken from.

    Args:
        embedding: ``(V, d)`` input embedding matrix.
        n: number of vectors.
        init: ``"random"`` (rows of random tokens from ``allowed``) or ``"text"``.
        seed: seed of the random rows.
        text_ids: token ids of the initial text (``init="text"``), cycled or cut to ``n``.
        allowed: token ids random rows may come from (default: every row).
    """
    if init == "text":
        if not text_ids:
            raise UserError("init 'text' needs a non-empty init_text")
        ids = tuple(int(text_ids[i % len(text_ids)]) for i in range(n))
    elif init == "random":
        pool = np.arange(embedding.shape[0]) if allowed is None else np.asarray(allowed)
        ids = tuple(int(i) for i in np.random.default_rng(seed).choice(pool, n, replace=False))
    else:
        raise UserError(f"init {init!r}: allowed 'random' or 'text'")
    rows = embedding.detach()[torch.tensor(ids)].float().cpu().clone()
    return rows, ids


def check_subspace(sc: Any, width: int) -> None:
    """One line if ``sc.subspace_dim`` exceeds the soft prompt's ``n_tokens x width``."""
    from blackbox.errors import ConfigError

    if sc.subspace_dim is not None and sc.subspace_dim > sc.n_tokens * width:
        raise ConfigError(
            f"config: space.subspace_dim: {sc.subspace_dim} is larger than the soft prompt "
            f"itself ({sc.n_tokens} x {width}); use null for the full space"
        )


class SoftPromptSpace(SearchSpace[SoftPrompt]):
    """The box over ``z`` and the map ``p = A z + p0``.

    Args:
        p0: ``(n, d)`` initial soft prompt.
        sigma: embedding scale (std of the embedding matrix's entries).
        subspace_dim: ``k`` for the random subspace; ``None`` for the full ``n * d``.
        bound: box half-width in ``z`` units.
        seed: seed of ``A``.
        init_ids: token ids ``p0`` came from (reported only).
    """

    traits = SpaceTraits("prompt", differentiable=True, continuous=True)
    noun = "a soft-prompt space (continuous embeddings)"
    config = SoftPromptSpaceConfig
    finisher = SoftFinisher

    def __init__(
        self,
        p0: torch.Tensor,
        sigma: float,
        subspace_dim: int | None = None,
        bound: float = 5.0,
        seed: int = 0,
        init_ids: Sequence[int] | None = None,
    ) -> None:
        if p0.ndim != 2:
            raise ValueError(f"p0 must be (n, d), got {tuple(p0.shape)}")
        if subspace_dim is not None and subspace_dim < 1:
            raise UserError(f"subspace_dim must be >= 1 or null, got {subspace_dim}")
        self.p0 = p0.detach().float().cpu()
        self.n, self.d = (int(s) for s in p0.shape)
        self.sigma = float(sigma)
        self.subspace_dim = subspace_dim
        self.bound = float(bound)
        self.init_ids = tuple(init_ids) if init_ids is not None else None
        self._baselines: dict[str, SoftPrompt] = {}
        self.A: torch.Tensor | None = None
        if subspace_dim is not None:
            g = torch.Generator().manual_seed(int(seed))
            a = torch.randn(self.n * self.d, subspace_dim, generator=g)
            self.A = a * (self.sigma / subspace_dim**0.5)  # (n*d, k)
        k = self.n * self.d if subspace_dim is None else subspace_dim
        self._box = Box(
            np.full(k, -self.bound),
            np.full(k, self.bound),
            np.zeros(k, dtype=bool),
            names=tuple(f"z{i}" for i in range(k)),
        )

    @property
    def box(self) -> Box:
        return self._box

    def embeddings(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., k)`` z -> ``(..., n, d)`` embeddings (differentiable)."""
        z = z.float()
        if self.A is None:
            flat = z * self.sigma
        else:
            flat = z @ self.A.to(z.device).T
        return flat.reshape(*z.shape[:-1], self.n, self.d) + self.p0.to(z.device)

    def decode(self, x: np.ndarray) -> list[SoftPrompt]:
        z = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return [SoftPrompt(e) for e in self.embeddings(z)]

    def encode(self, candidates: Sequence[SoftPrompt]) -> np.ndarray:
        """Least-squares ``z`` of each candidate (exact in full mode and for decoded ones)."""
        if any(tuple(c.embeddings.shape) != (self.n, self.d) for c in candidates):
            raise ValueError(f"soft_prompt: a candidate is not ({self.n}, {self.d})")
        delta = torch.stack([c.embeddings.float().cpu() - self.p0 for c in candidates])
        flat = delta.reshape(len(candidates), -1)  # (C, n*d)
        if self.A is None:
            z = flat / self.sigma
        else:
            z = torch.linalg.lstsq(self.A, flat.T).solution.T  # (C, k)
        return np.clip(z.numpy().astype(np.float64), -self.bound, self.bound)

    @classmethod
    def from_config(cls, section: SoftPromptSpaceConfig, ctx: BuildContext) -> SoftPromptSpace:
        """``p0`` from random vocabulary rows or a text (seeded), ``sigma`` the spread of the
        allowed rows; baselines: a hand-written text in the prompt's place and no prompt."""
        from blackbox.errors import ConfigError

        sc, tok = section, ctx.tokenizer
        embed = ctx.model.get_input_embeddings()
        vocab = int(embed.weight.shape[0])
        special = set(getattr(tok, "all_special_ids", []) or [])
        allowed = [i for i in range(min(len(tok), vocab)) if i not in special]
        text_ids = tok.encode(sc.init_text, add_special_tokens=False) if sc.init_text else None
        check_subspace(sc, int(embed.weight.shape[1]))
        try:
            _, ids = init_embeddings(
                embed.weight, sc.n_tokens, sc.init, ctx.seed, text_ids, allowed
            )
        except ValueError as exc:
            raise ConfigError(f"config: space.init: {exc}") from None
        with torch.no_grad():
            p0 = embed(torch.tensor(ids, device=embed.weight.device)).float().cpu()
            sigma = float(embed(torch.tensor(allowed, device=embed.weight.device)).float().std())
        space = cls(p0, sigma, sc.subspace_dim, sc.bound, ctx.seed, init_ids=ids)
        with torch.no_grad():
            for label, text in (("baseline", sc.baseline), ("no prompt", "")):
                if text is None:
                    continue
                b_ids = tuple(tok.encode(text, add_special_tokens=False)) if text else ()
                rows = torch.tensor(b_ids, dtype=torch.long, device=embed.weight.device)
                emb = embed(rows).float().cpu() if b_ids else torch.zeros(0, space.d)
                space._baselines[label] = SoftPrompt(emb, b_ids, label)
        return space

    def baselines(self) -> dict[str, SoftPrompt]:
        """Reference prompts scored before the search (hand-written text, no prompt)."""
        return dict(self._baselines)

    def intervention(self, candidates: Sequence[SoftPrompt]) -> PromptIntervention:
        """The candidates' embeddings, to splice into the objective's documents."""
        return PromptIntervention.of_embeddings([c.embeddings for c in candidates])

    def describe(self, candidate: SoftPrompt) -> dict[str, Any]:
        e = candidate.embeddings
        out: dict[str, Any] = {
            "label": candidate.label,
            "mean_norm": float(e.norm(dim=-1).mean()) if e.shape[0] else 0.0,
            "distance_from_init": float((e - self.p0).norm()) if e.shape == self.p0.shape else None,
        }
        if candidate.ids is not None:
            out["ids"] = list(candidate.ids)
        return out
