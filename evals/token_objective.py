"""Base class of objectives over token sequences: batched scoring and one-hot gradients.

Subclasses implement :meth:`TokenObjective.score`, a differentiable ``(B,)`` score computed from
a :class:`~blackbox.forward.token_forward.ForwardOut`.  The base class provides

* :meth:`evaluate` (the runner's contract): values ``(n,)``, ``extra`` ``(n, 1)`` holding the
  prompt's self cross-entropy (``extra_names = ("xentropy",)``, lower is more fluent), per
  candidate metrics, and ``cost`` = one forward-pass equivalent per scored candidate.  Rejected
  candidates (``TokenPrompt.valid`` False) get NaN, ``metrics["rejected"] = True`` and cost 0.
* :meth:`token_gradients` (for gradient-guided proposals): the gradient of
  ``score - lambda * xentropy`` with respect to the one-hot inputs, ``(B, n, V)``, at a cost of
  three forward-pass equivalents per prompt (a backward counts as two forwards).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from blackbox.evals.base import Evaluation, Objective
from blackbox.forward.token_forward import ForwardOut, TokenForward, prompt_xentropy
from blackbox.search_spaces.tokens import TokenContext

BACKWARD_COST = 2.0
RECENT_XENTROPY = 8192  # evaluated prompts whose cross-entropy is kept for recent_xentropy


@dataclass
class TokenGradients:
    """Result of :meth:`TokenObjective.token_gradients` for ``B`` prompts of ``n`` tokens.

    Attributes:
        grad: ``(B, n, V)`` d(score - lambda * xentropy) / d(one-hot).
        values: ``(B,)`` scores.
        xentropy: ``(B,)`` self cross-entropies.
        next_logits: ``(B, n, V)`` logits predicting each token (for logit-guided sampling).
        cost: forward-pass equivalents spent (3 per prompt).
    """

    grad: np.ndarray
    values: np.ndarray
    xentropy: np.ndarray
    next_logits: np.ndarray
    cost: float


def candidate_ids(candidates: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, T)`` ids and ``(n,)`` validity of candidates (``TokenPrompt`` or id sequences)."""
    ids = np.array([getattr(c, "ids", c) for c in candidates], dtype=np.int64)
    valid = np.array([bool(getattr(c, "valid", True)) for c in candidates], dtype=bool)
    return ids.reshape(len(candidates), -1), valid


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class TokenObjective(Objective):
    """A differentiable score of token prompts (maximised).

    Args:
        model: causal LM in eval mode.
        context: fixed ids before/after the optimised tokens (``TokenSpace.context``).
        batch_size: candidates per forward (halved on out-of-memory).
        use_prefix_cache: reuse the prefix KV cache across batches.
    """

    name: ClassVar[str] = ""
    extra_names: ClassVar[tuple[str, ...]] = ("xentropy",)
    extra_directions: ClassVar[tuple[str, ...]] = ("minimize",)
    needs_hidden: ClassVar[bool] = False

    def __init__(
        self,
        model: torch.nn.Module,
        context: TokenContext | None = None,
        batch_size: int = 32,
        use_prefix_cache: bool = True,
    ) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.forward = TokenForward(self.model, context, use_prefix_cache)
        self.batch_size = int(batch_size)
        self._recent: OrderedDict[tuple[int, ...], float] = OrderedDict()

    # -- to implement -------------------------------------------------------------------------
    def score(self, out: ForwardOut) -> torch.Tensor:
        """``(B,)`` differentiable score of a batch (higher is better)."""
        raise NotImplementedError

    def capture_modules(self) -> dict[str, torch.nn.Module]:
        """Modules whose inputs :meth:`score` reads from ``out.captured``."""
        return {}

    def metrics_of(self, values: np.ndarray) -> list[dict[str, Any]]:
        """Extra per-candidate metrics derived from values (e.g. a z-score)."""
        return [{} for _ in values]

    # -- shared machinery ---------------------------------------------------------------------
    def _run(self, ids: torch.Tensor | None, one_hot: torch.Tensor | None) -> ForwardOut:
        return self.forward(
            ids=ids, one_hot=one_hot, hidden=self.needs_hidden, capture=self.capture_modules()
        )

    def _score_ids(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B,)`` values and xentropies of ids ``(B, n)``, batched with OOM back-off."""
        values, xent = [], []
        start, bs = 0, max(1, self.batch_size)
        while start < len(ids):
            chunk = torch.as_tensor(ids[start : start + bs], device=self.forward.device)
            try:
                with torch.no_grad():
                    out = self._run(chunk, None)
                    values.append(self.score(out).float().cpu().numpy())
                    xent.append(
                        prompt_xentropy(out.next_logits, chunk, out.first_predicted).cpu().numpy()
                    )
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not _is_oom(err) or bs == 1:
                    raise
                bs //= 2
                continue
            start += len(chunk)
        if not values:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(values), np.concatenate(xent)

    def evaluate(
        self, candidates: Sequence[Any], split: str = "search", limit: int | None = None
    ) -> Evaluation:
        """Score ``candidates``; ``split`` and ``limit`` do not apply (no data set)."""
        ids, valid = candidate_ids(candidates)
        n = len(candidates)
        values = np.full(n, np.nan)
        xent = np.full(n, np.nan)
        if valid.any():
            values[valid], xent[valid] = self._score_ids(ids[valid])
            self._remember(ids[valid], xent[valid])
        extra_metrics = self.metrics_of(values)
        metrics = []
        for i in range(n):
            m: dict[str, Any] = {"rejected": not bool(valid[i])}
            if valid[i]:
                m.update({self.metric: float(values[i]), "xentropy": float(xent[i])})
                m.update(extra_metrics[i])
            metrics.append(m)
        return Evaluation(
            values=values, metrics=metrics, extra=xent[:, None], cost=float(valid.sum())
        )

    def _remember(self, ids: np.ndarray, xent: np.ndarray) -> None:
        for row, c in zip(ids.tolist(), xent.tolist()):
            self._recent[tuple(row)] = float(c)
            self._recent.move_to_end(tuple(row))
        while len(self._recent) > RECENT_XENTROPY:
            self._recent.popitem(last=False)

    def recent_xentropy(self, ids: np.ndarray) -> np.ndarray:
        """``(n,)`` self cross-entropies of recently evaluated ids ``(n, T)`` (NaN if unknown).

        Lets a strategy whose ``tell`` did not receive ``extra`` read the fluency of the batch
        just scored without another forward pass.
        """
        return np.array([self._recent.get(tuple(r), np.nan) for r in np.asarray(ids).tolist()])

    def token_gradients(
        self, ids: np.ndarray, fluency_weights: np.ndarray | float = 0.0
    ) -> TokenGradients:
        """Gradient of ``score - lambda * xentropy`` w.r.t. one-hot inputs.

        Args:
            ids: ``(B, n)`` vocabulary ids.
            fluency_weights: ``(B,)`` lambda per prompt (or one float for all).
        """
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.forward.device)
        batch = ids_t.shape[0]
        lam = torch.as_tensor(
            np.broadcast_to(np.asarray(fluency_weights, dtype=float), (batch,)).copy(),
            dtype=torch.float32,
            device=ids_t.device,
        )
        w = self.model.get_input_embeddings().weight
        grads, values, xents, nexts = [], [], [], []
        start, bs = 0, max(1, self.batch_size)
        while start < batch:
            chunk = ids_t[start : start + bs]
            try:
                one_hot = torch.zeros(*chunk.shape, w.shape[0], device=w.device, dtype=w.dtype)
                one_hot.scatter_(-1, chunk.unsqueeze(-1), 1.0)
                one_hot.requires_grad_(True)
                with torch.enable_grad():
                    out = self._run(None, one_hot)
                    val = self.score(out).float()  # (b,)
                    xe = prompt_xentropy(out.next_logits, one_hot, out.first_predicted)  # (b,)
                    total = (val - lam[start : start + len(chunk)] * xe).sum()
                    (g,) = torch.autograd.grad(total, one_hot)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not _is_oom(err) or bs == 1:
                    raise
                bs //= 2
                continue
            grads.append(g.float().cpu().numpy())
            values.append(val.detach().cpu().numpy())
            xents.append(xe.detach().cpu().numpy())
            nexts.append(out.next_logits.detach().float().cpu().numpy())
            start += len(chunk)
        return TokenGradients(
            grad=np.concatenate(grads),
            values=np.concatenate(values),
            xentropy=np.concatenate(xents),
            next_logits=np.concatenate(nexts),
            cost=float(batch) * (1.0 + BACKWARD_COST),
        )
