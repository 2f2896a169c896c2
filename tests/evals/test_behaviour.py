"""Teacher-forced targets: a fixed string (GCG's loss) and the model's own behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blackbox.api import Problem, PromptIntervention
from blackbox.evals.behaviour import BehaviourMatching, ReferenceObjective
from blackbox.search_spaces.tokens.space import TokenSpace
from blackbox.testing.objectives import ObjectiveConformance

LAYOUT = {"placement": "after_input", "prefix": "", "suffix": " ok"}


def test_reference_is_minus_teacher_forced_ce(tiny_llama, tokenizer) -> None:
    docs = {"search": ["Tell me about the weather.", "Hi"]}
    obj = ReferenceObjective.from_documents(tiny_llama, tokenizer, docs, "Sure, here", LAYOUT)
    target = tokenizer("Sure, here", add_special_tokens=False)["input_ids"]
    ids = np.random.default_rng(0).integers(100, 49000, size=(3, 5)).tolist()
    ev = obj.evaluate(PromptIntervention.of_ids(ids))
    items = obj.items("search")
    for c in range(3):
        ces = []
        for pre, post in zip(items.pre, items.post):
            full = torch.tensor([pre + ids[c] + post])  # post ends with the target
            with torch.no_grad():
                logits = tiny_llama(input_ids=full).logits[0]
            m = len(target)
            ces.append(float(F.cross_entropy(logits[-m - 1 : -1], full[0, -m:])))
        assert -ev.values[c] == pytest.approx(np.mean(ces), abs=1e-5)
        assert ev.metrics[c]["loss"] == pytest.approx(np.mean(ces), abs=1e-5)
    tg = obj.token_gradients(np.array(ids[:1]))
    assert tg.grad.shape == (1, 5, tiny_llama.config.vocab_size)
    assert tg.values[0] == pytest.approx(ev.values[0], abs=1e-5) and tg.cost == 3 * 2


def test_behaviour_reference_prompt_matches_its_own_greedy_completion(tiny_llama, tokenizer):
    lay = {"placement": "system", "chat": True}
    obj, texts = BehaviourMatching.from_prompts(
        tiny_llama,
        tokenizer,
        "Talk only about cats.",
        {"search": ["What should I cook tonight?", "Tell me about the sea."]},
        lay,
        lay,
        max_new_tokens=6,
        k=4,
    )
    assert len(texts["search"]) == 2
    ref_ids = tokenizer("Talk only about cats.", add_special_tokens=False)["input_ids"]
    noise = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    ev = obj.evaluate(
        PromptIntervention([None, noise], [tuple(ref_ids), None], [True, True], ["ref", "noise"])
    )
    # greedy completions under the reference are its own argmax: exact match, full overlap
    assert ev.metrics[0]["exact_match_at_k"] == 1.0 and ev.metrics[0]["overlap_at_k"] == 1.0
    assert ev.values[0] != ev.values[1]
    assert ev.metrics[1]["exact_match_at_k"] <= ev.metrics[1]["overlap_at_k"] <= 1.0


def test_behaviour_weights_the_first_k_tokens(tiny_llama, tokenizer) -> None:
    lay = {"placement": "system", "chat": True}
    prompts = {"search": ["Name a colour."]}
    kw = dict(max_new_tokens=6, k=2)
    heavy, _ = BehaviourMatching.from_prompts(
        tiny_llama, tokenizer, "Be brief.", prompts, lay, lay, weight=5.0, **kw
    )
    flat, _ = BehaviourMatching.from_prompts(
        tiny_llama, tokenizer, "Be brief.", prompts, lay, lay, weight=1.0, **kw
    )
    soft = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    items = flat.items("search")
    start, comp = items.targets[0]
    emb = tiny_llama.get_input_embeddings()
    seq = torch.cat([emb(torch.tensor(items.pre[0])), soft, emb(torch.tensor(items.post[0]))])
    with torch.no_grad():
        logits = tiny_llama(inputs_embeds=seq[None]).logits[0]
    first = len(items.pre[0]) + 3 + start  # where the completion starts
    nll = F.cross_entropy(
        logits[first - 1 : first - 1 + len(comp)], torch.tensor(comp), reduction="none"
    )
    w = torch.where(torch.arange(len(comp)) < 2, 5.0, 1.0)
    iv = PromptIntervention.of_embeddings([soft])
    assert flat.evaluate(iv).values[0] == pytest.approx(-float(nll.mean()), abs=1e-5)
    assert heavy.evaluate(iv).values[0] == pytest.approx(
        -float((nll * w).sum() / w.sum()), abs=1e-5
    )


class TestReferenceConformance(ObjectiveConformance):
    component = "reference"

    @pytest.fixture
    def problem(self, tiny_gpt2, tokenizer):
        docs = {"search": ["Tell me about the weather.", "Hi", "Why?"]}
        obj = ReferenceObjective.from_documents(
            tiny_gpt2, tokenizer, docs, "Sure, here", LAYOUT, max_rows=4
        )
        return Problem(TokenSpace(tokenizer, n_tokens=3), obj)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(4, np.random.default_rng(3))


class TestBehaviourConformance(ObjectiveConformance):
    component = "behaviour"

    @pytest.fixture
    def problem(self, tiny_llama, tokenizer):
        lay = {"placement": "system", "chat": True}
        docs = {"search": ["Name a colour.", "Tell me about the sea.", "Hi"]}
        obj, _ = BehaviourMatching.from_prompts(
            tiny_llama, tokenizer, "Talk only about cats.", docs, lay, lay, max_new_tokens=6, k=4
        )
        return Problem(TokenSpace(tokenizer, n_tokens=3), obj)

    @pytest.fixture
    def candidates(self, problem):
        return problem.space.sample(4, np.random.default_rng(1))
