from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from blackbox.evals.activation import (
    FeatureDirectionObjective,
    LpFeaturesObjective,
    NeuronObjective,
    ResidualDirectionObjective,
    lp_combine,
)
from blackbox.search_spaces.tokens import TokenContext, TokenPrompt

V = 49152
CTX = TokenContext(prefix_ids=(1, 500, 600), suffix_ids=(11,))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, V, size=(4, 5))


def _full(ids: np.ndarray) -> torch.Tensor:
    n = len(ids)
    pre = torch.tensor(CTX.prefix_ids).expand(n, -1)
    suf = torch.tensor(CTX.suffix_ids).expand(n, -1)
    return torch.cat([pre, torch.as_tensor(ids), suf], 1)


def _hidden(model, ids, layer):
    with torch.no_grad():
        return model(input_ids=_full(ids), output_hidden_states=True).hidden_states[layer + 1][
            :, -1
        ]


def test_neuron_matches_direct_mlp(model, ids) -> None:
    obj = NeuronObjective(model, layer=1, index=17, context=CTX)
    ev = obj.evaluate(list(ids))
    store = {}
    mlp = model.model.layers[1].mlp
    h = mlp.register_forward_pre_hook(lambda m, a: store.setdefault("x", a[0]))
    with torch.no_grad():
        model(input_ids=_full(ids))
    h.remove()
    x = store["x"][:, -1]
    ref = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))[:, 17]
    assert np.allclose(ev.values, ref.numpy(), atol=1e-5)
    assert ev.cost == 4 and ev.extra.shape == (4, 1)
    assert obj.extra_names == ("xentropy",)


def test_residual_alignment_and_z(model, ids) -> None:
    d = torch.randn(64)
    obj = ResidualDirectionObjective(model, 0, d, context=CTX)
    ev = obj.evaluate(list(ids))
    h = _hidden(model, ids, 0)
    ref = (h @ d) / (h.norm(dim=-1) * d.norm())
    assert np.allclose(ev.values, ref.numpy(), atol=1e-5)
    assert "z" not in ev.metrics[0]
    rand = np.random.default_rng(1).integers(0, V, size=(64, 5))
    assert obj.calibrate(rand) == 64
    ev = obj.evaluate(list(ids))
    r = ResidualDirectionObjective(model, 0, d, context=CTX).evaluate(list(rand)).values
    z = (ev.values - r.mean()) / r.std(ddof=1)
    assert np.allclose([m["z"] for m in ev.metrics], z, atol=1e-4)
    std = ResidualDirectionObjective(model, 0, d, context=CTX, standardise=True)
    std.calibrate(rand)
    assert np.allclose(std.evaluate(list(ids)).values, z, atol=1e-4)


def test_feature_direction_from_file(model, ids, tmp_path) -> None:
    w_dec = torch.randn(10, 64)
    torch.save({"W_dec": w_dec}, tmp_path / "sae.pt")
    obj = FeatureDirectionObjective(model, 1, tmp_path / "sae.pt", row=3, bias=0.5, context=CTX)
    ref = _hidden(model, ids, 1) @ w_dec[3] + 0.5
    assert np.allclose(obj.evaluate(list(ids)).values, ref.numpy(), atol=1e-4)


def test_lp_features(model, ids, tmp_path) -> None:
    dirs = torch.randn(3, 64)
    torch.save(dirs, tmp_path / "dirs.pt")
    obj = LpFeaturesObjective(
        model, 1, tmp_path / "dirs.pt", rows=[0, 2], offsets=[0.1, -0.2], p=0.5, context=CTX
    )
    a = (_hidden(model, ids, 1) @ dirs[[0, 2]].T).numpy()
    r = np.maximum(a + np.array([0.1, -0.2]), 0)
    ref = (r**0.5).sum(1) ** 2
    assert np.allclose(obj.evaluate(list(ids)).values, ref, atol=1e-3)


def test_lp_combine_rewards_both() -> None:
    both = lp_combine(torch.tensor([[1.0, 1.0]]), torch.zeros(2), 0.5)
    one = lp_combine(torch.tensor([[2.0, 0.0]]), torch.zeros(2), 0.5)
    none = lp_combine(torch.tensor([[-1.0, -3.0]]), torch.zeros(2), 0.5)
    assert both.item() == pytest.approx(4.0) and one.item() == pytest.approx(2.0)
    assert none.item() == 0.0
    x = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    lp_combine(x, torch.zeros(2), 0.5).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 0] > 0 and x.grad[1].abs().sum() == 0


def test_rejected_candidates_are_nan_and_free(model) -> None:
    obj = NeuronObjective(model, 0, 1, context=CTX)
    cands = [TokenPrompt((5, 6, 7), "x", True), TokenPrompt((5, 6, 8), "y", False)]
    ev = obj.evaluate(cands)
    assert np.isfinite(ev.values[0]) and np.isnan(ev.values[1])
    assert ev.metrics[1] == {"rejected": True} and ev.cost == 1.0


def test_batching_and_cache_do_not_change_values(model, ids) -> None:
    a = NeuronObjective(model, 1, 3, context=CTX, batch_size=1).evaluate(list(ids))
    b = NeuronObjective(model, 1, 3, context=CTX, use_prefix_cache=False).evaluate(list(ids))
    assert np.allclose(a.values, b.values, atol=1e-4)
    assert np.allclose(a.extra, b.extra, atol=1e-4)
