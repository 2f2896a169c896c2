"""Batched forward passes with soft-prompt embeddings spliced into token sequences.

Every item of a data split is a pair of id lists, ``pre`` and ``post``: the soft prompt's ``n``
vectors go between them (``[pre | soft | post]``), through ``inputs_embeds``.  Candidates are
batched with items: a call runs ``C`` soft prompts on ``D`` items as ``C * D`` rows.

The ``pre`` part never depends on the soft prompt, so its key/values are computed once per item
(kept in an LRU cache by item key), assembled left-padded (positions counted from each item's
first real token) and reused across candidates, calls and minibatches; only ``soft + post`` run per candidate.  With the soft prompt after
the input (the review, then the soft prompt, then the answer cue) that is a handful of tokens
per row.  Results equal the unpadded concatenation up to float rounding (tested).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from blackbox.models.compat import cache_kwargs, output_cache


@dataclass
class PreCache:
    """Key/value cache of the left-padded ``pre`` ids of a chunk of ``D`` items.

    Attributes:
        kv: per layer, keys and values ``(D, heads, P, head_dim)`` (empty when ``P == 0``).
        mask: ``(D, P)`` 1 for real tokens, 0 for left padding.
        lengths: ``(D,)`` real ``pre`` lengths.
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    lengths: torch.Tensor


@dataclass
class SpliceOut:
    """Final hidden states of ``[soft | post]`` for ``C * D`` rows (candidate-major).

    Attributes:
        hidden: ``(C * D, n + L, d)`` last-layer hidden states (after the final norm).
        mask: ``(C * D, n + L)`` 1 where a real token is.
        n_soft: ``n``, the soft prompt length (``post`` starts at ``hidden[:, n]``).
        last: ``(C * D,)`` index of each row's last real position.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    n_soft: int
    last: torch.Tensor


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its LM head (``LlamaModel`` of a ``LlamaForCausalLM``)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise TypeError(f"{type(model).__name__}: no base model under the LM head")
    return base


class SoftForward:
    """Runs ``[pre | soft | post]`` batches for one model, caching the ``pre`` key/values.

    Args:
        model: a causal LM in eval mode (its parameters are not trained).
        cache_mb: memory for cached ``pre`` chunks (least recently used dropped first).
    """

    def __init__(self, model: torch.nn.Module, cache_mb: int = 512) -> None:
        self.model = model
        self.decoder = _decoder(model)
        self.cache_bytes = cache_mb * 2**20
        self._cache: OrderedDict[Any, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._bytes = 0
        self.pad_id = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embedding(self) -> torch.Tensor:
        """``(V, d)`` input embedding matrix."""
        return self.model.get_input_embeddings().weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` ids -> ``(..., n, d)`` input embeddings (with the model's scaling)."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d)`` final hidden states -> ``(..., V)`` logits (with final soft-capping)."""
        out = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            out = torch.tanh(out / cap) * cap
        return out

    def _store(self, key: Any, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        size = sum(k.numel() * k.element_size() * 2 for k, _ in kv)
        if size > self.cache_bytes:
            return
        self._cache[key] = kv
        self._bytes += size
        while self._bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._bytes -= sum(k.numel() * k.element_size() * 2 for k, _ in old)

    @torch.no_grad()
    def _compute(self, pre: Sequence[Sequence[int]]) -> PreCache:
        """Left-padded key/values of ``pre`` in one forward."""
        dev = self.device
        width = max((len(p) for p in pre), default=0)
        lengths = torch.tensor([len(p) for p in pre], device=dev)
        mask = torch.zeros(len(pre), width, dtype=torch.long, device=dev)
        ids = torch.full((len(pre), width), self.pad_id, dtype=torch.long, device=dev)
        for i, p in enumerate(pre):
            if p:
                ids[i, width - len(p) :] = torch.tensor(list(p), device=dev)
                mask[i, width - len(p) :] = 1
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        if width:
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            kv = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        return PreCache(kv, mask, lengths)

    def pre_cache(
        self, pre: Sequence[Sequence[int]], keys: Sequence[Any] | None = None
    ) -> PreCache:
        """Left-padded key/values of ``pre``; items with a key are computed and cached one by
        one (LRU), so any subset of a split (a minibatch) reuses them."""
        if keys is None:
            return self._compute(pre)
        fresh: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for i, k in enumerate(keys):
            if pre[i] and k not in self._cache and i not in fresh:
                # one item at a time: its key/values never depend on which items share a
                # batch, so a resumed run (other minibatches first) replays bit for bit
                fresh[i] = self._compute([pre[i]]).kv
                self._store(k, fresh[i])
        dev = self.device
        width = max((len(p) for p in pre), default=0)
        lengths = torch.tensor([len(p) for p in pre], device=dev)
        mask = torch.zeros(len(pre), width, dtype=torch.long, device=dev)
        for i, p in enumerate(pre):
            mask[i, width - len(p) :] = 1 if p else 0
        if not width:
            return PreCache([], mask, lengths)
        items = []
        for i, k in enumerate(keys):
            if not pre[i]:
                items.append(None)
            else:
                items.append(fresh[i] if i in fresh else self._cache[k])
                if k in self._cache:
                    self._cache.move_to_end(k)
        ref = next(it for it in items if it is not None)
        kv = []
        for layer, (k0, v0) in enumerate(ref):
            ks = k0.new_zeros(len(pre), k0.shape[1], width, k0.shape[3])
            vs = v0.new_zeros(len(pre), v0.shape[1], width, v0.shape[3])
            for i, it in enumerate(items):
                if it is not None:
                    ks[i, :, width - len(pre[i]) :] = it[layer][0][0]
                    vs[i, :, width - len(pre[i]) :] = it[layer][1][0]
            kv.append((ks, vs))
        return PreCache(kv, mask, lengths)

    def __call__(
        self,
        soft: torch.Tensor,
        pre: Sequence[Sequence[int]],
        post: Sequence[Sequence[int]],
        keys: Sequence[Any] | None = None,
    ) -> SpliceOut:
        """Run ``C`` soft prompts on ``D`` items.

        Args:
            soft: ``(C, n, d)`` soft-prompt embeddings (may require grad).
            pre: ``D`` id lists before the soft prompt.
            post: ``D`` id lists after it (each non-empty unless ``n > 0``).
            keys: per item, a cache key of its ``pre`` key/values (``None``: not cached).

        Returns:
            :class:`SpliceOut` over ``C * D`` rows, candidate-major (row ``c * D + i``).
        """
        if len(pre) != len(post):
            raise ValueError(f"pre has {len(pre)} items, post {len(post)}")
        dev = self.device
        c, n, _ = soft.shape
        d_items = len(post)
        cache = self.pre_cache(pre, keys)
        width = max(len(p) for p in post)
        post_ids = torch.full((d_items, width), self.pad_id, dtype=torch.long, device=dev)
        post_mask = torch.zeros(d_items, width, dtype=torch.long, device=dev)
        for i, p in enumerate(post):
            post_ids[i, : len(p)] = torch.tensor(list(p), dtype=torch.long, device=dev)
            post_mask[i, : len(p)] = 1
        post_emb = self.embed(post_ids)  # (D, L, d)
        soft = soft.to(device=dev, dtype=post_emb.dtype)
        embeds = torch.cat(
            [
                soft[:, None].expand(c, d_items, n, -1),
                post_emb[None].expand(c, -1, -1, -1),
            ],
            dim=2,
        ).reshape(c * d_items, n + width, -1)  # (C*D, n+L, d)
        new_mask = torch.cat(
            [torch.ones(d_items, n, dtype=torch.long, device=dev), post_mask], dim=1
        )  # (D, n+L)
        pos = cache.lengths[:, None] + torch.arange(n + width, device=dev)[None]  # (D, n+L)
        full_mask = torch.cat([cache.mask, new_mask], dim=1)  # (D, P+n+L)
        past = None
        if cache.kv:
            data = [
                (
                    k[None].expand(c, -1, -1, -1, -1).reshape(c * d_items, *k.shape[1:]),
                    v[None].expand(c, -1, -1, -1, -1).reshape(c * d_items, *v.shape[1:]),
                )
                for k, v in cache.kv
            ]
            past = DynamicCache(ddp_cache_data=data)
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=full_mask.repeat(c, 1),
            position_ids=pos.repeat(c, 1),
            **cache_kwargs(self.decoder, past),
            use_cache=past is not None,
        )
        mask = new_mask.repeat(c, 1)
        last = mask.sum(1) - 1
        return SpliceOut(out.last_hidden_state, mask, n, last)
