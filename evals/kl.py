"""Capability retention: KL divergence of an intervened model from the base model on neutral text.

For a text ``t_1..t_L`` and an intervention (steering hooks, or a prompt placed before the
text) the value is the mean per-token divergence of the intervened next-token distribution
``q_j`` from the base model's ``p_j`` at every position ``j`` of the text::

    KL_j = sum_v q_j(v) (log q_j(v) - log p_j(v))        value = mean_texts mean_j KL_j

(nats per token; 0 for the unintervened model, minimised).  Candidates run through the shared
splice engine (``C`` candidates x ``D`` texts per forward call); the base model's log-probs are
computed once per text and kept, so a candidate costs one forward-pass equivalent per text.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from blackbox.api import HOOKS, PROMPT, ObjectiveTraits
from blackbox.errors import UserError
from blackbox.evals.document_objective import DocumentObjective
from blackbox.forward.splice import Items, SpliceOut


def token_kl(logq: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``(..., )`` KL(q || p) of log-probabilities ``(..., V)`` (float64 accumulation)."""
    logq, logp = logq.double(), logp.double()
    return (logq.exp() * (logq - logp)).sum(-1).clamp(min=0.0)


class KLDivergence(DocumentObjective):
    """Mean per-token KL(intervened || base) over texts (see the module docstring).

    Args:
        model: the causal LM.
        splits: texts as ``Items`` with empty ``pre`` and the text's ids as ``post``.
        max_rows: rows (candidates x texts) per forward call.
        cache_mb: memory for cached ``pre`` key/values (unused: ``pre`` is empty).
    """

    traits = ObjectiveTraits(interventions=frozenset({HOOKS, PROMPT}), gradients=False)
    metric = "kl"

    def __init__(self, model: torch.nn.Module, splits: dict[str, Items], **kw: Any) -> None:
        super().__init__(model, splits, **kw)
        for name, items in splits.items():
            if any(p for p in items.pre) or any(len(q) < 2 for q in items.post):
                raise UserError(f"kl: split {name!r}: texts need >= 2 tokens and no pre")
        self._base: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def from_texts(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        texts: dict[str, list[str]],
        max_tokens: int = 32,
        **kw: Any,
    ) -> KLDivergence:
        """Texts by split, tokenised without special tokens and cut to ``max_tokens``."""
        splits = {}
        for split, rows in texts.items():
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in rows]
            ids = [list(map(int, i)) for i in ids if len(i) >= 2]
            if ids:
                splits[split] = Items([[] for _ in ids], ids)
        if "search" not in splits:
            raise UserError("kl: no text of two tokens or more")
        return cls(model, splits, **kw)

    # -- the base model -----------------------------------------------------------------------
    def base_logprobs(self, post: list[int]) -> torch.Tensor:
        """``(L, V)`` base log-probabilities at each position of one text (computed once)."""
        key = tuple(post)
        if key not in self._base:
            with torch.no_grad():
                out = self.splice(Items([[]], [list(post)]))  # no prompt, no hooks
                logits = self.splice.logits(out.hidden[0, : len(post)]).float()
            self._base[key] = F.log_softmax(logits, dim=-1)
        return self._base[key]

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        d_items = len(items)
        values = torch.zeros(out.hidden.shape[0], dtype=torch.float64, device=out.hidden.device)
        for r in range(out.hidden.shape[0]):  # one row's (L, V) logits at a time: bounded memory
            post = items.post[r % d_items]
            at = int(out.post_start[r])
            logits = self.splice.logits(out.hidden[r, at : at + len(post)]).float()  # (L, V)
            logq = F.log_softmax(logits, dim=-1)
            values[r] = token_kl(logq, self.base_logprobs(post).to(logq.device)).mean()
        return {"value": values.float()}

    def reference_cost(self) -> float:
        """Forward-pass equivalents spent on base log-probs so far (one per text)."""
        return float(len(self._base))
