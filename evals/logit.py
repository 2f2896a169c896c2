"""Logit objective: target token's logit minus the best other logit (Fluent Dreaming eq. 3).

Read at each document's last position and averaged; standardised like the activation
objectives.  Ban the target's variants from a token space (``logit`` objectives do it by
default) so that the prompt cannot simply contain the word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from blackbox.evals.document_objective import Standardised, at_last
from blackbox.evals.sections import LogitObjectiveConfig
from blackbox.forward.splice import Items, SpliceOut

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


def logit_margin(logits: torch.Tensor, target: int) -> torch.Tensor:
    """``(B,)`` ``logits[:, target] - max_{j != target} logits[:, j]`` of ``logits`` ``(B, V)``."""
    tgt = logits[:, target]
    others = logits.clone()
    others[:, target] = -torch.inf
    return tgt - others.max(dim=-1).values


class LogitObjective(Standardised):
    """Margin of ``target_id`` over every other token at each document's last position."""

    config = LogitObjectiveConfig

    raw_metric = "logit_margin"

    def __init__(
        self, model: torch.nn.Module, splits: dict[str, Items], target_id: int, **kw: Any
    ) -> None:
        super().__init__(model, splits, **kw)
        self.target_id = int(target_id)

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        logits = self.splice.logits(at_last(out.hidden, out)).float()  # (R, V)
        return {"value": logit_margin(logits, self.target_id)}

    @classmethod
    def from_config(cls, section: LogitObjectiveConfig, ctx: BuildContext) -> LogitObjective:
        from blackbox.evals.activation import _splits, _standardise_kw
        from blackbox.models.loading import first_token_id

        o = section
        target = first_token_id(ctx.tokenizer, o.target)
        return cls(ctx.model, _splits(o, ctx), target, **_standardise_kw(o), **ctx.objective_kw())

    @classmethod
    def prompt_bans(cls, section: LogitObjectiveConfig) -> tuple[str, ...]:
        """The target word (``ban_variants``, the default): a prompt may not simply contain
        it."""
        return (section.target.strip(),) if section.ban_variants else ()
