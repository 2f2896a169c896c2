"""Soft prompts to tokens: nearest-token projection, a top-k beam, HotFlip-style repair.

- :func:`nearest_tokens`: per soft vector, the ``k`` vocabulary rows of highest cosine
  similarity (banned ids excluded); row ``i`` of the embedding matrix projects to token ``i``.
- :func:`beam_projection`: score combinations of each position's top-``k`` tokens with the
  objective and keep the best (all ``k ** n`` when that is at most ``max_candidates``, else a
  seeded sample that always holds the top-1 projection).
- :func:`hotflip_repair`: from a token sequence, repeatedly take the gradient of the loss
  with respect to one-hot inputs, propose the ``topk`` single-token swaps per position with
  the most negative linearised change, score all of them exactly and keep the best one if it
  lowers the loss; stop when none does.  The loss therefore never increases.

``loss_of_ids`` is any function ``(B, n)`` ids -> ``(B,)`` losses computed exactly (no grad);
``grad_of_ids`` gives ``(n, V)`` gradients of the loss with respect to the one-hot inputs.
:func:`objective_fns` makes both from any differentiable objective.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]
GradFn = Callable[[torch.Tensor], torch.Tensor]


def _ban_mask(vocab: int, banned: Sequence[int], device: torch.device) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if len(banned):
        mask[torch.as_tensor(list(banned), dtype=torch.long, device=device)] = True
    return mask


@torch.no_grad()
def nearest_tokens(
    soft: torch.Tensor, embedding: torch.Tensor, k: int = 1, banned: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` tokens by cosine similarity.

    Args:
        soft: ``(n, d)`` soft-prompt vectors.
        embedding: ``(V, d)`` embedding matrix.
        k: tokens per position.
        banned: ids never returned.

    Returns:
        ``(n, k)`` ids and their ``(n, k)`` cosine similarities, best first.
    """
    e = torch.nn.functional.normalize(embedding.float(), dim=-1)
    s = torch.nn.functional.normalize(soft.float().to(e.device), dim=-1)
    sim = s @ e.T  # (n, V)
    sim[:, _ban_mask(e.shape[0], banned, e.device)] = -float("inf")
    val, idx = sim.topk(k, dim=-1)
    return idx, val


@torch.no_grad()
def beam_projection(
    top_ids: torch.Tensor,
    loss_of_ids: LossFn,
    max_candidates: int = 256,
    batch: int = 64,
    seed: int = 0,
) -> tuple[torch.Tensor, float, int]:
    """Best combination of per-position candidates.

    Args:
        top_ids: ``(n, k)`` candidate ids per position, best first.
        loss_of_ids: exact loss of ``(B, n)`` id sequences.
        max_candidates: most combinations scored.
        batch: sequences per loss call.
        seed: seed of the sample when there are more combinations than ``max_candidates``.

    Returns:
        ``(n,)`` ids of the best combination, its loss and the number of sequences scored.
    """
    n, k = top_ids.shape
    if k**n <= max_candidates:
        combos = np.array(list(itertools.product(range(k), repeat=n)), dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        combos = np.unique(rng.integers(0, k, size=(max_candidates, n)), axis=0)
        combos = np.unique(np.vstack([np.zeros((1, n), np.int64), combos]), axis=0)
    cols = torch.arange(n)[None]
    seqs = top_ids.cpu()[cols, torch.as_tensor(combos)]  # (M, n)
    losses = torch.cat([loss_of_ids(seqs[i : i + batch]).cpu() for i in range(0, len(seqs), batch)])
    best = int(losses.argmin())
    return seqs[best], float(losses[best]), len(seqs)


@dataclass
class Repair:
    """The outcome of :func:`hotflip_repair`.

    Attributes:
        ids: ``(n,)`` repaired ids.
        loss: their loss.
        history: the loss after each accepted swap (starting with the initial loss).
        swaps: accepted ``(position, old id, new id)``.
        evaluated: sequences scored exactly.
        gradients: gradient calls.
    """

    ids: torch.Tensor
    loss: float
    history: list[float] = field(default_factory=list)
    swaps: list[tuple[int, int, int]] = field(default_factory=list)
    evaluated: int = 0
    gradients: int = 0


def hotflip_repair(
    ids: torch.Tensor,
    loss_of_ids: LossFn,
    grad_of_ids: GradFn,
    steps: int = 16,
    topk: int = 8,
    banned: Sequence[int] = (),
    batch: int = 64,
) -> Repair:
    """Greedy single-token swaps guided by one-hot gradients; the loss never increases.

    Args:
        ids: ``(n,)`` starting ids (for example a nearest-token projection).
        loss_of_ids: exact loss of ``(B, n)`` id sequences.
        grad_of_ids: ``(n, V)`` gradient of the loss at the one-hot encoding of ``(n,)`` ids.
        steps: most accepted swaps.
        topk: swaps proposed per position and step.
        banned: ids never swapped in.
        batch: sequences per loss call.
    """
    cur = ids.detach().cpu().long().clone()
    n = cur.numel()
    with torch.no_grad():
        loss = float(loss_of_ids(cur[None])[0])
    rep = Repair(cur.clone(), loss, [loss], evaluated=1)
    for _ in range(steps):
        grad = grad_of_ids(cur).detach().float().cpu()  # (n, V)
        rep.gradients += 1
        # linearised change of swapping position i to token v: grad[i, v] - grad[i, cur_i]
        delta = grad - grad.gather(1, cur[:, None])
        delta[:, _ban_mask(grad.shape[1], banned, delta.device)] = float("inf")
        delta[torch.arange(n), cur] = float("inf")
        k = min(topk, grad.shape[1])
        top = (-delta).topk(k, dim=-1)  # (n, k)
        pos_of, tok_of = torch.nonzero(torch.isfinite(top.values), as_tuple=True)
        if not len(pos_of):
            break
        positions, tokens = pos_of, top.indices[pos_of, tok_of]  # allowed swaps only
        cands = cur.repeat(len(positions), 1)  # (S, n)
        cands[torch.arange(len(positions)), positions] = tokens
        with torch.no_grad():
            losses = torch.cat(
                [loss_of_ids(cands[i : i + batch]).cpu() for i in range(0, len(cands), batch)]
            )
        rep.evaluated += len(cands)
        j = int(losses.argmin())
        if not float(losses[j]) < rep.loss:
            break
        pos = int(positions[j])
        rep.swaps.append((pos, int(cur[pos]), int(cands[j, pos])))
        cur = cands[j].clone()
        rep.loss = float(losses[j])
        rep.ids = cur.clone()
        rep.history.append(rep.loss)
    return rep


def objective_fns(
    objective: Any, split: str = "search", idx: Sequence[int] | None = None
) -> tuple[LossFn, GradFn]:
    """Exact loss and one-hot gradient of token ids under a differentiable objective.

    ``objective`` has ``loss(prompt (C, n, d), split, idx) -> (C,)`` and an ``embedder`` (the
    splice engine: ``embed``, ``embedding``, ``model``), as every
    :class:`~blackbox.evals.base.Differentiable` objective does.
    """
    from blackbox.forward.splice import embed_one_hot

    emb = objective.embedder

    def loss_of_ids(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return objective.loss(emb.embed(ids).float(), split, idx)

    def grad_of_ids(ids: torch.Tensor) -> torch.Tensor:
        vocab = emb.embedding.shape[0]
        one_hot = torch.zeros(ids.numel(), vocab, device=emb.device)
        one_hot[torch.arange(ids.numel()), ids.to(emb.device)] = 1.0
        one_hot.requires_grad_(True)
        soft = embed_one_hot(emb.model, one_hot[None])  # (1, n, d)
        objective.loss(soft.float(), split, idx)[0].backward()
        return one_hot.grad

    return loss_of_ids, grad_of_ids
