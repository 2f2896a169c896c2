"""Greedy decoding of many (candidate, request) rows together, with a key/value cache.

A generative lm-eval task asks, per document, for the model's greedy continuation of a
context until a stop string, the model's end-of-sequence token or ``max_gen_toks`` tokens.
:func:`greedy_generate` decodes ``C`` candidates x ``R`` requests as rows of one batched loop:

- each row is its context ids, optionally with a soft prompt (embeddings) spliced in, and the
  candidate whose steering hooks it receives (per-row hooks, as the loglikelihood engine);
- rows are prefilled in chunks of ``max_rows`` (longest contexts first, left-padded, positions
  counted from each row's first real token as ``transformers``' ``generate`` does; the LM head
  on the last position only); steered rows share the unsteered trunk below their lowest
  layer (:mod:`~blackbox.forward.prefill`);
- the rows still running after their first token join one running batch that decodes a token
  per call and drops each row at its stop; the next chunk joins whenever fewer than
  ``max_rows`` rows run (continuous batching), so calls stay full until the last rows.

Cost: one forward-pass equivalent per model call a row takes, i.e. one per generated token
(the prefill yields the first).  ``GenStats`` records the prefill and decoding time apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from blackbox.forward.prefill import (
    ApplyHooks,
    GenRow,
    Prefill,
    call_model,
    merge,
    mergeable,
    plain_prefill,
    refuse_sharing,
    same_prefill,
    shared_prefill,
)
from blackbox.forward.trunk import final_norm


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
                prefill = shared_prefill(model, rows, chunk, hooks, lowest, pad_id, device)  # type: ignore[arg-type]
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
                if _SHARE_VERDICTS.get(key):
                    raise  # it worked on this model before: a real error
                _SHARE_VERDICTS[key] = refuse_sharing(model, exc)
            if key not in _SHARE_VERDICTS:
                _SHARE_VERDICTS[key] = same_prefill(model, rows, prefill, hooks, pad_id, device)  # type: ignore[arg-type]
            if not _SHARE_VERDICTS[key]:
                prefill, share = None, False
        stats.shared = prefill is not None if stats.shared is None else stats.shared
        if prefill is None:
            prefill = plain_prefill(model, rows, chunk, hooks, pad_id, device)
        stats.prefill_tokens += sum(rows[i].length for i in chunk)
        stats.padded_prefill_tokens += int(prefill.mask.numel())
        stats.calls += 1
        stats.prefill_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        live = state.advance(prefill)
        if live is not None and running is not None and not mergeable(running, live):
            while running is not None:  # sliding-window caches: one batch after the other
                running = state.step(running)
        if live is not None:
            running = live if running is None else merge(running, live)
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
        live.logits = call_model(self.model, step, live.cache, self.hooks, cands)
        self.stats.calls += 1
        return self.advance(live)
