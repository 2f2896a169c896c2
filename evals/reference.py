"""Reference objective: teacher-forced cross-entropy of a target string (GCG's loss).

The sequence is ``[prefix | tokens | suffix | target]``; the value is minus the mean
cross-entropy of the target tokens (maximised), ``metrics["loss"]`` the cross-entropy itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from blackbox.evals.token_objective import TokenObjective
from blackbox.forward.token_forward import ForwardOut
from blackbox.search_spaces.tokens import TokenContext


def target_xentropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean CE of ``target`` ``(m,)`` given ``logits`` ``(B, m, V)`` predicting it."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, m, V)
    idx = target.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return -logp.gather(-1, idx).squeeze(-1).mean(-1)


class ReferenceObjective(TokenObjective):
    """Minus the teacher-forced CE of ``target_ids`` after the prompt (GCG's objective)."""

    name: ClassVar[str] = "reference"
    metric = "neg_loss"

    def __init__(
        self,
        model: torch.nn.Module,
        target_ids: Sequence[int],
        context: TokenContext | None = None,
        **kw: Any,
    ) -> None:
        ctx = context or TokenContext()
        self.target_ids = tuple(int(t) for t in target_ids)
        if not self.target_ids:
            raise ValueError("reference: empty target")
        full = TokenContext(ctx.prefix_ids, tuple(ctx.suffix_ids) + self.target_ids)
        super().__init__(model, full, **kw)
        self._target = torch.tensor(self.target_ids, device=self.forward.device)

    def score(self, out: ForwardOut) -> torch.Tensor:
        m = len(self.target_ids)
        logits = out.logits[:, -m - 1 : -1]  # (B, m, V) predicting the target
        return -target_xentropy(logits, self._target)

    def metrics_of(self, values: np.ndarray) -> list[dict[str, Any]]:
        return [{"loss": float(-v)} for v in values]
