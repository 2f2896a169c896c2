"""The logit objective: the target's margin over every other token, exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.api import Problem, PromptIntervention
from blackbox.evals.documents import layout
from blackbox.evals.logit import LogitObjective, logit_margin
from blackbox.search_spaces.tokens.space import TokenSpace
from blackbox.testing.objectives import ObjectiveConformance


def test_logit_margin_pure() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert logit_margin(logits, 1).tolist() == [1.0, -5.0]


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_logit_objective_matches_a_plain_forward(arch, request, tokenizer) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    items = layout(tokenizer, ["Hello there", "A cat"], placement="before_input")[0]
    obj = LogitObjective(model, {"search": items}, target_id=1234)
    ids = np.random.default_rng(0).integers(100, 49000, size=(3, 4)).tolist()
    ev = obj.evaluate(PromptIntervention.of_ids(ids))
    for c in range(3):
        margins = []
        for pre, post in zip(items.pre, items.post):
            with torch.no_grad():
                last = model(input_ids=torch.tensor([pre + ids[c] + post])).logits[0, -1]
            cap = getattr(model.config, "final_logit_softcapping", None)
            if cap:  # the HF forward applies it; so does the splice's logits()
                pass
            others = torch.cat([last[:1234], last[1235:]]).max()
            margins.append(float(last[1234] - others))
        assert ev.values[c] == pytest.approx(np.mean(margins), abs=1e-4)


class TestLogitConformance(ObjectiveConformance):
    component = "logit"

    @pytest.fixture
    def problem(self, tiny_gemma, tokenizer):
        items = layout(tokenizer, ["Hello there", "A cat", "Why"], placement="before_input")[0]
        obj = LogitObjective(tiny_gemma, {"search": items}, target_id=1234, max_rows=4)
        return Problem(TokenSpace(tokenizer, n_tokens=3), obj)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(4, np.random.default_rng(0))
