"""Fluency objective: minus the prompt's self cross-entropy under the model.

Every :class:`~blackbox.evals.token_objective.TokenObjective` already reports the same quantity
as its secondary objective (``extra[:, 0]``, name ``"xentropy"``); this class makes it the
primary one (for example to search for fluent prompts alone).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from blackbox.evals.token_objective import TokenObjective
from blackbox.forward.token_forward import ForwardOut, prompt_xentropy


class FluencyObjective(TokenObjective):
    """``-mean_i CE(token_i | tokens_<i, prefix)`` (higher is more fluent)."""

    name: ClassVar[str] = "fluency"
    metric = "neg_xentropy"

    def score(self, out: ForwardOut) -> torch.Tensor:
        return -prompt_xentropy(out.next_logits, out.tokens, out.first_predicted)
