"""An lm-eval split's requests as documents for a prompt (the splice engine's side).

:func:`request_items` turns a split's requests into :class:`ChoiceItems` with the prompt before
the context or between context and continuation; :func:`continuation_scores` reads each
choice's summed log-likelihood and greedy flag from a forward pass over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from blackbox.errors import UserError
from blackbox.evals.document_objective import states_before
from blackbox.evals.lm_eval_requests import PreparedSplit
from blackbox.forward.splice import Items, Splice, SpliceOut

PROMPT_PLACEMENTS = ("before_input", "after_input")


@dataclass
class ChoiceItems(Items):
    """Items of an lm-eval split under a prompt: each item is one context with the
    continuations read from it.

    Attributes:
        requests: per item, the request indices it scores.
        choices: per item, each request's continuation ids.
        offset: per item, where the continuations start in ``post``: the state at
            ``post_start + offset - 1 + j`` predicts continuation token ``j``.
    """

    requests: list[list[int]] = field(default_factory=list)
    choices: list[list[list[int]]] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)

    def subset(self, idx: Sequence[int]) -> ChoiceItems:
        idx = list(idx)
        return ChoiceItems(
            [self.pre[i] for i in idx],
            [self.post[i] for i in idx],
            requests=[self.requests[i] for i in idx],
            choices=[self.choices[i] for i in idx],
            offset=[self.offset[i] for i in idx],
        )


def request_items(prep: PreparedSplit, placement: str) -> ChoiceItems:
    """The requests of a split as items, the prompt where ``placement`` says.

    The requests of one document that share a context and whose continuations are one token
    each (the choices of most multiple-choice tasks) become one item: the context runs once
    and every choice is read at its last position.  Other requests are an item each, the
    continuation appended (teacher forcing).

    Without a chat template the prompt goes before the whole context (``before_input``) or
    right after it, before the continuation (``after_input``).  In chat-template mode
    (``prep.splice_at``) it goes inside the rendered chat, at the start or the end of the
    last user turn's text (the document's question; the chat template's headers, the system
    turn and the assistant header stay where the template puts them).
    """
    if placement not in PROMPT_PLACEMENTS:
        raise UserError(
            f"placement {placement!r}: an lm-eval task takes {', '.join(PROMPT_PLACEMENTS)}"
        )
    out = ChoiceItems([], [])
    for reqs in prep.requests_of_doc:
        groups: dict[tuple[int, ...], list[int]] = {}
        for r in reqs:
            ctx, cont = prep.pairs[r]
            key = tuple(ctx) if len(cont) == 1 else (-1 - r,)  # unique key: not shared
            groups.setdefault(key, []).append(r)
        for members in groups.values():
            ctx = list(prep.pairs[members[0]][0])
            conts = [list(prep.pairs[r][1]) for r in members]
            tail = conts[0] if len(members) == 1 and len(conts[0]) > 1 else []
            where = (0, len(ctx)) if prep.splice_at is None else prep.splice_at[members[0]]
            at = where[0] if placement == "before_input" else where[1]
            out.pre.append(ctx[:at])
            out.post.append(ctx[at:] + tail)
            out.offset.append(len(ctx) - at)
            out.requests.append(members)
            out.choices.append(conts)
    return out


def continuation_scores(splice: Splice, out: SpliceOut, items: Items, c: int) -> dict[str, Any]:
    """Per item and choice: the continuation's summed log-likelihood and whether every token
    is greedy -> ``{"ll": (R, K), "greedy": (R, K)}`` (``K`` the most choices of an item)."""
    assert isinstance(items, ChoiceItems)
    dev = out.hidden.device
    k_max = max(len(ch) for ch in items.choices)
    t_max = max(len(cont) for ch in items.choices for cont in ch)
    m = len(items)
    offset = torch.zeros(m, k_max, t_max, dtype=torch.long, device=dev)
    tgt = torch.zeros(m, k_max, t_max, dtype=torch.long, device=dev)
    valid = torch.zeros(m, k_max, t_max, dtype=torch.bool, device=dev)
    for i, (start, conts) in enumerate(zip(items.offset, items.choices)):
        for k, cont in enumerate(conts):
            n = len(cont)
            offset[i, k, :n] = start - 1 + torch.arange(n, device=dev)
            tgt[i, k, :n] = torch.tensor(cont, device=dev)
            valid[i, k, :n] = True
    offset, tgt, valid = (
        x.repeat(c, 1, 1).reshape(c * m, k_max * t_max) for x in (offset, tgt, valid)
    )
    h = states_before(out, out.post_start[:, None] + offset)  # (R, K*T, d)
    logp = torch.log_softmax(splice.logits(h).float(), dim=-1)  # (R, K*T, V)
    tok = (logp.gather(2, tgt[..., None])[..., 0] * valid).reshape(c * m, k_max, t_max)
    hit = ((logp.argmax(-1) == tgt) | ~valid).reshape(c * m, k_max, t_max)
    return {"ll": tok.sum(2), "greedy": hit.all(2).float()}
