"""Classification by label words under a prompt or steering: exact, differentiable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.api import Problem, PromptIntervention
from blackbox.evals.classification import Classification
from blackbox.search_spaces.soft_prompt.space import SoftPromptSpace
from blackbox.testing.objectives import ObjectiveConformance

ROWS = [
    {"query": "A warm, funny film.", "gold": 1},
    {"query": "Dull and far too long.", "gold": 0},
    {"query": "The best thing this year, by a mile.", "gold": 1},
]
LAYOUT = {"template": "Review: {query}\nAnswer:", "placement": "after_input"}


@pytest.fixture(scope="module")
def clf(tiny_llama, tokenizer) -> Classification:
    return Classification.from_rows(
        tiny_llama,
        tokenizer,
        {"search": ROWS, "heldout": ROWS[:2]},
        ["negative", "positive"],
        LAYOUT,
        max_rows=4,
    )  # forces several chunks


def test_value_equals_a_plain_forward(clf, tiny_llama, tokenizer) -> None:
    soft = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 0.05
    ev = clf.evaluate(PromptIntervention.of_embeddings(list(soft)))
    emb = tiny_llama.get_input_embeddings()
    labels = [tokenizer(" negative")["input_ids"][0], tokenizer(" positive")["input_ids"][0]]
    for c in range(2):
        norm, acc = [], []
        for r in ROWS:
            pre = tokenizer(f"Review: {r['query']}\n", add_special_tokens=False)["input_ids"]
            post = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
            x = torch.cat([emb(torch.tensor(pre)), soft[c], emb(torch.tensor(post))])[None]
            with torch.no_grad():
                lab = torch.log_softmax(tiny_llama(inputs_embeds=x).logits[0, -1], -1)[labels]
            norm.append(float(torch.log_softmax(lab, -1)[r["gold"]]))
            acc.append(float(int(lab.argmax()) == r["gold"]))
        assert ev.values[c] == pytest.approx(np.mean(norm), abs=1e-5)
        assert ev.metrics[c]["acc"] == pytest.approx(np.mean(acc))
    assert ev.cost == 2 * len(ROWS)


def test_prompts_of_different_lengths_in_one_call(clf) -> None:
    a, b = torch.zeros(2, 64), torch.ones(5, 64) * 0.01
    ev = clf.evaluate(PromptIntervention([a, b, a], [None] * 3, [True] * 3, ["a", "b", "a2"]))
    assert ev.values[0] == ev.values[2] != ev.values[1]
    one = clf.evaluate(PromptIntervention.of_embeddings([a]), split="heldout", limit=1)
    assert one.cost == 1


def test_loss_is_differentiable_and_minibatches_average(clf) -> None:
    soft = (
        torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(1)) * 0.05
    ).requires_grad_()
    full = clf.loss(soft)
    full.sum().backward()
    assert soft.grad.abs().sum() > 0
    parts = [float(clf.loss(soft.detach(), idx=[i])[0]) for i in range(len(ROWS))]
    assert float(full[0].detach()) == pytest.approx(np.mean(parts), abs=1e-5)


def test_labels_must_start_with_distinct_tokens(tiny_llama) -> None:
    with pytest.raises(ValueError, match="distinct tokens"):
        Classification(tiny_llama, {}, [5, 5])


class TestClassificationConformance(ObjectiveConformance):
    component = "classification"

    @pytest.fixture
    def problem(self, clf, tiny_llama):
        p0 = tiny_llama.get_input_embeddings().weight[:3].detach().clone()
        return Problem(SoftPromptSpace(p0, sigma=0.05, subspace_dim=8), clf)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(5, np.random.default_rng(0))
