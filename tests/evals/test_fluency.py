"""Fluency: minus a token prompt's self cross-entropy, exact, token prompts only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blackbox.api import Problem, PromptIntervention
from blackbox.evals.documents import layout
from blackbox.evals.fluency import FluencyObjective
from blackbox.search_spaces.tokens.space import TokenSpace
from blackbox.testing.objectives import ObjectiveConformance


def test_fluency_is_minus_the_prompts_cross_entropy_in_the_first_document(
    tiny_llama, tokenizer
) -> None:
    items = layout(tokenizer, ["Once upon", "The sea"], placement="after_input")[0]
    obj = FluencyObjective(tiny_llama, {"search": items})
    ids = np.random.default_rng(0).integers(100, 49000, size=(2, 4)).tolist()
    ev = obj.evaluate(PromptIntervention.of_ids(ids))
    pre = items.pre[0]  # fluency is measured in the first document's context
    for c in range(2):
        full = torch.tensor([pre + ids[c]])
        with torch.no_grad():
            logits = tiny_llama(input_ids=full).logits[0]
        ce = float(F.cross_entropy(logits[len(pre) - 1 : -1], full[0, len(pre) :]))
        assert ev.values[c] == pytest.approx(-ce, abs=1e-5)
    with pytest.raises(ValueError, match="token prompts only"):
        obj.evaluate(PromptIntervention.of_embeddings([torch.zeros(2, 64)]))


class TestFluencyConformance(ObjectiveConformance):
    component = "fluency"
    per_document = False  # measured in the first document's context

    @pytest.fixture
    def problem(self, tiny_llama, tokenizer):
        items = layout(tokenizer, ["Once upon", "The sea"], placement="after_input")[0]
        return Problem(
            TokenSpace(tokenizer, n_tokens=4), FluencyObjective(tiny_llama, {"search": items})
        )

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(4, np.random.default_rng(0))
