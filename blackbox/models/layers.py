"""Find the decoder blocks of any Hugging Face decoder and read or replace their outputs.

In transformers 5.x most decoder layers (Llama, Mistral, Qwen2, Gemma, Gemma2, GPT-2,
GPT-NeoX, OPT, Phi) return the hidden states ``(B, T, d)`` as a bare tensor; a few (Falcon,
Bloom) and older versions return a tuple whose first element is the hidden states. The two
output helpers accept both, so forward hooks work across architectures and versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# Paths from the top-level model (a *ForCausalLM or a bare base model) to its decoder blocks.
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Gemma2, Gemma3 text, Phi, Phi3, OLMo, ...
    "model.language_model.layers",  # multimodal wrappers (Gemma3, Llava, ...) in 5.x
    "language_model.model.layers",  # multimodal wrappers in 4.x
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom, CodeGen, old Phi
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.layers",  # ChatGLM, some remote-code models
    "transformer.blocks",  # MPT
    "backbone.layers",  # Mamba
    "layers",  # a bare base model (LlamaModel, ...)
    "h",  # a bare GPT-2 style base model
    "decoder.layers",  # a bare OPTModel
)


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_block_list(module: Any) -> bool:
    """A non-empty ModuleList whose children share one class and hold parameters."""
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    first = type(module[0])
    if any(type(child) is not first for child in module):
        return False
    return any(True for _ in module[0].parameters())


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of ``model``.

    Known attribute paths are tried first (`KNOWN_LAYER_PATHS`); otherwise the block list with
    the most parameters wins (so per-layer lists such as MoE experts, nested inside the
    blocks, are never mistaken for the blocks).

    Args:
        model: A Hugging Face causal LM or base model.

    Returns:
        The ``nn.ModuleList`` of blocks, in forward order.

    Raises:
        ValueError: Naming the model class, if no list of blocks exists.
    """
    for path in KNOWN_LAYER_PATHS:
        found = _get_path(model, path)
        if _is_block_list(found):
            return found
    candidates = [m for m in model.modules() if _is_block_list(m)]
    if not candidates:
        raise ValueError(
            f"{type(model).__name__}: no decoder layers found (tried {', '.join(KNOWN_LAYER_PATHS)} "
            "and found no nn.ModuleList of identical blocks)"
        )
    return max(candidates, key=_num_params)


def base_model(model: nn.Module) -> nn.Module:
    """``model.base_model`` for a ``PreTrainedModel``, else the model itself."""
    return getattr(model, "base_model", model)


def layer_path(model: nn.Module, index: int) -> str:
    """Module path of decoder block ``index`` relative to ``model.base_model``.

    This is the hookpoint naming of lm-eval's ``steered`` model, which matches hookpoints
    against ``model.base_model.named_modules()``: ``"layers.3"`` for Llama, ``"h.3"`` for
    GPT-2, ``"decoder.layers.3"`` for OPT. Negative indices count from the end.

    Raises:
        IndexError: If ``index`` is out of range.
        ValueError: If the block is not inside ``model.base_model``.
    """
    layers = decoder_layers(model)
    block = layers[index]  # raises IndexError when out of range
    for name, module in base_model(model).named_modules():
        if module is block:
            return name
    raise ValueError(f"{type(model).__name__}: decoder layer {index} is not under base_model")


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    """Width ``d`` of the residual stream (the blocks' output size).

    Read from the (text) config as ``hidden_size``, ``n_embd`` or ``d_model``; else from the
    input embeddings.

    Raises:
        ValueError: If no source gives it.
    """
    config = getattr(model, "config", None)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(text, key, None)
            if isinstance(value, int):
                return value
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if isinstance(embeddings, nn.Embedding):
        return embeddings.embedding_dim
    raise ValueError(f"{type(model).__name__}: cannot tell the hidden size")


def layer_output_hidden(output: torch.Tensor | Sequence[Any]) -> torch.Tensor:
    """Hidden states ``(B, T, d)`` from a decoder block's output, a tensor or a tuple.

    Raises:
        TypeError: For any other output type.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"decoder layer output of type {type(output).__name__}: expected a tensor or tuple"
    )


def replace_layer_output(
    output: torch.Tensor | Sequence[Any], new_hidden: torch.Tensor
) -> torch.Tensor | tuple[Any, ...] | list[Any]:
    """A block output of the same form as ``output`` carrying ``new_hidden`` ``(B, T, d)``.

    A tensor becomes ``new_hidden``; a tuple (or list) keeps its other elements
    (attention weights, caches). Return it from a forward hook to replace the output.

    Raises:
        TypeError: For any other output type.
    """
    if isinstance(output, torch.Tensor):
        return new_hidden
    if isinstance(output, (tuple, list)) and output:
        rest = list(output[1:])
        return (new_hidden, *rest) if isinstance(output, tuple) else [new_hidden, *rest]
    raise TypeError(
        f"decoder layer output of type {type(output).__name__}: expected a tensor or tuple"
    )


def repeat_batch(value: Any, small: int, repeat: int) -> Any:
    """Repeat batch-shaped tensors in a layer input ``repeat`` times (candidate-major).

    Tensors of two or more dimensions whose first is ``small`` (the un-branched batch) become
    ``(repeat * small, ...)`` (1-D tensors such as ``cache_position`` are never batch-shaped);
    tuples and lists (e.g. rotary ``(cos, sin)`` with per-row positions) are handled
    element-wise; everything else is returned unchanged.
    """
    if torch.is_tensor(value):
        if value.dim() > 1 and small > 1 and value.shape[0] == small:
            return value.repeat(repeat, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(repeat_batch(v, small, repeat) for v in value)
    return value
