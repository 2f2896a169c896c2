"""Logit objective: target token's logit minus the best other logit (Fluent Dreaming eq. 3)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from blackbox.evals.token_objective import TokenObjective
from blackbox.forward.token_forward import ForwardOut
from blackbox.search_spaces.tokens import TokenContext


def logit_margin(logits: torch.Tensor, target: int) -> torch.Tensor:
    """``(B,)`` ``logits[:, target] - max_{j != target} logits[:, j]`` of ``logits`` ``(B, V)``."""
    tgt = logits[:, target]
    others = logits.clone()
    others[:, target] = -torch.inf
    return tgt - others.max(dim=-1).values


class LogitObjective(TokenObjective):
    """Margin of ``target_id`` over every other token at the last position.

    Ban the target's variants through ``TokenSpace(banned=[word])`` so that the prompt cannot
    simply contain the word.
    """

    name: ClassVar[str] = "logit"
    metric = "logit_margin"

    def __init__(
        self, model: torch.nn.Module, target_id: int, context: TokenContext | None = None, **kw: Any
    ) -> None:
        super().__init__(model, context, **kw)
        self.target_id = int(target_id)

    def score(self, out: ForwardOut) -> torch.Tensor:
        return logit_margin(out.logits[:, -1].float(), self.target_id)
