"""Prefill for batched decoding: rows left-padded, steered rows sharing the unsteered trunk.

:func:`plain_prefill` runs a chunk's rows through the whole model (each row's hooks on);
:func:`shared_prefill` runs the chunk's distinct contexts once, unsteered, recording every
layer's inputs and key/values, and resumes each candidate from its lowest steered layer with
the contexts' key/values below it (one call per layer over the rows steered at or below it);
:func:`same_prefill` checks the two agree.  :func:`merge` joins two running batches (key/values
and masks left-padded to a common length) for continuous batching.
"""

from __future__ import annotations

import bisect
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from blackbox.forward.trunk import final_norm, record_layer_inputs, soft_cap
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


@functools.cache
def keeps_logits(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def prefill_inputs(
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


def call_model(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    cache: DynamicCache,
    hooks: ApplyHooks | None,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """One model call with the cache and each row's hooks -> next-token logits ``(B, V)``."""
    kw: dict[str, Any] = {**inputs, **cache_kwargs(model, cache), "use_cache": True}
    if keeps_logits(type(model)):
        kw["logits_to_keep"] = 1
    if hooks is None:
        out = model(**kw)
    else:
        with hooks(model, candidates, 1):
            out = model(**kw)
    return out.logits[:, -1].float()


def mergeable(a: Prefill, b: Prefill) -> bool:
    """Plain key/value layers only: a sliding-window layer's bookkeeping assumes one length."""
    return all(type(x) is DynamicLayer for x in (*a.cache.layers, *b.cache.layers))


def merge(a: Prefill, b: Prefill) -> Prefill:
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


def plain_prefill(
    model: torch.nn.Module,
    rows: Sequence[GenRow],
    chunk: list[int],
    hooks: ApplyHooks | None,
    pad_id: int,
    device: torch.device,
) -> Prefill:
    """Every row of the chunk through the whole model (its hooks on)."""
    sub = [rows[i] for i in chunk]
    inputs, mask = prefill_inputs(model, sub, pad_id, device)
    cache = DynamicCache()
    cands = torch.tensor([r.candidate for r in sub], dtype=torch.long)
    logits = call_model(model, inputs, cache, hooks, cands)
    return Prefill(list(chunk), logits, cache, mask, inputs["position_ids"][:, -1])


def gather_rows(value: Any, index: torch.Tensor, small: int) -> Any:
    """Batch-shaped tensors of a layer input (2+ dims, first ``small``) picked at ``index``."""
    if torch.is_tensor(value):
        if value.dim() > 1 and small > 1 and value.shape[0] == small:
            return value[index.to(value.device)]
        return value
    if isinstance(value, tuple | list):
        return type(value)(gather_rows(v, index, small) for v in value)
    return value


def shared_prefill(
    model: torch.nn.Module,
    rows: Sequence[GenRow],
    chunk: list[int],
    hooks: ApplyHooks,
    lowest: Sequence[int | None],
    pad_id: int,
    device: torch.device,
) -> Prefill:
    """The chunk's distinct contexts run once, unsteered, recording each layer's inputs and
    key/values; the steered rows then run the layers above the trunk in one pass, each row
    joining at its candidate's lowest steered layer with its context's recorded input there
    (the loglikelihood engine's trunk, with a cache).

    Rows are ordered by that layer, so the rows a layer runs are a prefix of the order that
    grows layer by layer: each layer is one call over every row steered at or below it (not
    one call per lowest layer), and a row's key/values below its lowest layer are its
    context's.  Rows of unsteered candidates take the trunk's logits.
    """
    layers = decoder_layers(model)
    n_layers = len(layers)
    ctx_of: dict[tuple[int, ...], int] = {}
    for i in chunk:
        ctx_of.setdefault(tuple(rows[i].ids), len(ctx_of))
    contexts = [GenRow(list(k), 1) for k in ctx_of]
    e = len(contexts)
    inputs, mask = prefill_inputs(model, contexts, pad_id, device)
    base = DynamicCache()
    with record_layer_inputs(model) as recorded:
        base_logits = call_model(model, inputs, base, None, torch.zeros(0, dtype=torch.long))

    def start_of(i: int) -> int:
        low = lowest[rows[i].candidate]
        return n_layers if low is None else int(low)

    order = sorted(chunk, key=start_of)  # stable: chunk order within one lowest layer
    starts = [start_of(i) for i in order]
    e_all = torch.tensor([ctx_of[tuple(rows[i].ids)] for i in order], device=device)
    cands = torch.tensor([rows[i].candidate for i in order], dtype=torch.long)
    hidden: torch.Tensor | None = None  # (a, T, d): the rows steered at or below the layer
    active = 0
    merged = DynamicCache()
    for li in range(n_layers):
        entering = bisect.bisect_right(starts, li)  # rows steered at or below this layer
        keys, values = base.layers[li].keys, base.layers[li].values  # (E, H, T, D)
        if entering == 0:
            merged.update(keys[e_all], values[e_all], li)
            continue
        args, kwargs = recorded[li]  # type: ignore[misc]
        if entering > active:
            joined = (args[0] if args else kwargs["hidden_states"])[e_all[active:entering]]
            hidden = joined if hidden is None else torch.cat([hidden, joined])
        active = entering
        idx = e_all[:active]
        cache = DynamicCache()
        # the trunk's cache, given by keyword or (GPT-2) by position, becomes this pass's own
        rest = tuple(cache if a is base else gather_rows(a, idx, e) for a in args[1:])
        kw = {
            k: cache if v is base else gather_rows(v, idx, e)
            for k, v in kwargs.items()
            if k != "hidden_states"
        }
        with hooks(model, cands[:active], 1):
            out = (
                layers[li](hidden, *rest, **kw) if args else layers[li](hidden_states=hidden, **kw)
            )
        hidden = layer_output_hidden(out)
        own, waiting = cache.layers[li], e_all[active:]  # waiting: their contexts' key/values
        merged.update(
            torch.cat([own.keys, keys[waiting]]), torch.cat([own.values, values[waiting]]), li
        )
    parts = []
    if hidden is not None:
        norm, head = final_norm(model), model.get_output_embeddings()
        logits = head(norm(hidden[:, -1:]))[:, -1].float()  # type: ignore[misc]
        parts.append(soft_cap(logits, getattr(model.config, "final_logit_softcapping", None)))
    parts.append(base_logits[e_all[active:]])
    pos = inputs["position_ids"][:, -1]
    return Prefill(order, torch.cat(parts), merged, mask[e_all], pos[e_all])


def refuse_sharing(model: torch.nn.Module, exc: BaseException) -> bool:
    import warnings

    warnings.warn(
        f"{type(model).__name__}: the shared generation prefill failed ({type(exc).__name__}: "
        f"{exc}); every row runs the whole model (reported as shared: false)",
        stacklevel=3,
    )
    return False


def same_prefill(
    model: torch.nn.Module,
    rows: Sequence[GenRow],
    shared: Prefill,
    hooks: ApplyHooks | None,
    pad_id: int,
    device: torch.device,
) -> bool:
    """Once per model class and dtype: the shared prefill's logits equal the plain prefill's
    (1e-4 of their scale in fp32, 3e-2 in half precision)."""
    plain = plain_prefill(model, rows, shared.order, hooks, pad_id, device)
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
