"""KL retention: exact against a plain per-text forward with hand-written hooks and softmaxes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blackbox.api import HookIntervention, PromptIntervention
from blackbox.evals.kl import KLDivergence, token_kl
from blackbox.forward.hooks import add_per_row
from blackbox.models.layers import decoder_layers

TEXTS = [
    "Johnson is asking Santa for a Christmas recovery",
    "Five key areas Sunak must tackle",
    "Rain expected across the north on Sunday",
]


def _hooks(model: torch.nn.Module, coeffs: list[float], layer: int = 1) -> HookIntervention:
    v = torch.linspace(-1, 1, model.config.hidden_size)

    def apply(m: Any, rows: torch.Tensor, repeat: int = 1) -> Any:
        return add_per_row(m, {layer: torch.stack([coeffs[int(r)] * v for r in rows])}, repeat)

    return HookIntervention(apply, [layer] * len(coeffs), [("c", c) for c in coeffs])


def _plain_kl(model: Any, ids: list[int], coeff: float, layer: int = 1) -> float:
    """Mean over positions of sum_v q (log q - log p): one text, no batching, plain hooks."""
    v = torch.linspace(-1, 1, model.config.hidden_size)
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = F.log_softmax(model(x).logits[0].double(), -1)

        def hook(_m: Any, _a: Any, out: Any) -> Any:
            return (out[0] + coeff * v, *out[1:]) if isinstance(out, tuple) else out + coeff * v

        h = decoder_layers(model)[layer].register_forward_hook(hook)
        try:
            logq = F.log_softmax(model(x).logits[0].double(), -1)
        finally:
            h.remove()
    return float((logq.exp() * (logq - logp)).sum(-1).mean())


def _objective(model: Any, tokenizer: Any) -> KLDivergence:
    return KLDivergence.from_texts(model, tokenizer, {"search": TEXTS}, max_tokens=8, max_rows=4)


def test_kl_of_steering_equals_plain_computation(tiny_llama: Any, tokenizer: Any) -> None:
    kl = _objective(tiny_llama, tokenizer)
    coeffs = [0.0, 0.5, 2.0]
    ev = kl.evaluate(_hooks(tiny_llama, coeffs))
    items = kl.items("search")
    want = [np.mean([_plain_kl(tiny_llama, ids, c) for ids in items.post]) for c in coeffs]
    np.testing.assert_allclose(ev.values, want, rtol=1e-4, atol=1e-7)
    assert ev.values[0] == pytest.approx(0.0, abs=1e-6) and ev.values[2] > ev.values[1] > 1e-4
    per_doc = [_plain_kl(tiny_llama, ids, 2.0) for ids in items.post]
    np.testing.assert_allclose(ev.per_doc[2], per_doc, rtol=1e-4, atol=1e-7)
    # one forward-pass equivalent per text and candidate; the base pass is a one-off
    assert ev.cost == 3 * len(TEXTS) and kl.reference_cost() == len(TEXTS)
    again = kl.evaluate(_hooks(tiny_llama, coeffs))
    assert again.cost == 0.0 and kl.reference_cost() == len(TEXTS)


def test_kl_of_token_prompt_equals_plain_computation(tiny_llama: Any, tokenizer: Any) -> None:
    kl = _objective(tiny_llama, tokenizer)
    prompt = [11, 22, 33]
    ev = kl.evaluate(PromptIntervention.of_ids([prompt, []]))
    want = []
    for ids in kl.items("search").post:
        with torch.no_grad():
            logp = F.log_softmax(tiny_llama(torch.tensor([ids])).logits[0].double(), -1)
            out = tiny_llama(torch.tensor([prompt + ids])).logits[0, len(prompt) :]
            logq = F.log_softmax(out.double(), -1)
        want.append(float(F.kl_div(logp, logq, log_target=True, reduction="none").sum(-1).mean()))
    assert ev.values[0] == pytest.approx(np.mean(want), rel=1e-4)
    assert ev.values[1] == pytest.approx(0.0, abs=1e-6)


def test_token_kl_is_zero_on_equal_and_positive_otherwise() -> None:
    a = F.log_softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), -1)
    b = F.log_softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(1)), -1)
    assert torch.allclose(token_kl(a, a), torch.zeros(4, dtype=torch.float64))
    ref = F.kl_div(b.double(), a.double(), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(token_kl(a, b), ref) and (ref > 0).all()
