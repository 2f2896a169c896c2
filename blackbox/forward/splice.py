"""One batched forward for every intervention on every document set: ``[pre | prompt | post]``.

An objective's documents are :class:`Items`: per document the token ids before the prompt
(``pre``) and after it (``post``).  :class:`Splice` runs ``C`` candidates on ``D`` documents as
``C * D`` rows (candidate-major: row ``c * D + i``):

- a *prompt* intervention (token or soft prompt, ``(C, n, d)`` embeddings) goes between ``pre``
  and ``post`` through ``inputs_embeds``.  ``pre`` never depends on the prompt, so its
  key/values are computed once per document (one document at a time, so results never depend
  on batch composition), kept in an LRU cache by document key, assembled left-padded
  (positions counted from each document's first real token) and reused across candidates,
  calls and minibatches; only ``prompt + post`` run per candidate;
- a *hook* intervention (steering) runs ``pre + post`` whole (the hooks change every
  position) with candidate ``c``'s hooks on its rows.

The ``pre`` cache is a fast path: on the first call with a ``pre`` its results are compared
with ``[pre | prompt | post]`` run whole (right padded, no cache); a mismatch or an error
(recurrent state caches, decoders that place positions by cache length) switches it off,
loudly (a warning, ``Splice.fallbacks``), and every later call runs rows whole.

Requested activations (:class:`Capture`: a decoder layer's output, or the input of its MLP
output projection) are recorded over the positions that ran.  The LM head is not applied here:
objectives read final hidden states at the positions they need (:meth:`Splice.logits`).
Results equal a plain unpadded forward of the concatenation up to float rounding (tested on
four architectures).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from blackbox.api import HookIntervention
from blackbox.forward.fallbacks import is_oom as _is_oom
from blackbox.forward.fallbacks import switch_off
from blackbox.forward.hooks import Capture, capture
from blackbox.forward.trunk import soft_cap
from blackbox.models.compat import cache_kwargs, output_cache


@dataclass
class Items:
    """``D`` documents as token ids around the prompt.

    Attributes:
        pre: ``D`` id lists before the prompt (cached key/values under a prompt intervention).
        post: ``D`` id lists after it.
        gold: ``(D,)`` gold label index per document (classification), or ``None``.
        targets: per document, ``(offset in post, ids)`` of a target read teacher-forced
            (reference completions), or empty.
    """

    pre: list[list[int]]
    post: list[list[int]]
    gold: np.ndarray | None = None
    targets: list[tuple[int, list[int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.post)

    def subset(self, idx: Sequence[int]) -> Items:
        idx = list(idx)
        return Items(
            [self.pre[i] for i in idx],
            [self.post[i] for i in idx],
            None if self.gold is None else self.gold[idx],
            [self.targets[i] for i in idx] if self.targets else [],
        )


@dataclass
class PreCache:
    """Key/values of the left-padded ``pre`` ids of ``D`` documents.

    Attributes:
        kv: per layer, keys and values ``(D, heads, P, head_dim)`` (empty when ``P == 0``).
        mask: ``(D, P)`` 1 for real tokens, 0 for left padding.
        lengths: ``(D,)`` real ``pre`` lengths.
        last: ``(D, d)`` final hidden state at each document's last ``pre`` token (zeros for
            an empty ``pre``).
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    lengths: torch.Tensor
    last: torch.Tensor


@dataclass
class SpliceOut:
    """Final hidden states of ``C * D`` rows (candidate-major).

    Attributes:
        hidden: ``(R, T, d)`` last-layer hidden states (after the final norm) of the positions
            that ran: ``[prompt | post]`` under a prompt, ``[pre | post]`` under hooks.
        mask: ``(R, T)`` 1 where a real token is.
        n_prompt: ``n``, the prompt length (the prompt sits at ``hidden[:, :n]``).
        post_start: ``(R,)`` index in ``hidden`` where each row's ``post`` starts.
        last: ``(R,)`` index of each row's last real position.
        pre_last: ``(R, d)`` final hidden state of each row's last ``pre`` token (zeros where
            ``pre`` is empty or ran inside ``hidden``), for the prompt's first prediction.
        has_pre_last: ``(R,)`` whether ``pre_last`` holds a real state.
        captured: requested activations ``(R, T, width)``.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    n_prompt: int
    post_start: torch.Tensor
    last: torch.Tensor
    pre_last: torch.Tensor
    has_pre_last: torch.Tensor
    captured: dict[Capture, torch.Tensor] = field(default_factory=dict)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its LM head (``LlamaModel`` of a ``LlamaForCausalLM``)."""
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise TypeError(f"{type(model).__name__}: no base model under the LM head")
    return base


def embed_one_hot(model: torch.nn.Module, one_hot: torch.Tensor) -> torch.Tensor:
    """``(..., n, d)`` input embeddings of one-hot ``(..., n, V)`` rows, differentiable.

    ``one_hot @ W_E`` times the embedding's own scale where the model has one (Gemma).
    """
    emb = model.get_input_embeddings()
    out = one_hot.to(emb.weight.dtype) @ emb.weight
    scale = getattr(emb, "embed_scale", None)
    return out * scale.to(out.dtype) if torch.is_tensor(scale) else out * (scale or 1.0)


class Splice:
    """Runs ``[pre | prompt | post]`` batches for one model, caching ``pre`` key/values.

    Args:
        model: a causal LM in eval mode (its parameters are not trained).
        cache_mb: memory for cached ``pre`` key/values (least recently used dropped first).
    """

    def __init__(self, model: torch.nn.Module, cache_mb: int = 512) -> None:
        self.model = model
        self.decoder = _decoder(model)
        self.cache_bytes = cache_mb * 2**20
        self._cache: OrderedDict[Hashable, tuple[list[Any], torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self.pad_id = 0
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        # Whether cached ``pre`` key/values give the plain forward's results: ``None`` until
        # checked (on the first call with a ``pre``), ``False`` after a mismatch or an error
        # (recurrent caches, decoders that ignore ``position_ids``): then every row runs whole.
        self.cache_ok: bool | None = None
        self.fallbacks: dict[str, str] = {}  # "pre_cache" -> why it was switched off

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
        return soft_cap(self.model.get_output_embeddings()(hidden), self.softcap)

    # -- the pre cache -------------------------------------------------------------------------
    @staticmethod
    def _size(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in kv)

    def _store(self, key: Hashable, entry: tuple[list[Any], torch.Tensor]) -> None:
        size = self._size(entry[0])
        if size > self.cache_bytes:
            return
        self._cache[key] = entry
        self._bytes += size
        while self._bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._bytes -= self._size(old[0])

    @torch.no_grad()
    def _compute(self, pre: Sequence[int]) -> tuple[list[Any], torch.Tensor]:
        """Key/values and last final hidden state ``(d,)`` of one document's ``pre``."""
        ids = torch.tensor([list(pre)], dtype=torch.long, device=self.device)
        out = self.decoder(input_ids=ids, use_cache=True)
        kv = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        return kv, out.last_hidden_state[0, -1]

    def pre_cache(
        self, pre: Sequence[Sequence[int]], keys: Sequence[Hashable] | None = None
    ) -> PreCache:
        """Left-padded key/values of ``pre``.  Each document is computed alone (its key/values
        never depend on which documents share a batch, so a resumed run replays bit for bit)
        and cached under its key (LRU), so any subset of a split (a minibatch) reuses them."""
        dev, d = self.device, self.embedding.shape[1]
        width = max((len(p) for p in pre), default=0)
        lengths = torch.tensor([len(p) for p in pre], device=dev)
        mask = torch.zeros(len(pre), width, dtype=torch.long, device=dev)
        for i, p in enumerate(pre):
            mask[i, width - len(p) :] = 1 if p else 0
        dtype = self.embedding.dtype
        last = torch.zeros(len(pre), d, device=dev, dtype=dtype)
        if not width:
            return PreCache([], mask, lengths, last)
        items: list[tuple[list[Any], torch.Tensor] | None] = []
        for i, p in enumerate(pre):
            if not p:
                items.append(None)
                continue
            k = keys[i] if keys is not None else None
            if k is not None and k in self._cache:
                self._cache.move_to_end(k)
                items.append(self._cache[k])
            else:
                entry = self._compute(p)
                if k is not None:
                    self._store(k, entry)
                items.append(entry)
        ref = next(it for it in items if it is not None)[0]
        kv = []
        for layer, (k0, v0) in enumerate(ref):
            ks = k0.new_zeros(len(pre), k0.shape[1], width, k0.shape[3])
            vs = v0.new_zeros(len(pre), v0.shape[1], width, v0.shape[3])
            for i, it in enumerate(items):
                if it is not None:
                    ks[i, :, width - len(pre[i]) :] = it[0][layer][0][0]
                    vs[i, :, width - len(pre[i]) :] = it[0][layer][1][0]
            kv.append((ks, vs))
        for i, it in enumerate(items):
            if it is not None:
                last[i] = it[1]
        return PreCache(kv, mask, lengths, last)

    # -- forward -------------------------------------------------------------------------------
    def __call__(
        self,
        items: Items,
        prompt: torch.Tensor | None = None,
        hooks: HookIntervention | None = None,
        keys: Sequence[Hashable] | None = None,
        captures: Sequence[Capture] = (),
    ) -> SpliceOut:
        """Run ``C`` candidates on the ``D`` documents of ``items``.

        Args:
            items: the documents.
            prompt: ``(C, n, d)`` prompt embeddings (may require grad), or ``None``.
            hooks: a hook intervention of ``C`` candidates (``prompt`` must then be ``None``).
            keys: per document, a cache key of its ``pre`` key/values (``None``: not cached).
            captures: activations to record.

        Returns:
            :class:`SpliceOut` over ``C * D`` rows, candidate-major (row ``c * D + i``).
        """
        if hooks is not None:
            if prompt is not None and prompt.shape[1]:
                raise ValueError("splice: hooks and a prompt cannot be applied together")
            return self._run_hooks(items, hooks, captures)
        if prompt is None:
            prompt = torch.zeros(1, 0, self.embedding.shape[1], device=self.device)
        return self._run_prompt(items, prompt, keys, captures)

    def _right_padded(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        width = max(1, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros(len(seqs), width, dtype=torch.long, device=dev)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long, device=dev)
            mask[i, : len(s)] = 1
        return ids, mask

    def _run_prompt(
        self,
        items: Items,
        prompt: torch.Tensor,
        keys: Sequence[Hashable] | None,
        captures: Sequence[Capture],
    ) -> SpliceOut:
        dev = self.device
        c, n, _ = prompt.shape
        if n == 0 and any(not q for q in items.post):
            # no prompt and nothing after it: the last pre token runs instead of being cached,
            # so every row has a position of its own (the sequence is unchanged)
            if any(not p and not q for p, q in zip(items.pre, items.post)):
                raise ValueError("splice: an empty document needs a prompt")
            shift = [not q for q in items.post]
            pre = [p[:-1] if s else p for p, s in zip(items.pre, shift)]
            post = [p[-1:] if s else q for p, q, s in zip(items.pre, items.post, shift)]
            items = Items(pre, post, items.gold, items.targets)
            if keys is not None:
                keys = [(k, "short") if s else k for k, s in zip(keys, shift)]
            out = self._run_prompt(items, prompt, keys, captures)
            out.post_start = out.post_start + torch.tensor(shift, device=dev).repeat(c).long()
            return out
        has_pre = any(len(p) for p in items.pre)
        if not has_pre or self.cache_ok is not False:
            try:
                out = self._run_cached(items, prompt, keys, captures)
            except Exception as exc:  # any failure: fall back, or re-raise
                if not has_pre or self.cache_ok or _is_oom(exc):
                    raise
                self._refuse_cache(f"{type(exc).__name__}: {exc}")
            else:
                if not has_pre or self.cache_ok:
                    return out
                with torch.no_grad():  # checked on the first candidate's rows only
                    ref = self._run_whole(items, prompt[:1].detach(), captures)
                why = _mismatch(out, ref)
                self.cache_ok = why is None
                if why is None:
                    return out
                self._refuse_cache(why)
        return self._run_whole(items, prompt, captures)

    def _refuse_cache(self, why: str) -> None:
        """Switch the ``pre`` cache off, loudly (``fallbacks["pre_cache"]``)."""
        self.cache_ok = False
        switch_off(
            self.fallbacks,
            "pre_cache",
            f"{type(self.model).__name__}: {why}",
            "cached document prefixes do not give the plain forward's results ({reason}); "
            "every row runs whole",
            stacklevel=4,
        )

    def _run_whole(
        self, items: Items, prompt: torch.Tensor, captures: Sequence[Capture]
    ) -> SpliceOut:
        """``[pre | prompt | post]`` run whole per row (right padded, no cache), read back in
        the cached path's layout: the plain forward the cache is checked against."""
        dev = self.device
        c, n, _ = prompt.shape
        d_items = len(items)
        post_ids, post_mask = self._right_padded(items.post)  # (D, L)
        width_l = post_ids.shape[1]
        pre_len = [len(p) for p in items.pre]
        width = max(pre_len) + n + width_l
        post_emb = self.embed(post_ids)  # (D, L, d)
        prompt = prompt.to(device=dev, dtype=post_emb.dtype)
        pad = self.embed(torch.tensor([self.pad_id], device=dev))  # (1, d)
        rows = []
        for i in range(d_items):
            pre_emb = self.embed(torch.tensor(items.pre[i], dtype=torch.long, device=dev))
            n_post = len(items.post[i])
            parts = [
                pre_emb[None].expand(c, -1, -1),
                prompt,
                post_emb[i, :n_post][None].expand(c, -1, -1),
                pad[None].expand(c, width - pre_len[i] - n - n_post, -1),
            ]
            rows.append(torch.cat(parts, dim=1))  # (C, W, d)
        embeds = torch.stack(rows, dim=1).reshape(c * d_items, width, -1)  # (C*D, W, d)
        lengths = torch.tensor(pre_len, device=dev) + n + post_mask.sum(1)  # (D,)
        full_mask = (torch.arange(width, device=dev)[None] < lengths[:, None]).long()
        with capture(self.model, captures) as store:
            out = self.decoder(
                inputs_embeds=embeds, attention_mask=full_mask.repeat(c, 1), use_cache=False
            )
        start = torch.tensor(pre_len, device=dev).repeat(c)  # (R,) where the prompt starts
        at = (start[:, None] + torch.arange(n + width_l, device=dev)[None]).clamp_max(width - 1)
        mask = torch.cat(
            [torch.ones(d_items, n, dtype=torch.long, device=dev), post_mask], dim=1
        ).repeat(c, 1)
        hidden = out.last_hidden_state
        rows_idx = torch.arange(c * d_items, device=dev)
        has_pre = start > 0
        pre_last = hidden[rows_idx, (start - 1).clamp_min(0)] * has_pre[:, None].to(hidden.dtype)
        return SpliceOut(
            hidden=gather_positions(hidden, at),
            mask=mask,
            n_prompt=n,
            post_start=torch.full((c * d_items,), n, dtype=torch.long, device=dev),
            last=mask.sum(1) - 1,
            pre_last=pre_last,
            has_pre_last=has_pre,
            captured={k: gather_positions(v, at) for k, v in store.items()},
        )

    def _run_cached(
        self,
        items: Items,
        prompt: torch.Tensor,
        keys: Sequence[Hashable] | None,
        captures: Sequence[Capture],
    ) -> SpliceOut:
        """``prompt + post`` run on the cached key/values of ``pre`` (left padded)."""
        dev = self.device
        c, n, _ = prompt.shape
        d_items = len(items)
        cache = self.pre_cache(items.pre, keys)
        post_ids, post_mask = self._right_padded(items.post)
        post_emb = self.embed(post_ids)  # (D, L, d)
        prompt = prompt.to(device=dev, dtype=post_emb.dtype)
        embeds = torch.cat(
            [prompt[:, None].expand(c, d_items, n, -1), post_emb[None].expand(c, -1, -1, -1)],
            dim=2,
        ).reshape(c * d_items, n + post_ids.shape[1], -1)  # (C*D, n+L, d)
        new_mask = torch.cat(
            [torch.ones(d_items, n, dtype=torch.long, device=dev), post_mask], dim=1
        )  # (D, n+L)
        pos = cache.lengths[:, None] + torch.arange(new_mask.shape[1], device=dev)[None]
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
        with capture(self.model, captures) as store:
            out = self.decoder(
                inputs_embeds=embeds,
                attention_mask=full_mask.repeat(c, 1),
                position_ids=pos.repeat(c, 1),
                **cache_kwargs(self.decoder, past),
                use_cache=past is not None,
            )
        mask = new_mask.repeat(c, 1)
        rows = c * d_items
        return SpliceOut(
            hidden=out.last_hidden_state,
            mask=mask,
            n_prompt=n,
            post_start=torch.full((rows,), n, dtype=torch.long, device=dev),
            last=mask.sum(1) - 1,
            pre_last=cache.last.repeat(c, 1),
            has_pre_last=(cache.lengths > 0).repeat(c),
            captured=dict(store),
        )

    def _run_hooks(
        self, items: Items, hooks: HookIntervention, captures: Sequence[Capture]
    ) -> SpliceOut:
        dev = self.device
        c, d_items = len(hooks), len(items)
        ids, mask = self._right_padded([list(p) + list(q) for p, q in zip(items.pre, items.post)])
        rows = torch.arange(c).repeat_interleave(d_items)  # (C*D,) candidate of each row
        with hooks.apply(self.model, rows, 1), capture(self.model, captures) as store:
            out = self.decoder(
                input_ids=ids.repeat(c, 1), attention_mask=mask.repeat(c, 1), use_cache=False
            )
        mask = mask.repeat(c, 1)
        pre_len = torch.tensor([len(p) for p in items.pre], device=dev).repeat(c)
        hidden = out.last_hidden_state
        return SpliceOut(
            hidden=hidden,
            mask=mask,
            n_prompt=0,
            post_start=pre_len,
            last=mask.sum(1) - 1,
            pre_last=hidden.new_zeros(c * d_items, hidden.shape[-1]),
            has_pre_last=torch.zeros(c * d_items, dtype=torch.bool, device=dev),
            captured=dict(store),
        )


def _mismatch(out: SpliceOut, ref: SpliceOut) -> str | None:
    """``None`` when ``out``'s first rows hold ``ref``'s hidden states, last-``pre`` states and
    captures at every real position (``ref`` may hold fewer rows: the first candidate's), to
    rounding (1e-4 of their scale in fp32, 3e-2 in half precision); else how far apart they
    are (one line)."""
    r = ref.hidden.shape[0]
    real, pre = ref.mask.bool(), ref.has_pre_last
    pairs = [(out.hidden[:r][real], ref.hidden[real])]
    pairs.append((out.pre_last[:r][pre], ref.pre_last[pre]))
    pairs += [(out.captured[k][:r][real], v[real]) for k, v in ref.captured.items()]
    worst = 0.0
    for a, b in pairs:
        if b.numel():
            scale = b.detach().float().abs().max().clamp_min(1.0)
            worst = max(worst, float((a.detach() - b.detach()).float().abs().max() / scale))
    tol = 1e-4 if ref.hidden.dtype == torch.float32 else 3e-2
    if worst < tol:
        return None
    return f"differs from the plain forward by {worst:.2g} of its scale (tolerance {tol:g})"


def gather_positions(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x[r, pos[r, j]]`` for ``x`` ``(R, T, k)`` and ``pos`` ``(R, m)`` -> ``(R, m, k)``."""
    return x.gather(1, pos[..., None].expand(-1, -1, x.shape[-1]))


def prompt_next_logits(splice: Splice, out: SpliceOut) -> torch.Tensor:
    """``(R, n, V)`` logits predicting each prompt token: row 0 from the last ``pre`` token
    (zeros without one), row ``j`` from prompt position ``j - 1``."""
    n = out.n_prompt
    first = splice.logits(out.pre_last)[:, None]  # (R, 1, V)
    first = first * out.has_pre_last[:, None, None].to(first.dtype)
    if n <= 1:
        return first[:, :n]
    return torch.cat([first, splice.logits(out.hidden[:, : n - 1])], dim=1)
