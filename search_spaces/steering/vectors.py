"""Steering vectors: contrastive means of residual activations, cached per model and prompts.

For a concept given by two prompt sets (the concept and its contrast), the vector at layer
``l`` is ``mean(h_l(concept prompts)) - mean(h_l(contrast prompts))`` where ``h_l`` is the
output of decoder layer ``l`` read at the last token or averaged over the prompt's tokens.

Every vector also carries, per layer, the *typical residual norm* (median over all prompts of
the last-token residual norm), so coefficients can be expressed relative to the scale of the
stream they are added to.  (The first token's norm is ~100x the others from the middle layers
on, so neither the first token nor a plain mean over positions is used for the scale.)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from blackbox.errors import UserError
from blackbox.models.layers import decoder_layers, layer_output_hidden
from blackbox.models.loading import first_token_id
from blackbox.staging import Staged

READ_MODES = ("last", "mean")


@dataclass(frozen=True)
class SteeringVector:
    """One steering direction at every layer.

    Attributes:
        name: the concept's name.
        vectors: ``(L, d)`` raw contrastive difference per layer.
        scales: ``(L,)`` typical residual norm per layer.
        layers: the layers that have a direction, for files that name some layers only
            (``None``: every layer); the others hold zeros and steer nothing.
    """

    name: str
    vectors: torch.Tensor
    scales: torch.Tensor
    layers: tuple[int, ...] | None = None

    @property
    def num_layers(self) -> int:
        return int(self.vectors.shape[0])

    def unit(self, layer: int) -> torch.Tensor:
        """``(d,)`` unit direction at ``layer``."""
        v = self.vectors[layer]
        return v / v.norm().clamp_min(1e-12)

    def delta(self, layer: int, coeff: float) -> torch.Tensor:
        """``(d,)`` the addition for a relative coefficient: ``coeff * scale[l] * unit(l)``."""
        return float(coeff) * float(self.scales[layer]) * self.unit(layer)


@torch.no_grad()
def residual_stats(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    read: str = "last",
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean residual activation and per-prompt last-token norms at every layer.

    Args:
        model: a Hugging Face decoder.
        tokenizer: its tokenizer.
        prompts: the prompts (at least one).
        read: "last" (last token) or "mean" (average over the prompt's tokens).
        batch_size: prompts per forward pass.

    Returns:
        ``(L, d)`` mean activation over prompts, and ``(L, P)`` last-token norms.
    """
    if read not in READ_MODES:
        raise UserError(f"read: {read!r} is not one of {READ_MODES}")
    if not prompts:
        raise UserError("prompts: need at least one prompt")
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    captured: dict[int, torch.Tensor] = {}

    def make_hook(i: int):
        def hook(_m, _a, out):
            captured[i] = layer_output_hidden(out).detach()

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    sums = None
    norms: list[torch.Tensor] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = [tokenizer(p)["input_ids"] for p in chunk]
            lengths = torch.tensor([len(e) for e in enc], device=device)  # (P,)
            width = int(lengths.max())
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(enc), width), pad, dtype=torch.long, device=device)
            for r, e in enumerate(enc):
                ids[r, : len(e)] = torch.tensor(e, device=device)  # right padding
            model(input_ids=ids, use_cache=False)
            stack = torch.stack([captured[i] for i in range(len(layers))])  # (L, P, T, d)
            stack = stack.float()
            last = stack[:, torch.arange(len(enc)), lengths - 1]  # (L, P, d)
            if read == "last":
                feats = last
            else:
                mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()
                feats = (stack * mask[None, :, :, None]).sum(2) / lengths[None, :, None]
            part = feats.sum(1)  # (L, d)
            sums = part if sums is None else sums + part
            norms.append(last.norm(dim=-1))  # (L, P)
    finally:
        for h in handles:
            h.remove()
    assert sums is not None
    return (sums / len(prompts)).cpu(), torch.cat(norms, dim=1).cpu()


def contrastive_vector(
    model: torch.nn.Module,
    tokenizer,
    name: str,
    concept: Sequence[str],
    contrast: Sequence[str],
    read: str = "last",
) -> SteeringVector:
    """Contrastive steering vector of ``concept`` prompts against ``contrast`` prompts."""
    mean_pos, norms_pos = residual_stats(model, tokenizer, concept, read)
    mean_neg, norms_neg = residual_stats(model, tokenizer, contrast, read)
    scales = torch.cat([norms_pos, norms_neg], dim=1).median(dim=1).values  # (L,)
    return SteeringVector(name=name, vectors=mean_pos - mean_neg, scales=scales)


def _cache_key(model_id: str, name: str, concept, contrast, read: str) -> str:
    blob = json.dumps([model_id, name, list(concept), list(contrast), read], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_contrastive_vector(
    model: torch.nn.Module,
    tokenizer,
    model_id: str,
    name: str,
    concept: Sequence[str],
    contrast: Sequence[str],
    read: str = "last",
    cache_dir: Path | None = None,
) -> SteeringVector:
    """:func:`contrastive_vector`, cached as safetensors per model id, prompts and read mode."""
    cache_dir = (
        cache_dir
        or Path(os.environ.get("BLACKBOX_CACHE", Path.home() / ".cache" / "blackbox")) / "vectors"
    )
    path = cache_dir / f"{_cache_key(model_id, name, concept, contrast, read)}.safetensors"
    if path.exists():
        data = load_file(str(path))
        return SteeringVector(name=name, vectors=data["vectors"], scales=data["scales"])
    vec = contrastive_vector(model, tokenizer, name, concept, contrast, read)
    with Staged() as staged:
        tensors = {"vectors": vec.vectors.contiguous(), "scales": vec.scales.contiguous()}
        save_file(tensors, str(staged.path(path)))
    return vec


def load_vector_file(
    path: Path,
    name: str,
    num_layers: int,
    hidden: int,
    hookpoints: dict[str, int] | None = None,
) -> SteeringVector:
    """Load a steering vector from a tensor file (``.pt`` with weights_only, safetensors or
    GGUF).

    The file holds either a ``(L, d)`` tensor, a ``(d,)`` tensor (the same direction at every
    layer), a dict with ``vectors`` ``(L, d)`` and optional ``scales`` ``(L,)`` (missing scales
    default to 1: coefficients are then absolute), or directions for some layers in another
    tool's format (:mod:`.vector_files`: lm-eval's ``steered`` .pt, a llama.cpp / repeng GGUF
    control vector, a steering-vectors ``{layer: tensor}`` dict).  For the latter the scale of a
    layer is the norm of the file's vector there, so coefficient 1 adds exactly the file's
    vector; layers the file does not name hold zeros (:attr:`SteeringVector.layers` lists the
    others).

    Args:
        hookpoints: module path -> layer of this model (for ``steered`` files).

    Raises:
        ValueError: one line naming the file and what is wrong (shape, layer, width, dtype).
    """
    from blackbox.search_spaces.steering.vector_files import (
        check_layers,
        is_gguf,
        read_control_vector,
        read_layer_directions,
    )

    path = Path(path)
    if not path.is_file():
        raise UserError(f"vector file {str(path)!r}: no such file")
    if path.suffix == ".gguf" or is_gguf(path):
        layered: dict[int, torch.Tensor] | None = read_control_vector(path)
        data: object = None
    else:
        try:
            if path.suffix == ".safetensors":
                data = load_file(str(path))
            else:
                data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or not a tensor file
            raise UserError(
                f"vector file {str(path)!r}: cannot be read as a tensor file ({type(exc).__name__})"
            ) from None
        layered = read_layer_directions(data, path, hookpoints)
    if layered is not None:
        check_layers(layered, path, num_layers, hidden)
        vectors = torch.zeros(num_layers, hidden)
        scales = torch.ones(num_layers)
        for layer, v in layered.items():
            vectors[layer] = v
            scales[layer] = float(v.norm()) if float(v.norm()) > 0 else 1.0
        return SteeringVector(name, vectors, scales, tuple(sorted(layered)))
    scales = None
    if isinstance(data, dict):
        if "vectors" not in data:
            raise UserError(
                f"vector file {str(path)!r}: a dict needs a 'vectors' entry, layer-number keys "
                "or lm-eval steered entries"
            )
        scales = data.get("scales")
        data = data["vectors"]
    if not torch.is_tensor(data):
        raise UserError(f"vector file {str(path)!r}: expected a tensor, got {type(data).__name__}")
    if not data.is_floating_point():
        raise UserError(f"vector file {str(path)!r}: dtype {data.dtype}; expected a float tensor")
    t = data.float()
    if t.dim() == 1:
        t = t[None].expand(num_layers, -1).clone()
    if t.shape != (num_layers, hidden):
        raise UserError(
            f"vector file {str(path)!r}: shape {tuple(data.shape)}; expected ({num_layers}, "
            f"{hidden}) or ({hidden},) for this model"
        )
    if not torch.isfinite(t).all():
        raise UserError(f"vector file {str(path)!r}: contains NaN or inf")
    s = torch.ones(num_layers) if scales is None else torch.as_tensor(scales).float()
    if s.shape != (num_layers,):
        raise UserError(
            f"vector file {str(path)!r}: scales shape {tuple(s.shape)}, expected ({num_layers},)"
        )
    return SteeringVector(name=name, vectors=t, scales=s)


NEUTRAL_PROMPTS = (
    "The weather today is mild with a light breeze.",
    "Please read the following text carefully.",
    "The committee will meet again next Tuesday.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door and looked outside.",
    "Here is a short summary of the report.",
    "The train leaves the station at noon.",
    "Answer the question below in one word.",
)
"""Generic prompts whose last-token norms give the per-layer scale of prompt-free vectors."""


@torch.no_grad()
def unembedding_vector(
    model: torch.nn.Module, tokenizer, name: str, a: str, b: str
) -> SteeringVector:
    """The logit-lens direction ``W_U[a] - W_U[b]`` at every layer.

    Added to the residual stream late in the model, it raises the logit of token ``a`` against
    token ``b`` by an amount set by the coefficient, for every input alike: a learned
    *calibration* of a classifier's answer.  Scales are the median last-token residual norms of
    :data:`NEUTRAL_PROMPTS`.
    """
    w = model.get_output_embeddings().weight  # (V, d)
    direction = (w[first_token_id(tokenizer, a)] - w[first_token_id(tokenizer, b)]).float().cpu()
    _, norms = residual_stats(model, tokenizer, list(NEUTRAL_PROMPTS), "last")
    n_layers = norms.shape[0]
    return SteeringVector(name, direction[None].repeat(n_layers, 1), norms.median(dim=1).values)
