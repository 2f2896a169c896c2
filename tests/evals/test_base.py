"""The objective base: repeats, rejected token prompts, gradient oracles, fluency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.api import PromptIntervention
from blackbox.evals.activation import ResidualDirectionObjective
from blackbox.evals.documents import layout


@pytest.fixture(scope="module")
def obj(tiny_llama, tokenizer):
    items = layout(tokenizer, ["The sea", "A cat sat"], placement="after_input", chat=True)[0]
    o = ResidualDirectionObjective(tiny_llama, {"search": items}, 2, torch.randn(64))
    o.enable_fluency()
    return o


def test_rejected_and_repeated_candidates_cost_nothing(obj) -> None:
    obj.reset_cache()
    iv = PromptIntervention.of_ids([[5, 6], [7, 8], [5, 6]], valid=[True, False, True])
    ev = obj.evaluate(iv)
    assert np.isnan(ev.values[1]) and ev.metrics[1]["rejected"]
    assert ev.values[0] == ev.values[2] and ev.cost == 1 * 2  # one prompt, two documents
    assert [m["cache_hit"] for m in ev.metrics] == [False, False, True]
    assert ev.extra.shape == (3, 1) and np.isnan(ev.extra[1, 0]) and ev.extra[0, 0] > 0
    np.testing.assert_allclose(
        obj.recent_xentropy(np.array([[5, 6], [7, 8]])), [ev.extra[0, 0], np.nan]
    )
    obj.reset_cache(keep=[iv.keys[0]])
    again = obj.evaluate(iv)
    assert again.cost == 0 and again.metrics[0]["cache_hit"]


def test_token_gradients_are_the_embedding_gradient_through_the_vocabulary(obj, tiny_llama) -> None:
    ids = np.array([[300, 301, 302], [40, 41, 42]])
    lam = np.array([0.0, 0.7])
    tg = obj.token_gradients(ids, lam)
    ev = obj.evaluate(PromptIntervention.of_ids(ids.tolist()))
    np.testing.assert_allclose(tg.values, ev.values, atol=1e-5)
    np.testing.assert_allclose(tg.xentropy, ev.extra[:, 0], atol=1e-4)
    assert tg.cost == 2 * 3 * 2  # prompts x (forward + backward) x documents
    w = tiny_llama.get_input_embeddings().weight
    emb = w[torch.as_tensor(ids)].detach().clone().requires_grad_(True)
    st = obj.stats("search", prompt=emb, tokens=torch.as_tensor(ids))
    # with lambda the fluency term differs between one-hot and ids; row 0 has lambda 0
    (g,) = torch.autograd.grad(st["value"][0], emb)
    np.testing.assert_allclose(tg.grad[0], (g[0] @ w.T).numpy(), atol=1e-4, rtol=1e-3)
    # a small step along the gradient in embedding space raises the value (first order)
    step = 1e-2 * g / g.norm()
    up = obj.stats("search", prompt=(emb + step).detach())["value"][0]
    assert float(up) > float(st["value"][0].detach())
