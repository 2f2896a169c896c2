from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from blackbox.evals.activation import ResidualDirectionObjective
from blackbox.forward.token_forward import TokenForward, prompt_xentropy
from blackbox.search_spaces.tokens import TokenContext

V = 49152


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).eval()


CTX = TokenContext(prefix_ids=tuple(range(100, 154)), suffix_ids=(7, 8, 9))


def test_prefix_kv_cache_parity(model) -> None:
    ids = torch.randint(0, V, (5, 6))
    cached = TokenForward(model, CTX, use_prefix_cache=True)(ids, hidden=True)
    plain = TokenForward(model, CTX, use_prefix_cache=False)(ids, hidden=True)
    full = torch.cat(
        [torch.tensor(CTX.prefix_ids).expand(5, -1), ids, torch.tensor([[7, 8, 9]]).expand(5, -1)],
        1,
    )
    with torch.no_grad():
        ref = model(input_ids=full).logits[:, 54:]
    assert torch.allclose(cached.logits, ref, atol=1e-4)
    assert torch.allclose(plain.logits, ref, atol=1e-4)
    assert torch.allclose(cached.next_logits, plain.next_logits, atol=1e-4)
    assert torch.allclose(cached.hidden_states[-1], plain.hidden_states[-1], atol=1e-4)
    # next_logits row i predicts token i
    with torch.no_grad():
        ref_all = model(input_ids=full).logits
    assert torch.allclose(cached.next_logits, ref_all[:, 53:59], atol=1e-4)


def test_xentropy_matches_cross_entropy(model) -> None:
    ids = torch.randint(0, V, (3, 5))
    out = TokenForward(model, CTX)(ids)
    xe = prompt_xentropy(out.next_logits, ids, out.first_predicted)
    ref = (
        torch.nn.functional.cross_entropy(
            out.next_logits.reshape(-1, V), ids.reshape(-1), reduction="none"
        )
        .view(3, 5)
        .mean(1)
    )
    assert torch.allclose(xe, ref, atol=1e-5)
    one_hot = torch.nn.functional.one_hot(ids, V).float()
    assert torch.allclose(prompt_xentropy(out.next_logits, one_hot, True), ref, atol=1e-5)
    # without a prefix the first token is not predicted
    bare = TokenForward(model)(ids)
    assert not bare.first_predicted
    xe0 = prompt_xentropy(bare.next_logits, ids, False)
    ref0 = (
        torch.nn.functional.cross_entropy(
            bare.logits[:, :4].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none"
        )
        .view(3, 4)
        .mean(1)
    )
    assert torch.allclose(xe0, ref0, atol=1e-5)


def test_one_hot_gradient_matches_embedding_gradient(model) -> None:
    direction = torch.randn(64)
    obj = ResidualDirectionObjective(model, 1, direction, context=CTX)
    ids = np.random.default_rng(0).integers(0, V, size=(2, 4))
    lam = np.array([0.0, 0.7])
    tg = obj.token_gradients(ids, lam)
    assert tg.grad.shape == (2, 4, V) and tg.cost == 6.0
    # direct: autograd on inputs_embeds of the full sequence, chain rule through W_E
    w = model.get_input_embeddings().weight
    full = torch.cat(
        [
            torch.tensor(CTX.prefix_ids).expand(2, -1),
            torch.as_tensor(ids),
            torch.tensor([[7, 8, 9]]).expand(2, -1),
        ],
        1,
    )
    emb = w[full].detach().clone().requires_grad_(True)
    out = model(inputs_embeds=emb, output_hidden_states=True)
    h = out.hidden_states[2][:, -1]
    f = h @ obj.direction / h.norm(dim=-1)
    logp = torch.log_softmax(out.logits[:, 53:57], -1)
    xe = -logp.gather(-1, torch.as_tensor(ids).unsqueeze(-1)).squeeze(-1).mean(1)
    # the CE also depends on the one-hot directly (target side): add that term
    (f - torch.tensor(lam, dtype=torch.float32) * xe).sum().backward()
    direct = emb.grad[:, 54:58] @ w.T  # (2, 4, V)
    direct = direct - torch.tensor(lam, dtype=torch.float32).view(2, 1, 1) * (-logp.detach() / 4)
    assert np.allclose(tg.grad, direct.detach().numpy(), atol=1e-4)
    assert np.allclose(tg.values, f.detach().numpy(), atol=1e-5)
    assert np.allclose(tg.xentropy, xe.detach().numpy(), atol=1e-5)
