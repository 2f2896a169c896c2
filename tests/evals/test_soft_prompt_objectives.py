"""Soft-prompt objectives on a tiny model with the real tokenizer: exact values, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.evals.soft_prompt import BehaviourMatching, SoftClassification, place, render
from blackbox.search_spaces.soft_prompt import SoftPrompt

ROWS = [
    {"query": "A warm, funny film.", "gold": 1},
    {"query": "Dull and far too long.", "gold": 0},
    {"query": "The best thing this year, by a mile.", "gold": 1},
]


@pytest.fixture(scope="module")
def clf(tiny_llama, tokenizer) -> SoftClassification:
    user, _ = place("Review: {query}\nAnswer:", "after_input")
    return SoftClassification.from_rows(
        tiny_llama,
        tokenizer,
        {"search": ROWS, "heldout": ROWS[:2]},
        user,
        ["negative", "positive"],
        max_rows=4,  # forces several chunks
    )


def test_place_and_render_split_at_the_soft_marker(tokenizer) -> None:
    assert place("Review: {query}\nAnswer:", "after_input") == (
        "Review: {query}\n{soft}\nAnswer:",
        None,
    )
    assert place("Q: {query}", "before_input") == ("{soft}Q: {query}", None)
    assert place("Q: {query}", "system") == ("Q: {query}", "{soft}")
    before, after = render(tokenizer, "Q: hi", "{soft}", chat=True)
    assert before.endswith("system\n") and "Q: hi" in after and after.endswith("assistant\n")
    with pytest.raises(ValueError, match="exactly one"):
        render(tokenizer, "no marker")
    with pytest.raises(ValueError, match="allowed before_input"):
        place("Q: {query}", "middle")


def test_classification_value_equals_manual_forward(clf, tiny_llama, tokenizer) -> None:
    soft = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 0.05
    ev = clf.evaluate([SoftPrompt(s) for s in soft])
    emb = tiny_llama.get_input_embeddings()
    labels = [tokenizer(" negative")["input_ids"][0], tokenizer(" positive")["input_ids"][0]]
    for c in range(2):
        norm, acc = [], []
        for r in ROWS:
            pre = tokenizer(f"Review: {r['query']}\n", add_special_tokens=False)["input_ids"]
            post = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
            x = torch.cat([emb(torch.tensor(pre)), soft[c], emb(torch.tensor(post))])[None]
            lab = torch.log_softmax(tiny_llama(inputs_embeds=x).logits[0, -1], -1)[labels]
            norm.append(float(torch.log_softmax(lab, -1)[r["gold"]]))
            acc.append(float(int(lab.argmax()) == r["gold"]))
        assert ev.values[c] == pytest.approx(np.mean(norm), abs=1e-5)
        assert ev.metrics[c]["acc"] == pytest.approx(np.mean(acc))
    assert ev.cost == 2 * len(ROWS)


def test_candidates_of_different_lengths_in_one_call(clf) -> None:
    a, b = torch.zeros(2, 64), torch.ones(5, 64) * 0.01
    ev = clf.evaluate([SoftPrompt(a), SoftPrompt(b), SoftPrompt(a)])
    assert ev.values[0] == ev.values[2] != ev.values[1]
    assert clf.evaluate([SoftPrompt(a)], split="heldout", limit=1).cost == 1


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
        SoftClassification(tiny_llama, {}, [5, 5])


def test_behaviour_reference_prompt_matches_its_own_greedy_completion(
    tiny_llama, tokenizer
) -> None:
    obj, texts = BehaviourMatching.from_prompts(
        tiny_llama,
        tokenizer,
        "Talk only about cats.",
        {"search": ["What should I cook tonight?", "Tell me about the sea."]},
        placement="system",
        max_new_tokens=6,
        k=4,
    )
    assert len(texts["search"]) == 2
    ref_ids = tokenizer("Talk only about cats.", add_special_tokens=False)["input_ids"]
    reference = SoftPrompt(tiny_llama.get_input_embeddings()(torch.tensor(ref_ids)))
    noise = SoftPrompt(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)))
    ev = obj.evaluate([reference, noise])
    # greedy completions under the reference are its own argmax: exact match, full overlap
    assert ev.metrics[0]["exact_match_at_k"] == 1.0 and ev.metrics[0]["overlap_at_k"] == 1.0
    assert ev.values[0] != ev.values[1]
    assert ev.metrics[1]["exact_match_at_k"] <= ev.metrics[1]["overlap_at_k"] <= 1.0


def test_behaviour_weights_the_first_k_tokens(tiny_llama, tokenizer) -> None:
    kw = dict(placement="system", max_new_tokens=6)
    prompts = {"search": ["Name a colour."]}
    heavy, _ = BehaviourMatching.from_prompts(
        tiny_llama, tokenizer, "Be brief.", prompts, k=2, weight=5.0, **kw
    )
    flat, _ = BehaviourMatching.from_prompts(
        tiny_llama, tokenizer, "Be brief.", prompts, k=2, weight=1.0, **kw
    )
    soft = SoftPrompt(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 0.1)
    start, comp = flat.items("search").targets[0]
    # manual per-token cross-entropy under the soft prompt
    out = flat.forward(soft.embeddings[None], flat.items("search").pre, flat.items("search").post)
    pos = out.n_soft + start - 1 + torch.arange(len(comp))
    nll = torch.nn.functional.cross_entropy(
        flat.forward.logits(out.hidden[0, pos]), torch.tensor(comp), reduction="none"
    )
    w = torch.where(torch.arange(len(comp)) < 2, 5.0, 1.0)
    assert flat.evaluate([soft]).values[0] == pytest.approx(-float(nll.mean()), abs=1e-5)
    assert heavy.evaluate([soft]).values[0] == pytest.approx(
        -float((nll * w).sum() / w.sum()), abs=1e-5
    )


def test_more_candidates_than_rows_are_scored_in_groups(clf) -> None:
    soft = torch.randn(9, 2, 64, generator=torch.Generator().manual_seed(2)) * 0.05
    together = clf.evaluate([SoftPrompt(s) for s in soft]).values  # max_rows=4: 3 groups
    alone = [clf.evaluate([SoftPrompt(s)]).values[0] for s in soft]
    np.testing.assert_allclose(together, alone, atol=1e-5)
