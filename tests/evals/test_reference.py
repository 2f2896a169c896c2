from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from blackbox.evals.reference import ReferenceObjective
from blackbox.search_spaces.tokens import TokenContext


def test_reference_is_minus_teacher_forced_ce() -> None:
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
    ctx = TokenContext((1, 2), (3, 4))
    target = [10, 20, 30]
    ids = np.random.default_rng(0).integers(0, 49152, size=(3, 5))
    obj = ReferenceObjective(model, target, context=ctx)
    ev = obj.evaluate(list(ids))
    full = torch.cat(
        [
            torch.tensor([[1, 2]]).expand(3, -1),
            torch.as_tensor(ids),
            torch.tensor([[3, 4, 10, 20, 30]]).expand(3, -1),
        ],
        1,
    )
    with torch.no_grad():
        logits = model(input_ids=full).logits
    labels = full.clone()
    labels[:, :-3] = -100
    ref = torch.stack([F.cross_entropy(logits[b, :-1], labels[b, 1:]) for b in range(3)])
    assert np.allclose(-ev.values, ref.numpy(), atol=1e-5)
    assert np.allclose([m["loss"] for m in ev.metrics], ref.numpy(), atol=1e-5)
    tg = obj.token_gradients(ids[:1])
    assert tg.grad.shape == (1, 5, 49152) and np.isclose(tg.values[0], ev.values[0], atol=1e-5)
