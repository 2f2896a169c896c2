from __future__ import annotations

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from blackbox.evals.logit import LogitObjective, logit_margin
from blackbox.search_spaces.tokens import TokenContext


def test_logit_margin_pure() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert logit_margin(logits, 1).tolist() == [1.0, -5.0]


def test_logit_objective_matches_direct() -> None:
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
    ctx = TokenContext((1, 2, 3), (4,))
    ids = np.random.default_rng(0).integers(0, 49152, size=(3, 4))
    obj = LogitObjective(model, target_id=1234, context=ctx)
    full = torch.cat(
        [
            torch.tensor([[1, 2, 3]]).expand(3, -1),
            torch.as_tensor(ids),
            torch.tensor([[4]]).expand(3, -1),
        ],
        1,
    )
    with torch.no_grad():
        last = model(input_ids=full).logits[:, -1]
    others = torch.cat([last[:, :1234], last[:, 1235:]], 1).max(1).values
    assert np.allclose(obj.evaluate(list(ids)).values, (last[:, 1234] - others).numpy(), atol=1e-5)
