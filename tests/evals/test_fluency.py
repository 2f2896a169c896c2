from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from blackbox.evals.fluency import FluencyObjective
from blackbox.search_spaces.tokens import TokenContext


def test_fluency_is_minus_self_ce_and_equals_extra() -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    )
    model = LlamaForCausalLM(cfg).eval()
    ctx = TokenContext((1, 2), ())
    ids = np.random.default_rng(0).integers(0, 49152, size=(2, 6))
    ev = FluencyObjective(model, context=ctx).evaluate(list(ids))
    full = torch.cat([torch.tensor([[1, 2]]).expand(2, -1), torch.as_tensor(ids)], 1)
    with torch.no_grad():
        logits = model(input_ids=full).logits
    ref = torch.stack([F.cross_entropy(logits[b, 1:-1], full[b, 2:]) for b in range(2)])
    assert np.allclose(-ev.values, ref.numpy(), atol=1e-5)
    assert np.allclose(ev.extra[:, 0], ref.numpy(), atol=1e-5)
    g = FluencyObjective(model, context=ctx).token_gradients(ids)
    assert np.isfinite(g.grad).all()
