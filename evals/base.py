"""The objective interface: score an intervention on named splits of the objective's documents.

:class:`Objective` is what the runner sees: ``evaluate(intervention, split, limit)`` returns one
value per candidate (higher is better) with metrics and cost.  The base class serves repeats
from a cache (identical candidates cost nothing), gives rejected token prompts NaN without a
forward pass, and leaves the scoring of the rest to :meth:`Objective._score`.

:class:`Differentiable` adds what gradient-guided strategies and finishing steps need from an
objective that can differentiate its value with respect to a prompt's embeddings: Adam's loss,
one-hot token gradients (``value - lambda * xentropy``, the EPO/GCG oracle) and their cost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from blackbox.api import (
    PER_DOC,
    Evaluation,
    HookIntervention,
    Intervention,
    ObjectiveTraits,
    PromptIntervention,
    TokenGradients,
)
from blackbox.errors import UserError
from blackbox.registry import placeholder

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext

BACKWARD_COST = 2.0
"""A backward pass costs two forward-pass equivalents."""
RECENT_XENTROPY = 8192
"""Token prompts whose fluency is kept for :meth:`Differentiable.recent_xentropy`."""


class Objective(ABC):
    """Scores interventions on named splits (``search``, ``heldout``, ...).

    Subclasses set ``name`` (by registration), ``traits`` and ``metric``, and implement
    :meth:`_score` and :meth:`n_examples`; a registered objective (``objective.type``) also
    defines :attr:`config` and :meth:`from_config`, and may refine :meth:`check_config` and
    :meth:`prompt_bans`.
    """

    name: ClassVar[str] = ""
    traits: ClassVar[ObjectiveTraits] = ObjectiveTraits()
    config: ClassVar[Any] = None
    """The objective's config section: a :class:`~blackbox.sections.Strict` class with a
    ``type: Literal["<its registered name>"]`` field.  The study schema's ``objective:`` is the
    union of the registered objectives' sections (required of a registered objective)."""
    metric: str = "score"
    extra_names: tuple[str, ...] = ()
    extra_directions: tuple[str, ...] = ()

    @classmethod
    @placeholder
    def from_config(cls, section: Any, ctx: BuildContext) -> Objective:
        """Build the objective of a study (abstract for registered objectives: ``OBJECTIVES``
        refuses a class without its own).  Built before the space.

        Args:
            section: the objective's own config section (``cfg.objective``, an instance of
                :attr:`config`, such as ``LogitObjectiveConfig``).
            ctx: the :class:`~blackbox.study.context.BuildContext`: the model, tokenizer,
                lm-eval task and ``HFLM``, the seed, the ``task:`` and ``scoring:`` sections,
                and what the space decides about a prompt (``ctx.space_traits``,
                ``ctx.has_prompt``, ``ctx.placement``, ``ctx.layout_kw(section)``).  An
                objective reads nothing else of the study config.

        Raises:
            ConfigError: one line naming the field, for what only the model can refuse.
        """
        raise NotImplementedError(f"{cls.__name__} is not built from a config section")

    @classmethod
    def check_config(cls, section: Any, placement: str | None) -> None:
        """Refuse, before any model loads, what this objective cannot do with its section and
        the study's prompt (one-line ``ConfigError``); nothing by default.

        Args:
            section: the objective's own config section.
            placement: where the study's space puts its prompt in a document (``None``: the
                space has no prompt: steering).
        """
        return None

    @classmethod
    def prompt_bans(cls, section: Any) -> tuple[str, ...]:
        """Strings a searched prompt may not contain under this objective configured by
        ``section`` (a token space bans them from its vocabulary and its candidates, see
        ``ctx.prompt_bans``); none by default.  A classmethod: ``blackbox export`` rebuilds the
        space without building the objective."""
        return ()

    @property
    def per_document(self) -> bool:
        """The value is a mean over documents and evaluations carry ``per_doc`` (racing and
        paired statistics need it): ``traits.per_document`` unless the instance knows better."""
        return self.traits.per_document

    def __init__(self) -> None:
        self.extra_names = ()
        self.extra_directions = ()
        self._cache: dict[tuple[str, int | None, Hashable], tuple[float, dict, Any, Any]] = {}
        self.cache_hits = 0

    @abstractmethod
    def _score(self, iv: Intervention, split: str, limit: Docs) -> Evaluation:
        """Score every candidate of ``iv`` (all valid, all new) on ``split`` (documents
        ``limit``, see :data:`Docs`)."""

    @abstractmethod
    def n_examples(self, split: str = "search") -> int:
        """Documents of a split (what ``limit`` and minibatch indices count)."""

    @property
    def splits(self) -> list[str]:
        return list(getattr(self, "_splits", {}) or ["search"])

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise UserError(f"split {split!r} is not one of {sorted(self.splits)}")

    def reset_cache(self, keep: Sequence[Hashable] = ()) -> None:
        """Forget repeats (a new run pays for its own evaluations), except keys in ``keep``."""
        kept = set(keep)
        for k in list(self._cache):
            if k[2] not in kept:
                del self._cache[k]
        self.cache_hits = 0

    def evaluate(self, iv: Intervention, split: str = "search", limit: Docs = None) -> Evaluation:
        """Score the ``n`` candidates of ``iv`` on ``split`` (its first ``limit`` documents, or
        the documents ``[start, stop)`` when ``limit`` is a pair).

        Returns:
            values ``(n,)`` (NaN for rejected token prompts), per-candidate metrics (with
            ``cache_hit`` and ``rejected``), ``extra`` ``(n, k)`` secondary objectives and the
            forward-pass equivalents spent (repeats and rejected candidates cost 0).
        """
        self.check_split(split)
        n = len(iv)
        valid = list(getattr(iv, "valid", [True] * n))
        keys = [(split, limit, k) for k in iv.keys]
        todo: list[int] = []
        first: dict[Hashable, int] = {}
        for i in range(n):
            if valid[i] and keys[i] not in self._cache and keys[i] not in first:
                first[keys[i]] = i
                todo.append(i)
        cost = 0.0
        if todo:
            ev = self._score(iv.subset(todo), split, limit)
            cost = float(ev.cost)
            for j, i in enumerate(todo):
                extra = None if ev.extra is None else np.asarray(ev.extra[j], dtype=float)
                docs = None if ev.per_doc is None else ev.per_doc[j]
                self._cache[keys[i]] = (float(ev.values[j]), dict(ev.metrics[j]), extra, docs)
        values = np.full(n, np.nan)
        k_extra = len(self.extra_names)
        extra = np.full((n, k_extra), np.nan) if k_extra else None
        metrics: list[dict[str, Any]] = []
        per_doc: list[np.ndarray | None] = [None] * n
        fresh = set(todo)
        for i in range(n):
            if not valid[i]:
                metrics.append({"rejected": True, "cache_hit": False})
                continue
            value, m, e, per_doc[i] = self._cache[keys[i]]
            hit = i not in fresh
            self.cache_hits += int(hit)
            values[i] = value
            metrics.append({**m, "cache_hit": hit})
            if extra is not None and e is not None:
                extra[i] = e
        return Evaluation(values=values, metrics=metrics, extra=extra, cost=cost, per_doc=per_doc)


Docs = int | tuple[int, int] | None
"""Which documents of a split to score: all (``None``), the first ``k`` (an int), or the
documents ``[start, stop)`` (a pair: racing scores a split a slice at a time)."""


def doc_range(limit: Docs, n: int) -> tuple[int, int]:
    """``(start, stop)`` of ``limit`` in a split of ``n`` documents."""
    if limit is None:
        return 0, n
    if isinstance(limit, tuple):
        start, stop = int(limit[0]), min(int(limit[1]), n)
        if not 0 <= start < stop:
            raise ValueError(f"documents [{start}, {stop}) of a split of {n}")
        return start, stop
    return 0, min(int(limit), n)


def prompt_xentropy(
    next_logits: torch.Tensor, tokens: torch.Tensor, first: torch.Tensor | None = None
) -> torch.Tensor:
    """``(R,)`` mean cross-entropy of a prompt's tokens under the model (self-fluency).

    Args:
        next_logits: ``(R, n, V)``; position ``j`` holds the logits predicting token ``j``.
        tokens: ``(R, n)`` ids, or a one-hot ``(R, n, V)`` (differentiable).
        first: ``(R,)`` bool, whether token 0 is predicted (something precedes it); default all.
    """
    r, n = tokens.shape[:2]
    if n == 0:
        return torch.zeros(r, device=tokens.device)
    logp = F.log_softmax(next_logits.float(), dim=-1)  # (R, n, V)
    if tokens.dim() == 3:
        nll = -(logp * tokens.float()).sum(-1)  # (R, n)
    else:
        nll = -logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (R, n)
    w = torch.ones_like(nll)
    if first is not None:
        w[:, 0] = first.to(w.dtype)
    return (nll * w).sum(1) / w.sum(1).clamp(min=1.0)


class Differentiable(Objective):
    """An objective whose value is differentiable in a prompt's embeddings.

    Subclasses implement :meth:`stats`: mean statistics ``{name: (C,)}`` of ``C`` prompts over
    documents ``idx`` of a split, ``"value"`` first (and ``"xentropy"`` when ``tokens`` are
    given).  Everything gradient-guided builds on it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._recent: OrderedDict[tuple[int, ...], float] = OrderedDict()

    @abstractmethod
    def stats(
        self,
        split: str,
        idx: Sequence[int] | None = None,
        prompt: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        hooks: HookIntervention | None = None,
        next_logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{name: (C,)}`` over documents ``idx`` (all: ``None``) of ``split``.

        Args:
            split: the split.
            idx: document indices.
            prompt: ``(C, n, d)`` prompt embeddings (differentiable), or ``None``.
            tokens: the prompt's ids ``(C, n)`` or one-hot ``(C, n, V)`` (adds ``xentropy``,
                its self cross-entropy in the context of the first document of ``idx``).
            hooks: a hook intervention of ``C`` candidates instead of a prompt.
            next_logits: also return ``"next_logits"`` ``(C, n, V)``, the logits predicting
                each prompt token (in that same context).
        """

    def enable_fluency(self) -> None:
        """Report a token prompt's self cross-entropy as a second objective (``xentropy``,
        minimised), for Pareto fronts; the pipeline turns it on for token spaces."""
        self.extra_names = ("xentropy",)
        self.extra_directions = ("minimize",)

    @property
    def embedder(self) -> Any:
        """The splice engine (``embed``, ``embedding``) prompts are embedded with."""
        return self.splice  # type: ignore[attr-defined]

    # -- the runner's contract ----------------------------------------------------------------
    def _score(self, iv: Intervention, split: str, limit: Docs) -> Evaluation:
        idx = None
        if limit is not None:
            idx = list(range(*doc_range(limit, self.n_examples(split))))
        n_docs = self.n_examples(split) if idx is None else len(idx)
        n = len(iv)
        values = np.full(n, np.nan)
        metrics: list[dict[str, Any]] = [{} for _ in range(n)]
        per_doc: list[np.ndarray | None] = [None] * n
        xent = np.full(n, np.nan)
        with torch.no_grad():
            if isinstance(iv, HookIntervention):
                groups = [(list(range(n)), self.stats(split, idx, hooks=iv))]
            else:
                groups = [(g, self._prompt_stats(iv, g, split, idx)) for g in iv.groups()]
        for members, st in groups:
            docs = st.pop(PER_DOC, None)
            for j, i in enumerate(members):
                if docs is not None:
                    per_doc[i] = docs[j].detach().double().cpu().numpy()
                row = {k: float(v[j]) for k, v in st.items()}
                values[i] = row.pop("value")
                if "xentropy" in row:
                    xent[i] = row["xentropy"]
                metrics[i] = {self.metric: values[i], **row}
        if isinstance(iv, PromptIntervention) and iv.is_tokens:
            self._remember([iv.ids[i] for i in range(n)], xent)  # type: ignore[misc]
        extra = xent[:, None] if self.extra_names else None
        return Evaluation(values, metrics, extra=extra, cost=float(n * n_docs), per_doc=per_doc)

    def _prompt_stats(
        self, iv: PromptIntervention, members: list[int], split: str, idx: Sequence[int] | None
    ) -> dict[str, torch.Tensor]:
        if iv.ids[members[0]] is not None:
            ids = torch.tensor([iv.ids[i] for i in members], dtype=torch.long)
            ids = ids.reshape(len(members), -1).to(self.embedder.device)
            return self.stats(split, idx, prompt=self.embedder.embed(ids), tokens=ids)
        emb = torch.stack([iv.embeds[i] for i in members]).float()  # type: ignore[misc]
        return self.stats(split, idx, prompt=emb)

    # -- gradients ----------------------------------------------------------------------------
    def loss(
        self, embeds: torch.Tensor, split: str = "search", idx: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``(C,)`` minus the value of prompts ``embeds`` ``(C, n, d)`` (differentiable)."""
        return -self.stats(split, idx, prompt=embeds)["value"]

    def gradient_cost(self, idx: Sequence[int] | None = None, split: str = "search") -> float:
        """Forward-pass equivalents of one gradient over documents ``idx`` (all: ``None``)."""
        n = self.n_examples(split) if idx is None else len(idx)
        return float(n) * (1.0 + BACKWARD_COST)

    def token_gradients(
        self,
        ids: np.ndarray,
        fluency_weights: np.ndarray | float = 0.0,
        split: str = "search",
        batch: int = 32,
    ) -> TokenGradients:
        """Gradient of ``value - lambda * xentropy`` with respect to one-hot token prompts.

        Args:
            ids: ``(B, n)`` vocabulary ids.
            fluency_weights: ``(B,)`` lambda per prompt (or one float for all).
            split: the split whose documents the value averages over.
            batch: prompts per backward pass (halved on out-of-memory).
        """
        from blackbox.forward.splice import embed_one_hot

        model = self.embedder.model
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.embedder.device)
        b = ids_t.shape[0]
        lam = torch.as_tensor(
            np.broadcast_to(np.asarray(fluency_weights, dtype=float), (b,)).copy(),
            dtype=torch.float32,
            device=ids_t.device,
        )
        vocab = self.embedder.embedding.shape[0]
        grads, values, xents, nexts = [], [], [], []
        start, bs = 0, max(1, batch)
        while start < b:
            chunk = ids_t[start : start + bs]
            try:
                one_hot = torch.zeros(*chunk.shape, vocab, device=chunk.device)
                one_hot.scatter_(-1, chunk.unsqueeze(-1), 1.0)
                one_hot.requires_grad_(True)
                with torch.enable_grad():
                    st = self.stats(
                        split,
                        None,
                        prompt=embed_one_hot(model, one_hot),
                        tokens=one_hot,
                        next_logits=True,
                    )
                    total = (st["value"] - lam[start : start + len(chunk)] * st["xentropy"]).sum()
                    (g,) = torch.autograd.grad(total, one_hot)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if "out of memory" not in str(err).lower() or bs == 1:
                    raise
                bs //= 2
                continue
            grads.append(g.float().cpu().numpy())
            values.append(st["value"].detach().float().cpu().numpy())
            xents.append(st["xentropy"].detach().float().cpu().numpy())
            nexts.append(st["next_logits"].detach().float().cpu().numpy())
            start += len(chunk)
        return TokenGradients(
            grad=np.concatenate(grads),
            values=np.concatenate(values),
            xentropy=np.concatenate(xents),
            next_logits=np.concatenate(nexts),
            cost=float(b) * self.gradient_cost(None, split),
        )

    # -- fluency of recent token prompts --------------------------------------------------------
    def _remember(self, ids: Sequence[Sequence[int]], xent: np.ndarray) -> None:
        for row, c in zip(ids, xent.tolist()):
            if np.isfinite(c):
                key = tuple(int(t) for t in row)
                self._recent[key] = float(c)
                self._recent.move_to_end(key)
        while len(self._recent) > RECENT_XENTROPY:
            self._recent.popitem(last=False)

    def recent_xentropy(self, ids: np.ndarray) -> np.ndarray:
        """``(n,)`` self cross-entropies of recently evaluated ids ``(n, T)`` (NaN if unknown).

        Lets a strategy whose ``tell`` did not receive ``extra`` read the fluency of the batch
        just scored without another forward pass.
        """
        return np.array([self._recent.get(tuple(r), np.nan) for r in np.asarray(ids).tolist()])
