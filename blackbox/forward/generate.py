"""Greedy decoding of many (candidate, request) rows together, with a key/value cache.

A generative lm-eval task asks, per document, for the model's greedy continuation of a
context until a stop string, the model's end-of-sequence token or ``max_gen_toks`` tokens.
:func:`greedy_generate` decodes ``C`` candidates x ``R`` requests as rows of one batched loop:

- each row is its context ids, optionally with a soft prompt (embeddings) spliced in, and the
  candidate whose steering hooks it receives (per-row hooks, as the loglikelihood engine);
- rows are sorted by length and run in chunks of ``max_rows``, left-padded, positions counted
  from each row's first real token (as ``transformers``' ``generate`` does);
- one prefill call per chunk, then one call per decoding step for the rows still running: a
  row that meets its stop leaves the batch at once (its key/values are dropped), so a chunk
  costs what its rows need, not what its longest row needs;
- the LM head runs on the last position only.

Cost: one forward-pass equivalent per model call a row takes, i.e. one per generated token
(the prefill yields the first).  ``GenStats`` records the prefill and decoding time apart.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from blackbox.forward.trunk import final_norm
from blackbox.models.compat import cache_kwargs
from blackbox.models.layers import decoder_layers, layer_output_hidden

ApplyHooks = Callable[[torch.nn.Module, torch.Tensor, int], Any]
"""``apply(model, rows, repeat)``: hooks for the candidate of each batch row ``rows`` ``(B,)``."""


@dataclass
class GenRow:
    """One row to decode.

    Attributes:
        ids: context token ids (already truncated as the task's harness would).
        max_new: most tokens to generate (``max_gen_toks``).
        candidate: the candidate whose hooks this row receives (index into the hooks).
        soft: ``(position, (n, d) embeddings)``: a soft prompt spliced before ``ids[position]``.
    """

    ids: list[int]
    max_new: int
    candidate: int = 0
    soft: tuple[int, torch.Tensor] | None = None

    @property
    def length(self) -> int:
        return len(self.ids) + (0 if self.soft is None else int(self.soft[1].shape[0]))


@dataclass
class GenStats:
    """What a decoding run did: rows, prompt tokens prefilled, decoding steps (row-steps) and
    model calls, seconds spent in prefill and in decoding, and whether the prefill shared the
    unsteered trunk (``None``: not asked; ``False``: asked, and switched off by its check)."""

    rows: int = 0
    prefill_tokens: int = 0
    padded_prefill_tokens: int = 0
    generated_tokens: int = 0
    calls: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    shared: bool | None = None

    def add(self, other: GenStats) -> None:
        for name in (
            "rows",
            "prefill_tokens",
            "padded_prefill_tokens",
            "generated_tokens",
            "calls",
            "prefill_s",
            "decode_s",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.shared is not None:
            self.shared = other.shared if self.shared is None else self.shared and other.shared


@functools.cache
def _keeps_logits(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def eos_ids(model: torch.nn.Module, tokenizer: Any = None) -> set[int]:
    """The token ids that end a generation: the model's ``generation_config.eos_token_id``
    (an id or a list, as ``generate`` reads it), else the tokenizer's EOS."""
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def _prefill_inputs(
    model: torch.nn.Module, rows: Sequence[GenRow], pad_id: int, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-padded inputs of a chunk: ``input_ids`` (or ``inputs_embeds`` when a row holds a
    soft prompt) ``(B, T)``, ``attention_mask`` and ``position_ids`` ``(B, T)``."""
    t = max(r.length for r in rows)
    b = len(rows)
    mask = torch.zeros(b, t, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        mask[i, t - r.length :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    if all(r.soft is None for r in rows):
        ids = torch.full((b, t), pad_id, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            ids[i, t - r.length :] = torch.tensor(r.ids, dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}, mask
    emb = model.get_input_embeddings()
    parts = []
    for r in rows:
        x = emb(torch.tensor(r.ids, dtype=torch.long, device=device))
        if r.soft is not None:
            at, soft = r.soft
            x = torch.cat([x[:at], soft.to(device=device, dtype=x.dtype), x[at:]])
        pad = emb(torch.full((t - x.shape[0],), pad_id, dtype=torch.long, device=device))
        parts.append(torch.cat([pad, x]))
    return {"inputs_embeds": torch.stack(parts), "attention_mask": mask, "position_ids": pos}, mask


def _call(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    cache: DynamicCache,
    hooks: ApplyHooks | None,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """One model call with the cache and each row's hooks -> next-token logits ``(B, V)``."""
    kw: dict[str, Any] = {**inputs, **cache_kwargs(model, cache), "use_cache": True}
    if _keeps_logits(type(model)):
        kw["logits_to_keep"] = 1
    if hooks is None:
        out = model(**kw)
    else:
        with hooks(model, candidates, 1):
            out = model(**kw)
    return out.logits[:, -1].float()


def _chunks(rows: Sequence[GenRow], max_rows: int) -> list[list[int]]:
    """Row indices in chunks of at most ``max_rows`` (at least one context each), longest
    contexts first; every row of one context (its candidates) in the same chunk."""
    by_ctx: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rows):
        key = tuple(r.ids) if r.soft is None else (-1 - i,)  # a soft row shares nothing
        by_ctx.setdefault(key, []).append(i)
    groups = sorted(by_ctx.values(), key=lambda g: -rows[g[0]].length)
    out: list[list[int]] = []
    for g in groups:
        if out and len(out[-1]) + len(g) <= max_rows:
            out[-1].extend(g)
        else:
            out.append(list(g))
    return out


_SHARE_VERDICTS: dict[tuple[str, str], bool] = {}
"""Whether the shared prefill equals the plain one, by (model class, dtype): checked once."""


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    rows: Sequence[GenRow],
    stop: Callable[[int, list[int]], bool],
    eos: set[int],
    pad_id: int,
    hooks: ApplyHooks | None = None,
    max_rows: int = 64,
    on_rows_done: Callable[[int], None] | None = None,
    lowest: Sequence[int | None] | None = None,
) -> tuple[list[list[int]], GenStats]:
    """Greedy continuations of ``rows``.

    Rows are prefilled in chunks of ``max_rows`` (longest contexts first).  The rows still
    running after a chunk's first token join one running batch (its key/values left-padded to
    a common length), which decodes a token per call and drops each row at its stop; a new
    chunk is prefilled whenever fewer than ``max_rows`` rows are running, so decoding calls
    stay full until the last rows (continuous batching).

    Args:
        model: a causal LM (eval mode).
        rows: the rows (see :class:`GenRow`).
        stop: ``stop(row index, generated ids)`` is true once the row's text holds a stop
            string (checked after every token that is not an end-of-sequence token).
        eos: token ids that end a row (kept as its last generated token, as ``generate`` does).
        pad_id: id used for left padding (masked out).
        hooks: per-row hooks (steering), applied at every call.
        max_rows: rows per prefill chunk, and the running batch it keeps filled.
        on_rows_done: called with the number of rows finished after each call (progress).
        lowest: with ``hooks``, per candidate the lowest layer it changes (``None``: none).
            Then the prefill shares the unsteered trunk: each context runs once below each
            candidate's lowest layer, and only the layers above run per candidate (checked
            against the plain prefill once per model class and dtype; reported in
            ``GenStats.shared``).

    Returns:
        per row its generated ids, and the run's :class:`GenStats`.
    """
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in rows]
    stats = GenStats(rows=len(rows))
    state = _Decoder(model, rows, stop, eos, hooks, device, out, stats, on_rows_done)
    share = hooks is not None and lowest is not None and final_norm(model) is not None
    running: Prefill | None = None
    for chunk in _chunks(rows, max_rows):
        t0 = time.perf_counter()
        prefill = None
        if share and all(rows[i].soft is None for i in chunk):
            key = (type(model).__name__, str(next(model.parameters()).dtype))
            try:
                prefill = _shared_prefill(model, rows, chunk, hooks, lowest, pad_id, device)  # type: ignore[arg-type]
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
                if _SHARE_VERDICTS.get(key):
                    raise  # it worked on this model before: a real error
                _SHARE_VERDICTS[key] = _refuse_sharing(model, exc)
            if key not in _SHARE_VERDICTS:
                _SHARE_VERDICTS[key] = _same_prefill(model, rows, prefill, hooks, pad_id, device)  # type: ignore[arg-type]
            if not _SHARE_VERDICTS[key]:
                prefill, share = None, False
        stats.shared = prefill is not None if stats.shared is None else stats.shared
        if prefill is None:
            prefill = _plain_prefill(model, rows, chunk, hooks, pad_id, device)
        stats.prefill_tokens += sum(rows[i].length for i in chunk)
        stats.padded_prefill_tokens += int(prefill.mask.numel())
        stats.calls += 1
        stats.prefill_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        live = state.advance(prefill)
        if live is not None and running is not None and not _mergeable(running, live):
            while running is not None:  # sliding-window caches: one batch after the other
                running = state.step(running)
        if live is not None:
            running = live if running is None else _merge(running, live)
        while running is not None and len(running.order) >= max_rows:
            running = state.step(running)
        stats.decode_s += time.perf_counter() - t1
    t1 = time.perf_counter()
    while running is not None:
        running = state.step(running)
    stats.decode_s += time.perf_counter() - t1
    return out, stats


class _Decoder:
    """Takes each running row's next token, drops the rows that end, calls the model."""

    def __init__(
        self,
        model: torch.nn.Module,
        rows: Sequence[GenRow],
        stop: Callable[[int, list[int]], bool],
        eos: set[int],
        hooks: ApplyHooks | None,
        device: torch.device,
        out: list[list[int]],
        stats: GenStats,
        on_rows_done: Callable[[int], None] | None,
    ) -> None:
        self.model, self.rows, self.stop, self.eos, self.hooks = model, rows, stop, eos, hooks
        self.device, self.out, self.stats, self.on_rows_done = device, out, stats, on_rows_done

    def advance(self, live: Prefill) -> Prefill | None:
        """Append the argmax of ``live.logits`` to each row; the rows that go on, or None."""
        nxt = live.logits.argmax(-1).tolist()
        keep: list[int] = []
        for j, row in enumerate(live.order):
            tok = int(nxt[j])
            self.out[row].append(tok)
            self.stats.generated_tokens += 1
            ids = self.out[row]
            if tok in self.eos or len(ids) >= self.rows[row].max_new or self.stop(row, ids):
                continue
            keep.append(j)
        if self.on_rows_done is not None and len(keep) < len(live.order):
            self.on_rows_done(len(live.order) - len(keep))
        if not keep:
            return None
        if len(keep) < len(live.order):
            idx = torch.tensor(keep, dtype=torch.long, device=self.device)
            live.cache.batch_select_indices(idx)
            live.mask, live.pos = live.mask[idx], live.pos[idx]
            live.order = [live.order[j] for j in keep]
        return live

    def step(self, live: Prefill) -> Prefill | None:
        """One decoding call for every running row, then :meth:`advance`."""
        ids = torch.tensor([[self.out[r][-1]] for r in live.order], device=self.device)
        live.mask = torch.cat([live.mask, live.mask.new_ones(len(live.order), 1)], dim=1)
        live.pos = live.pos + 1
        cands = torch.tensor([self.rows[r].candidate for r in live.order], dtype=torch.long)
        step = {"input_ids": ids, "attention_mask": live.mask, "position_ids": live.pos[:, None]}
        live.logits = _call(self.model, step, live.cache, self.hooks, cands)
        self.stats.calls += 1
        return self.advance(live)


def _mergeable(a: Prefill, b: Prefill) -> bool:
    """Plain key/value layers only: a sliding-window layer's bookkeeping assumes one length."""
    return all(type(x) is DynamicLayer for x in (*a.cache.layers, *b.cache.layers))


def _merge(a: Prefill, b: Prefill) -> Prefill:
    """Two running batches as one: key/values and masks left-padded to a common length."""
    layers_a, layers_b = a.cache.layers, b.cache.layers
    ta, tb = a.mask.shape[1], b.mask.shape[1]
    t = max(ta, tb)

    def pad(x: torch.Tensor, n: int) -> torch.Tensor:  # left-pad dim -2 (keys/values) by n
        if n == 0:
            return x
        return torch.cat([x.new_zeros(*x.shape[:-2], n, x.shape[-1]), x], dim=-2)

    merged = DynamicCache()
    for li, (la, lb) in enumerate(zip(layers_a, layers_b)):
        k = torch.cat([pad(la.keys, t - ta), pad(lb.keys, t - tb)])
        v = torch.cat([pad(la.values, t - ta), pad(lb.values, t - tb)])
        merged.update(k, v, li)
    mask = torch.cat(
        [
            torch.cat([a.mask.new_zeros(len(a.order), t - ta), a.mask], 1),
            torch.cat([b.mask.new_zeros(len(b.order), t - tb), b.mask], 1),
        ]
    )
    return Prefill(
        a.order + b.order,
        torch.cat([a.logits, b.logits]),
        merged,
        mask,
        torch.cat([a.pos, b.pos]),
    )


@dataclass
class Prefill:
    """A chunk after its prefill: row order (indices into the rows), next-token logits
    ``(B, V)``, the cache, the attention mask ``(B, T)`` and each row's last position ``(B,)``."""

    order: list[int]
    logits: torch.Tensor
    cache: DynamicCache
    mask: torch.Tensor
    pos: torch.Tensor


def _plain_prefill(
    model: torch.nn.Module,
    rows: Sequence[GenRow],
    chunk: list[int],
    hooks: ApplyHooks | None,
    pad_id: int,
    device: torch.device,
) -> Prefill:
    """Every row of the chunk through the whole model (its hooks on)."""
    sub = [rows[i] for i in chunk]
    inputs, mask = _prefill_inputs(model, sub, pad_id, device)
    cache = DynamicCache()
    cands = torch.tensor([r.candidate for r in sub], dtype=torch.long)
    logits = _call(model, inputs, cache, hooks, cands)
    return Prefill(list(chunk), logits, cache, mask, inputs["position_ids"][:, -1])


def _gather(value: Any, index: torch.Tensor, small: int) -> Any:
    """Batch-shaped tensors of a layer input (2+ dims, first ``small``) picked at ``index``."""
    if torch.is_tensor(value):
        if value.dim() > 1 and small > 1 and value.shape[0] == small:
            return value[index.to(value.device)]
        return value
    if isinstance(value, tuple | list):
        return type(value)(_gather(v, index, small) for v in value)
    return value


def _shared_prefill(
    model: torch.nn.Module,
    rows: Sequence[GenRow],
    chunk: list[int],
    hooks: ApplyHooks,
    lowest: Sequence[int | None],
    pad_id: int,
    device: torch.device,
) -> Prefill:
    """The chunk's distinct contexts run once, unsteered, recording each layer's inputs and
    key/values; each candidate's rows then resume from its lowest steered layer with the
    contexts' key/values below it (the loglikelihood engine's trunk, with a cache)."""
    layers = decoder_layers(model)
    n_layers = len(layers)
    ctx_of: dict[tuple[int, ...], int] = {}
    for i in chunk:
        ctx_of.setdefault(tuple(rows[i].ids), len(ctx_of))
    contexts = [GenRow(list(k), 1) for k in ctx_of]
    e = len(contexts)
    inputs, mask = _prefill_inputs(model, contexts, pad_id, device)
    recorded: list[tuple[tuple[Any, ...], dict[str, Any]] | None] = [None] * n_layers

    def record(i: int):
        def hook(_m: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            recorded[i] = (tuple(args), dict(kwargs))

        return hook

    handles = [
        layer.register_forward_pre_hook(record(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    base = DynamicCache()
    try:
        base_logits = _call(model, inputs, base, None, torch.zeros(0, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    norm, head = final_norm(model), model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    start_of = [
        n_layers if lowest[r.candidate] is None else int(lowest[r.candidate])
        for r in (rows[i] for i in chunk)
    ]
    order: list[int] = []
    parts_logits, parts_kv, parts_e = [], [], []
    for start in sorted(set(start_of)):
        members = [i for i, s in zip(chunk, start_of) if s == start]
        e_idx = torch.tensor([ctx_of[tuple(rows[i].ids)] for i in members], device=device)
        kv = [(base.layers[li].keys[e_idx], base.layers[li].values[e_idx]) for li in range(start)]
        if start >= n_layers:
            logits = base_logits[e_idx]
        else:
            cache = DynamicCache()
            for li, (k, v) in enumerate(kv):
                cache.update(k, v, li)
            args, kwargs = recorded[start]  # type: ignore[misc]
            hidden = (args[0] if args else kwargs["hidden_states"])[e_idx]
            cands = torch.tensor([rows[i].candidate for i in members], dtype=torch.long)
            with hooks(model, cands, 1):
                for li in range(start, n_layers):
                    args, kwargs = recorded[li]  # type: ignore[misc]
                    rest = tuple(_gather(a, e_idx, e) for a in args[1:])
                    kw = {
                        k: cache if v is base else _gather(v, e_idx, e)
                        for k, v in kwargs.items()
                        if k != "hidden_states"
                    }
                    out = (
                        layers[li](hidden, *rest, **kw)
                        if args
                        else layers[li](hidden_states=hidden, **kw)
                    )
                    hidden = layer_output_hidden(out)
            logits = head(norm(hidden[:, -1:]))[:, -1].float()  # type: ignore[misc]
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            kv = [(cache.layers[li].keys, cache.layers[li].values) for li in range(n_layers)]
        order += members
        parts_logits.append(logits)
        parts_kv.append(kv)
        parts_e.append(e_idx)
    merged = DynamicCache()
    for li in range(n_layers):
        merged.update(
            torch.cat([kv[li][0] for kv in parts_kv]), torch.cat([kv[li][1] for kv in parts_kv]), li
        )
    e_all = torch.cat(parts_e)
    pos = inputs["position_ids"][:, -1]
    return Prefill(order, torch.cat(parts_logits), merged, mask[e_all], pos[e_all])


def _refuse_sharing(model: torch.nn.Module, exc: BaseException) -> bool:
    import warnings

    warnings.warn(
        f"{type(model).__name__}: the shared generation prefill failed ({type(exc).__name__}: "
        f"{exc}); every row runs the whole model (reported as shared: false)",
        stacklevel=3,
    )
    return False


def _same_prefill(
    model: torch.nn.Module,
    rows: Sequence[GenRow],
    shared: Prefill,
    hooks: ApplyHooks | None,
    pad_id: int,
    device: torch.device,
) -> bool:
    """Once per model class and dtype: the shared prefill's logits equal the plain prefill's
    (1e-4 of their scale in fp32, 3e-2 in half precision)."""
    plain = _plain_prefill(model, rows, shared.order, hooks, pad_id, device)
    scale = plain.logits.abs().max().clamp_min(1.0)
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    ok = bool(((shared.logits - plain.logits).abs().max() / scale) < tol)
    if not ok:
        import warnings

        warnings.warn(
            f"{type(model).__name__}: the shared generation prefill does not match the plain "
            "one; every row runs the whole model (reported as shared: false)",
            stacklevel=3,
        )
    return ok
