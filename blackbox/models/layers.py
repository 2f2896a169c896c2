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

from blackbox.errors import UserError

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
    "git.encoder.layer",  # GIT (its image encoder holds a bigger block list)
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
        raise UserError(
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
    raise UserError(f"{type(model).__name__}: decoder layer {index} is not under base_model")


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
    raise UserError(f"{type(model).__name__}: cannot tell the hidden size")


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


# Keyword inputs of decoder blocks laid out ``(B * heads, ...)``, not ``(B, ...)``: BLOOM's
# ALiBi bias ``(B * heads, 1, T)``.  Repeated whole, row ``b``'s heads stay together.
ROWS_TIMES_HEADS_INPUTS: tuple[str, ...] = ("alibi",)


def repeat_batch(value: Any, small: int, repeat: int, name: str | None = None) -> Any:
    """Repeat batch-shaped tensors in a layer input ``repeat`` times (candidate-major).

    Tensors of two or more dimensions whose first is ``small`` (the un-branched batch) become
    ``(repeat * small, ...)`` (1-D tensors such as ``cache_position`` are never batch-shaped);
    tuples and lists (e.g. rotary ``(cos, sin)`` with per-row positions) are handled
    element-wise; everything else is returned unchanged.  A keyword input ``name`` listed in
    `ROWS_TIMES_HEADS_INPUTS` (``(small * heads, ...)``) is repeated whatever ``small`` is.
    """
    if name in ROWS_TIMES_HEADS_INPUTS and torch.is_tensor(value) and repeat > 1:
        if value.dim() > 1 and small > 0 and value.shape[0] % small == 0:
            return value.repeat(repeat, *([1] * (value.dim() - 1)))
        return value
    if torch.is_tensor(value):
        if value.dim() > 1 and small > 1 and value.shape[0] == small:
            return value.repeat(repeat, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(repeat_batch(v, small, repeat) for v in value)
    return value


# Paths, inside one decoder block, to the MLP's output projection: its *input* is the MLP's
# hidden activation (``act(gate) * up`` for gated MLPs), whose coordinates are the neurons.
MLP_OUTPUT_PATHS: tuple[str, ...] = (
    "mlp.down_proj",  # Llama, Mistral, Qwen2, Gemma, Gemma2/3, OLMo, StableLM, Phi3, SmolLM
    "mlp.dense_4h_to_h",  # GPT-NeoX (Pythia), Falcon, Bloom
    "mlp.c_proj",  # GPT-2, GPTBigCode (Conv1D / Linear)
    "mlp.fc2",  # Phi
    "mlp.fc_out",  # GPT-J, CodeGen
    "fc2",  # OPT (no MLP submodule)
    "ffn.down_proj",  # MPT
    "feed_forward.w2",  # InternLM-style
)


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` widths of a linear-like module (``nn.Linear`` or GPT-2's ``Conv1D``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0]), int(weight.shape[1])  # Conv1D stores (in, out)
    return None


def mlp_output_projection(model: nn.Module, layer: int) -> nn.Module:
    """The module whose input is the MLP activation of decoder block ``layer``.

    Known paths are tried first (`MLP_OUTPUT_PATHS`); otherwise the one linear module under an
    MLP-like child (``mlp``, ``ffn``, ``feed_forward``) that maps a wider space back to the
    residual width.

    Raises:
        ValueError: one line naming the block's class and its children when no (single)
            projection exists, e.g. a mixture-of-experts block.
    """
    block = decoder_layers(model)[layer]
    d = hidden_size(model)
    for path in MLP_OUTPUT_PATHS:
        found = _get_path(block, path)
        widths = _in_out(found) if isinstance(found, nn.Module) else None
        if widths is not None and widths[1] == d:
            return found
    hits = [
        module
        for name, module in block.named_modules()
        if any(k in name for k in ("mlp", "ffn", "feed_forward"))
        and (w := _in_out(module)) is not None
        and w[1] == d
        and w[0] > d
    ]
    if len(hits) == 1:
        return hits[0]
    children = ", ".join(f"{n} ({type(m).__name__})" for n, m in block.named_children())
    raise UserError(
        f"{type(block).__name__}: no single MLP output projection found (tried "
        f"{', '.join(MLP_OUTPUT_PATHS)}); the block holds: {children}"
    )


def mlp_width(model: nn.Module, layer: int) -> int:
    """Number of MLP neurons in decoder block ``layer`` (the projection's input width)."""
    widths = _in_out(mlp_output_projection(model, layer))
    assert widths is not None
    return widths[0]
