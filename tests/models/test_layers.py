from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from blackbox.models.layers import (
    decoder_layers,
    hidden_size,
    layer_output_hidden,
    layer_path,
    num_layers,
    replace_layer_output,
)

EXPECTED = {
    "LlamaForCausalLM": ("LlamaDecoderLayer", "layers"),
    "GPT2LMHeadModel": ("GPT2Block", "h"),
    "Qwen2ForCausalLM": ("Qwen2DecoderLayer", "layers"),
    "Gemma2ForCausalLM": ("Gemma2DecoderLayer", "layers"),
}
IDS = torch.tensor([[1, 504, 3458, 314, 253, 1345, 30, 2]])  # (1, 8)


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits  # (1, 8, vocab)


def _capture(model: nn.Module, index: int) -> object:
    outputs: list[object] = []
    handle = decoder_layers(model)[index].register_forward_hook(
        lambda _m, _i, out: outputs.append(out)
    )
    try:
        _logits(model)
    finally:
        handle.remove()
    return outputs[0]


def test_decoder_layers_found_for_each_architecture(tiny_model: nn.Module) -> None:
    layer_class, prefix = EXPECTED[type(tiny_model).__name__]
    layers = decoder_layers(tiny_model)
    assert isinstance(layers, nn.ModuleList)
    assert [type(b).__name__ for b in layers] == [layer_class] * 4
    assert num_layers(tiny_model) == 4
    assert hidden_size(tiny_model) == 64
    assert layer_path(tiny_model, 3) == f"{prefix}.3"


def test_layer_path_matches_base_model_named_modules(tiny_model: nn.Module) -> None:
    named = dict(tiny_model.base_model.named_modules())
    layers = decoder_layers(tiny_model)
    for i in range(len(layers)):
        assert named[layer_path(tiny_model, i)] is layers[i]
    assert layer_path(tiny_model, -1) == layer_path(tiny_model, 3)
    with pytest.raises(IndexError):
        layer_path(tiny_model, 4)


def test_decoder_layers_on_bare_base_model(tiny_llama: nn.Module) -> None:
    assert decoder_layers(tiny_llama.model) is tiny_llama.model.layers
    assert layer_path(tiny_llama.model, 1) == "layers.1"


class _Block(nn.Module):
    def __init__(self, n_experts: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(n_experts))


class _Odd(nn.Module):
    """Blocks under an unknown name, each holding a longer list of experts."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = nn.ModuleList(_Block(8) for _ in range(2))


def test_fallback_picks_the_block_list_not_a_nested_list() -> None:
    model = _Odd()
    assert decoder_layers(model) is model.stack


def test_no_layers_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^Sequential: no decoder layers found"):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))


def test_hidden_size_from_embeddings_without_config() -> None:
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 12)

        def get_input_embeddings(self) -> nn.Embedding:
            return self.emb

    assert hidden_size(Bare()) == 12
    with pytest.raises(ValueError, match="Linear: cannot tell the hidden size"):
        hidden_size(nn.Linear(2, 2))


def test_output_helpers_on_tensor() -> None:
    hidden = torch.randn(2, 3, 4)
    new = torch.randn(2, 3, 4)
    assert layer_output_hidden(hidden) is hidden
    assert replace_layer_output(hidden, new) is new


def test_output_helpers_on_tuple_and_list() -> None:
    hidden, attn, new = torch.randn(2, 3, 4), torch.randn(2, 1, 3, 3), torch.randn(2, 3, 4)
    out = (hidden, attn, None)
    assert layer_output_hidden(out) is hidden
    replaced = replace_layer_output(out, new)
    assert isinstance(replaced, tuple) and len(replaced) == 3
    assert replaced[0] is new and replaced[1] is attn and replaced[2] is None
    replaced_list = replace_layer_output([hidden, attn], new)
    assert isinstance(replaced_list, list) and replaced_list[0] is new
    assert replaced_list[1] is attn


@pytest.mark.parametrize("bad", [{"h": 1}, (), (None, 1), "x"])
def test_output_helpers_reject_other_types(bad: object) -> None:
    with pytest.raises(TypeError, match="decoder layer output"):
        layer_output_hidden(bad)  # type: ignore[arg-type]
    if not isinstance(bad, tuple) or not bad:
        with pytest.raises(TypeError, match="decoder layer output"):
            replace_layer_output(bad, torch.zeros(1))  # type: ignore[arg-type]


def _steer_hook(vector: torch.Tensor):
    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        return replace_layer_output(output, layer_output_hidden(output) + vector)

    return hook


def _hooked_logits(model: nn.Module, index: int, vector: torch.Tensor) -> torch.Tensor:
    handle = decoder_layers(model)[index].register_forward_hook(_steer_hook(vector))
    try:
        return _logits(model)
    finally:
        handle.remove()


def test_hook_roundtrip_on_real_tensor_outputs(tiny_model: nn.Module) -> None:
    """In transformers 5.x all four tiny architectures' blocks return a bare tensor."""
    out = _capture(tiny_model, 1)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 8, 64)
    base = _logits(tiny_model)
    assert torch.equal(_hooked_logits(tiny_model, 1, torch.zeros(64)), base)
    assert not torch.allclose(_hooked_logits(tiny_model, 1, torch.ones(64)), base)
    assert torch.equal(_logits(tiny_model), base)  # hook removed


@pytest.fixture(scope="module")
def tiny_falcon() -> nn.Module:
    """Falcon's blocks still return a tuple ``(hidden, attn)`` in transformers 5.x."""
    torch.manual_seed(0)
    config = transformers.FalconConfig(
        vocab_size=49152, hidden_size=64, num_hidden_layers=3, num_attention_heads=4
    )
    return transformers.AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)


def test_hook_roundtrip_on_real_tuple_outputs(tiny_falcon: nn.Module) -> None:
    out = _capture(tiny_falcon, 1)
    assert isinstance(out, tuple) and out[0].shape == (1, 8, 64)
    assert layer_path(tiny_falcon, 1) == "h.1"
    base = _logits(tiny_falcon)
    assert torch.equal(_hooked_logits(tiny_falcon, 1, torch.zeros(64)), base)
    assert not torch.allclose(_hooked_logits(tiny_falcon, 1, torch.ones(64)), base)


def test_layer_path_is_an_lm_eval_steered_hookpoint(tiny_model: nn.Module) -> None:
    """lm-eval's own `steer` resolves our path and steers exactly as our hook does."""
    hf_steered = pytest.importorskip("lm_eval.models.hf_steered")
    vector = torch.linspace(-1, 1, 64)
    with hf_steered.steer(tiny_model, {layer_path(tiny_model, 2): lambda h: h + vector}):
        theirs = _logits(tiny_model)
    assert torch.equal(theirs, _hooked_logits(tiny_model, 2, vector))
