"""Run the unsteered trunk once, then resume the forward pass from any layer.

:func:`capture` runs the base model once on ``(E, T)`` ids and records, for every decoder layer,
the exact positional and keyword inputs the layer received (hidden states, position
embeddings, masks, ...).  :func:`resume` restarts the stack at layer ``L`` from those inputs
for ``n`` candidates at once (``n * E`` rows, candidate-major), calling the layer modules
themselves so that steering hooks on them fire as in a normal forward, and applies the final
norm.  Candidates whose lowest steered layer is ``L`` never recompute layers ``< L``, and the
captured trunk can be reused across iterations when the rows are fixed.

Nothing here is architecture-specific beyond finding the final norm; a self-check against the
plain forward (:meth:`~blackbox.forward.loglik.LoglikScorer._verify`) guards each model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from blackbox.models.layers import decoder_layers, layer_output_hidden, repeat_batch

# Paths, from the base model, to the norm applied after the last decoder block.
FINAL_NORMS = (
    "norm",  # Llama, Mistral, Qwen2, Gemma, ...
    "ln_f",  # GPT-2, GPT-J, Falcon, Bloom, CodeGen
    "final_layernorm",  # Phi, Persimmon, Jamba, Zamba
    "final_layer_norm",  # GPT-NeoX
    "decoder.final_layer_norm",  # OPT (under OPTModel.decoder)
    "norm_f",  # MPT, Mamba, Nemotron-H
    "final_norm",  # RecurrentGemma
    "layer_norm",  # BioGPT, XGLM
    "layernorm",  # CTRL
    "decoder.layer_norm",  # Whisper, MBart and other seq2seq decoders used alone
    "embedding_norm",  # LFM2 (applied after the last block despite its name)
    "language_model.norm",  # multimodal wrappers (Gemma3, GOT-OCR2, ...)
    "language_model.final_layernorm",  # Fuyu (Persimmon inside)
)


@dataclass
class Trunk:
    """The recorded inputs of every layer for ``E`` rows.

    Attributes:
        inputs: per layer, ``(args, kwargs)`` as the layer received them (``args[0]`` or
            ``kwargs["hidden_states"]`` is the ``(E, T, d)`` residual stream).
        final: ``(E, T, d)`` the unsteered final (normed) hidden states.
    """

    inputs: list[tuple[tuple[Any, ...], dict[str, Any]]]
    final: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.final.shape[0])

    def nbytes(self) -> int:
        total = self.final.numel() * self.final.element_size()
        for args, kwargs in self.inputs:
            for v in (*args, *kwargs.values()):
                if torch.is_tensor(v):
                    total += v.numel() * v.element_size()
        return total


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The model's final logit soft-capping (``config.final_logit_softcapping``, Gemma-2):
    ``cap * tanh(logits / cap)``; ``logits`` unchanged when ``cap`` is unset."""
    return torch.tanh(logits / cap) * cap if cap else logits


def final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    """The base model's final norm module, if it has one we know (`FINAL_NORMS`).

    Whether the base model's output really is ``norm(last block's output)`` is not checked
    here: the scorer's self-check (:meth:`LoglikScorer._verify`) compares with a plain forward.
    """
    base = model.base_model
    for path in FINAL_NORMS:
        mod: Any = base
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    return None


@contextmanager
def record_layer_inputs(model: torch.nn.Module) -> Iterator[list[Any]]:
    """While the block runs, record per decoder layer the ``(args, kwargs)`` it received
    (``None`` for a layer not called); the hooks are always removed."""
    layers = decoder_layers(model)
    inputs: list[tuple[tuple[Any, ...], dict[str, Any]] | None] = [None] * len(layers)

    def make_hook(i: int):
        def hook(_m: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            inputs[i] = (tuple(args), dict(kwargs))

        return hook

    handles = [
        layer.register_forward_pre_hook(make_hook(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        yield inputs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture(model: torch.nn.Module, input_ids: torch.Tensor, **model_inputs: Any) -> Trunk:
    """Run the base model on ``input_ids`` ``(E, T)`` and record every layer's inputs.

    ``model_inputs`` go to the model too (e.g. a 4-D ``attention_mask`` and ``position_ids``).
    """
    with record_layer_inputs(model) as inputs:
        out = model.base_model(input_ids=input_ids, use_cache=False, **model_inputs)
    final = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    if any(x is None for x in inputs):
        raise RuntimeError("trunk capture: some decoder layers were not called")
    return Trunk(inputs=inputs, final=final)  # type: ignore[arg-type]


@torch.no_grad()
def resume(model: torch.nn.Module, trunk: Trunk, start: int, repeat: int) -> torch.Tensor:
    """Run layers ``start..`` on ``repeat`` copies of the trunk's rows; returns ``(repeat*E, T, d)``.

    Hooks installed on the layers (e.g. per-row steering) fire as usual.
    """
    layers = decoder_layers(model)
    norm = final_norm(model)
    if norm is None:
        raise RuntimeError(f"{type(model).__name__}: no final norm found; cannot resume")
    e = trunk.rows
    args, kwargs = trunk.inputs[start]
    hidden = args[0] if args else kwargs["hidden_states"]
    hidden = hidden.repeat(repeat, 1, 1)  # (repeat*E, T, d) candidate-major
    for i in range(start, len(layers)):
        args, kwargs = trunk.inputs[i]
        rest = tuple(repeat_batch(a, e, repeat) for a in args[1:])
        kw = {k: repeat_batch(v, e, repeat, k) for k, v in kwargs.items() if k != "hidden_states"}
        if args:
            out = layers[i](hidden, *rest, **kw)
        else:
            out = layers[i](hidden_states=hidden, **kw)
        hidden = layer_output_hidden(out)
    return norm(hidden)
