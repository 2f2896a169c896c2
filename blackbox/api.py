"""The small vocabulary every part of the suite speaks: capabilities, interventions, problems.

A *search space* maps box rows to candidates and turns a batch of candidates into an
*intervention*; an *objective* scores an intervention on its own documents; a *strategy* asks
and tells box rows.  What each can do is declared on its class as traits, and the config check
(:mod:`blackbox.config.rules`) derives from them which combinations may run.

Two kinds of intervention cover every model-facing space (a third, :class:`PointIntervention`,
hands box points to closed-form objectives):

- :class:`HookIntervention` (steering): forward hooks add a per-candidate vector to the residual
  stream; the objective runs its documents unchanged, one block of rows per candidate.
- :class:`PromptIntervention` (token and soft prompts): ``n`` embedding rows spliced into each
  document where the space's placement says; token prompts also carry their ids (for fluency
  and one-hot gradients).

:class:`Problem` binds a space to an objective: what the runner and gradient-guided strategies
call.  This module imports nothing else of the suite.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

HOOKS = "hooks"
PROMPT = "prompt"
POINT = "point"
InterventionKind = Literal["hooks", "prompt", "point"]


@dataclass(frozen=True)
class SpaceTraits:
    """What a search space is.

    Attributes:
        intervention: ``"hooks"`` or ``"prompt"``: how its candidates change the model.
        discrete: its coordinates are categorical ids (token ids: no order, no distance).
        differentiable: gradients of an objective with respect to a candidate exist (prompt
            embeddings; one-hot inputs for token ids).
        vocabulary: candidates are token ids from an allowed vocabulary (token proposals work).
        continuous: every coordinate is real-valued (gradient steps on the box itself work).
    """

    intervention: InterventionKind
    discrete: bool = False
    differentiable: bool = False
    vocabulary: bool = False
    continuous: bool = False


@dataclass(frozen=True)
class ObjectiveTraits:
    """What an objective can do.

    Attributes:
        interventions: the intervention kinds it scores.
        gradients: it can differentiate its value with respect to a prompt's embeddings.
        per_document: it scores documents one by one and averages (so it can race candidates
            on growing slices of its documents).
        needs_task: it scores the study's ``task:`` (an lm-eval task).
        needs_documents_for_hooks: a hook intervention needs documents of its own (steering
            has no prompt: the objective must be measured over a prompt set).
        needs_token_ids: it reads the prompt's token ids (fluency of a token prompt).
    """

    interventions: frozenset[str] = frozenset({HOOKS, PROMPT})
    gradients: bool = True
    per_document: bool = True
    needs_task: bool = False
    needs_documents_for_hooks: bool = False
    needs_token_ids: bool = False


@dataclass(frozen=True)
class StrategyTraits:
    """What a strategy needs.

    Attributes:
        needs_gradients: it calls the objective's gradient oracle.
        needs_vocabulary: it proposes token ids (needs a token space).
        needs_continuous: it takes gradient steps on the box (needs a continuous space).
        ordinal: it moves along ordered axes (PSO, CMA-ES): meaningless on categorical ids.
        population: it asks a whole generation at once.
    """

    needs_gradients: bool = False
    needs_vocabulary: bool = False
    needs_continuous: bool = False
    ordinal: bool = False
    population: bool = True


ApplyHooks = Callable[[torch.nn.Module, torch.Tensor, int], AbstractContextManager[Any]]
"""``apply(model, rows, repeat)``: install candidate ``rows[b]``'s hooks on batch row ``b``."""


@dataclass
class HookIntervention:
    """Forward hooks for a batch of ``C`` candidates (activation steering).

    Attributes:
        apply: ``apply(model, rows, repeat)`` context manager; ``rows`` ``(B,)`` long tensor
            holds the candidate index of each batch row (see
            :func:`blackbox.forward.hooks.add_per_row` for ``repeat``).
        lowest_layer: per candidate, the lowest decoder layer it changes (``None``: none), so
            the layers below run once for every candidate.
        keys: per candidate, a hashable identity (identical candidates are scored once).
        candidates: the decoded candidates (for reference implementations and reports).
    """

    apply: ApplyHooks
    lowest_layer: list[int | None]
    keys: list[Hashable]
    candidates: list[Any] = field(default_factory=list)
    kind: ClassVar[str] = HOOKS

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, idx: Sequence[int]) -> HookIntervention:
        """The intervention of candidates ``idx`` (hooks re-indexed)."""
        idx = list(idx)
        index = torch.tensor(idx, dtype=torch.long)
        parent = self.apply

        def apply(model: torch.nn.Module, rows: torch.Tensor, repeat: int = 1) -> Any:
            return parent(model, index[rows.to("cpu", torch.long)], repeat)

        return HookIntervention(
            apply,
            [self.lowest_layer[i] for i in idx],
            [self.keys[i] for i in idx],
            [self.candidates[i] for i in idx] if self.candidates else [],
        )


@dataclass
class PromptIntervention:
    """Prompts spliced into documents for a batch of ``C`` candidates (token or soft prompts).

    A prompt is either token ids (embedded by the model) or embeddings; lengths may differ
    between candidates (a hand-written baseline, an empty prompt).

    Attributes:
        embeds: per candidate, ``(n_c, d)`` float embeddings, or ``None`` where ``ids`` say it.
        ids: per candidate, its ``n_c`` token ids, or ``None`` (a soft prompt).
        valid: per candidate, False if it must not be scored (a token prompt that does not
            survive retokenisation or holds a banned string): value NaN, no cost.
        keys: per candidate, a hashable identity (identical candidates are scored once).
    """

    embeds: list[torch.Tensor | None]
    ids: list[tuple[int, ...] | None]
    valid: list[bool]
    keys: list[Hashable]
    kind: ClassVar[str] = PROMPT

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def is_tokens(self) -> bool:
        """Every candidate is a token prompt (has ids)."""
        return all(i is not None for i in self.ids)

    def length(self, c: int) -> int:
        ids, emb = self.ids[c], self.embeds[c]
        return len(ids) if ids is not None else int(emb.shape[0])  # type: ignore[union-attr]

    def groups(self) -> Iterator[list[int]]:
        """Valid candidates grouped by prompt length and kind (ids vs embeddings)."""
        out: dict[tuple[int, bool], list[int]] = {}
        for c in range(len(self)):
            if self.valid[c]:
                out.setdefault((self.length(c), self.ids[c] is not None), []).append(c)
        yield from out.values()

    def subset(self, idx: Sequence[int]) -> PromptIntervention:
        idx = list(idx)
        return PromptIntervention(
            [self.embeds[i] for i in idx],
            [self.ids[i] for i in idx],
            [self.valid[i] for i in idx],
            [self.keys[i] for i in idx],
        )

    @classmethod
    def of_ids(
        cls, ids: Sequence[Sequence[int]], valid: Sequence[bool] | None = None
    ) -> PromptIntervention:
        """Token prompts from id sequences (all valid unless ``valid`` says otherwise)."""
        rows = [tuple(int(t) for t in r) for r in ids]
        ok = [True] * len(rows) if valid is None else [bool(v) for v in valid]
        return cls([None] * len(rows), list(rows), ok, [("ids", r) for r in rows])

    @classmethod
    def of_embeddings(cls, embeds: Sequence[torch.Tensor]) -> PromptIntervention:
        """Soft prompts from ``(n, d)`` embeddings (keyed by their bytes)."""
        rows = [e.detach().float().cpu() for e in embeds]
        keys: list[Hashable] = [("emb", tuple(r.shape), r.numpy().tobytes()) for r in rows]
        return cls(list(rows), [None] * len(rows), [True] * len(rows), keys)


@dataclass
class PointIntervention:
    """Box points handed as they are (closed-form objectives, conformance tests, tuning).

    Attributes:
        points: ``(C, dim)`` the candidates' coordinates.
        keys: per candidate, a hashable identity.
    """

    points: np.ndarray
    keys: list[Hashable]
    kind: ClassVar[str] = POINT

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, idx: Sequence[int]) -> PointIntervention:
        idx = list(idx)
        return PointIntervention(self.points[idx], [self.keys[i] for i in idx])


Intervention = HookIntervention | PromptIntervention | PointIntervention


@dataclass
class Evaluation:
    """Scores of a batch of ``n`` candidates.

    Attributes:
        values: ``(n,)`` primary objective (higher is better); NaN marks a failed evaluation.
        metrics: per candidate, every metric the objective measured (flat, JSON-friendly).
        extra: ``(n, k)`` secondary objectives (for example a token prompt's fluency), or
            ``None``.
        cost: forward-pass equivalents spent: one per document scored per candidate (a
            backward pass counts two more); repeats served from a cache cost 0.
        per_doc: per candidate, the primary value of each document ``(D,)`` in the split's
            order, whose mean is ``values[i]``; ``None`` for a candidate not scored and for
            objectives whose value is not a mean over documents (paired statistics and racing
            need it).
    """

    values: np.ndarray
    metrics: list[dict[str, Any]] = field(default_factory=list)
    extra: np.ndarray | None = None
    cost: float = 0.0
    per_doc: list[np.ndarray | None] | None = None


PER_DOC = "value@docs"
"""Key of the ``(C, D)`` per-document values in an objective's ``stats`` dict."""


@dataclass
class TokenGradients:
    """Gradients of ``value - lambda * xentropy`` for ``B`` token prompts of ``n`` tokens.

    Attributes:
        grad: ``(B, n, V)`` d(value - lambda * xentropy) / d(one-hot).
        values: ``(B,)`` values.
        xentropy: ``(B,)`` self cross-entropies of the prompts.
        next_logits: ``(B, n, V)`` logits predicting each prompt token (for logit-guided
            proposals).
        cost: forward-pass equivalents spent (3 per document and prompt).
    """

    grad: np.ndarray
    values: np.ndarray
    xentropy: np.ndarray
    next_logits: np.ndarray
    cost: float


class Problem:
    """A search space bound to an objective: the calls the runner and strategies make.

    Args:
        space: the search space (``decode``, ``intervention``, ...).
        objective: the objective (``evaluate(intervention, split, limit)``, ...).
    """

    def __init__(self, space: Any, objective: Any) -> None:
        self.space, self.objective = space, objective

    def evaluate(
        self, candidates: Sequence[Any], split: str = "search", limit: int | None = None
    ) -> Evaluation:
        """Score decoded ``candidates`` on ``split`` (its first ``limit`` documents)."""
        return self.objective.evaluate(self.space.intervention(candidates), split, limit)

    def n_examples(self, split: str = "search") -> int:
        return int(self.objective.n_examples(split))

    # -- gradient oracles (gradient-guided strategies and finishing steps) -------------------
    def token_gradients(
        self, ids: np.ndarray, fluency_weights: np.ndarray | float = 0.0
    ) -> TokenGradients:
        """One-hot gradients of token prompts ``ids`` ``(B, n)`` on the search split."""
        return self.objective.token_gradients(ids, fluency_weights)

    def recent_xentropy(self, ids: np.ndarray) -> np.ndarray:
        """``(n,)`` fluency of recently scored token prompts (NaN where unknown)."""
        lookup = getattr(self.objective, "recent_xentropy", None)
        return lookup(ids) if lookup is not None else np.full(len(ids), np.nan)

    def loss(
        self, embeds: torch.Tensor, split: str = "search", idx: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``(C,)`` minus the value of prompts ``embeds`` ``(C, n, d)`` (differentiable)."""
        return self.objective.loss(embeds, split, idx)

    def gradient_cost(self, idx: Sequence[int] | None = None, split: str = "search") -> float:
        """Forward-pass equivalents of one gradient over documents ``idx`` (all: ``None``)."""
        return float(self.objective.gradient_cost(idx, split))
