"""Fluency objective: minus a token prompt's self cross-entropy under the model.

Every objective scoring a token space already reports the same quantity as its second
objective (``xentropy``, for Pareto fronts); this class makes it the primary one, for example
to search for fluent prompts alone.  Token prompts only (it reads the prompt's ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from blackbox.api import PER_DOC, PROMPT, ObjectiveTraits
from blackbox.evals.document_objective import DocumentObjective
from blackbox.evals.sections import FluencyObjectiveConfig
from blackbox.forward.splice import Items, SpliceOut

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


class FluencyObjective(DocumentObjective):
    """``-mean_i CE(token_i | tokens_<i, pre)`` averaged over documents (higher: more fluent)."""

    config = FluencyObjectiveConfig

    # measured in one document's context: nothing per document to race on
    traits = ObjectiveTraits(
        interventions=frozenset({PROMPT}), needs_token_ids=True, per_document=False
    )
    metric = "neg_xentropy"

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        return {"value": out.hidden.new_zeros(out.hidden.shape[0])}

    def transform(self, st: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "xentropy" not in st:
            raise ValueError("fluency: scores token prompts only (their ids are needed)")
        out = {**st, "value": -st["xentropy"]}
        out.pop(PER_DOC, None)  # measured in one document's context: no per-document values
        return out

    @classmethod
    def from_config(cls, section: FluencyObjectiveConfig, ctx: BuildContext) -> FluencyObjective:
        from blackbox.evals.activation import _splits

        return cls(ctx.model, _splits(section, ctx), **ctx.objective_kw())
