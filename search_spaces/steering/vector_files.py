"""Steering-vector files in the formats other tools write and read.

Every reader returns the file's directions by decoder layer, ``{layer: (d,) float32}``, with
blackbox's layer numbering (layer ``l`` = the output of decoder block ``l``, counted from 0,
where the steering hooks add):

================================ ============================================================
format                           what it holds
================================ ============================================================
lm-eval ``steered`` ``.pt``      hookpoint (``layers.12``) -> ``{"steering_vector" (d,),
                                 "steering_coefficient", "action": "add", ...}``; the vector
                                 read is ``coefficient * steering_vector``
llama.cpp / repeng control       GGUF, architecture ``controlvector``, F32 1-D tensors
vector ``.gguf``                 ``direction.k``; llama.cpp adds ``direction.k`` to the output
                                 of block ``k`` (0-based, ``k >= 1``: block 0 cannot be
                                 steered), so ``k`` is the layer here too
steering-vectors ``{layer: t}``  ``torch.save(vector.layer_activations)``: int (or digit
                                 string) keys -> ``(d,)`` tensors
================================ ============================================================

:func:`write_control_vector` writes the GGUF format (the ``gguf`` package, as repeng's
``export_gguf`` and llama.cpp's ``cvector-generator`` do).  Every reader refuses a bad file
with one line (:class:`ValueError`) naming what is wrong: layer, width or dtype.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blackbox.errors import UserError
from blackbox.staging import Staged

GGUF_ARCH = "controlvector"
_HOOKPOINT = re.compile(r"^(?:model\.)?(?:layers|h|blocks|decoder\.layers|transformer\.h)\.(\d+)$")


def _where(path: Path) -> str:
    return f"vector file {str(path)!r}"


def is_gguf(path: Path) -> bool:
    """True for a file that starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def write_control_vector(
    directions: Mapping[int, torch.Tensor | np.ndarray], path: Path, model_hint: str = ""
) -> Path:
    """Write a llama.cpp control vector: one F32 ``direction.{layer}`` ``(d,)`` per layer.

    Args:
        directions: layer (blackbox numbering = llama.cpp's ``k``) -> ``(d,)`` addition, the
            coefficient already folded in.
        path: the ``.gguf`` file.
        model_hint: ``controlvector.model_hint`` (the model type, as repeng writes it).

    Raises:
        ValueError: a layer below 1 (llama.cpp never steers block 0's output) or widths differ.
    """
    import gguf

    layers = sorted(int(k) for k in directions)
    if not layers:
        raise UserError("control vector: no layer is steered (every coefficient is 0)")
    if layers[0] < 1:
        raise UserError(
            "control vector: llama.cpp cannot steer layer 0 (it adds direction.k after block k, "
            "k >= 1); use steered.pt for lm-eval instead"
        )
    arrays = {
        k: np.asarray(torch.as_tensor(directions[k]).float().cpu(), np.float32) for k in layers
    }
    widths = {a.shape for a in arrays.values()}
    if len(widths) != 1 or len(next(iter(widths))) != 1:
        raise UserError(f"control vector: directions must be (d,) of one width, got {widths}")
    path = Path(path)
    with Staged() as staged:  # all or nothing: a failed write leaves no part behind
        writer = gguf.GGUFWriter(str(staged.path(path)), GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(layers))
        for k in layers:
            writer.add_tensor(f"direction.{k}", arrays[k])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_control_vector(path: Path) -> dict[int, torch.Tensor]:
    """``{layer: (d,)}`` of a llama.cpp / repeng GGUF control vector (directions of one layer
    summed, as llama.cpp does)."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise UserError(
            f"{_where(path)}: not a readable GGUF file ({type(exc).__name__})"
        ) from None
    field = reader.get_field("general.architecture")
    if field is not None:
        arch = bytes(field.parts[-1]).decode("utf-8", "replace")
        if arch != GGUF_ARCH:
            raise UserError(
                f"{_where(path)}: a GGUF {arch!r} model, not a control vector (architecture "
                f"{GGUF_ARCH!r})"
            )
    out: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if m is None:
            raise UserError(f"{_where(path)}: tensor {t.name!r} is not direction.<layer>")
        k = int(m.group(1))
        if k == 0:
            raise UserError(f"{_where(path)}: direction.0 (llama.cpp layers start at 1)")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise UserError(
                f"{_where(path)}: direction.{k} has dtype {t.tensor_type.name}; expected F32"
            )
        v = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
        if len(t.shape) != 1 and int(np.prod(t.shape)) != v.numel():
            raise UserError(f"{_where(path)}: direction.{k} is not 1-D")
        out[k] = out[k] + v if k in out else v
    if not out:
        raise UserError(f"{_where(path)}: holds no direction tensor")
    return out


def _float(t: Any, path: Path, what: str) -> torch.Tensor:
    if not torch.is_tensor(t):
        raise UserError(f"{_where(path)}: {what} is a {type(t).__name__}, expected a tensor")
    if not t.is_floating_point():
        raise UserError(f"{_where(path)}: {what} has dtype {t.dtype}; expected a float tensor")
    return t.detach().float().cpu()


def steered_layers(
    data: Mapping[str, Any], path: Path, hookpoints: Mapping[str, int] | None = None
) -> dict[int, torch.Tensor]:
    """``{layer: coefficient * steering_vector}`` of an lm-eval ``steered`` dict.

    Args:
        data: hookpoint -> ``{"steering_vector", "steering_coefficient", "action", ...}``.
        path: the file (for messages).
        hookpoints: module path -> layer for this model (``layer_path``); default: a trailing
            ``layers.N`` / ``h.N`` / ``blocks.N``.
    """
    out: dict[int, torch.Tensor] = {}
    for hook, entry in data.items():
        layer = None if hookpoints is None else hookpoints.get(hook)
        if layer is None and hookpoints is None:
            m = _HOOKPOINT.match(hook)
            layer = int(m.group(1)) if m else None
        if layer is None:
            raise UserError(
                f"{_where(path)}: hookpoint {hook!r} is not a decoder layer of this model "
                "(blackbox steers decoder-layer outputs)"
            )
        if entry.get("action", "add") != "add":
            raise UserError(f"{_where(path)}: {hook}: action {entry.get('action')!r}; only 'add'")
        if entry.get("head_index") is not None or entry.get("bias") is not None:
            raise UserError(f"{_where(path)}: {hook}: head_index and bias are not supported")
        v = _float(entry.get("steering_vector"), path, f"{hook}.steering_vector").reshape(-1)
        coeff = float(entry.get("steering_coefficient", 1.0))
        out[layer] = out.get(layer, 0) + coeff * v
    return out


def layer_dict(data: Mapping[Any, Any], path: Path) -> dict[int, torch.Tensor] | None:
    """``{layer: (d,)}`` of a steering-vectors style ``{layer: tensor}`` dict, or ``None`` when
    the keys are not layer numbers."""
    keys = list(data)
    if not keys or not all(
        isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in keys
    ):
        return None
    return {int(k): _float(v, path, f"layer {k}").reshape(-1) for k, v in data.items()}


def read_layer_directions(
    data: Any, path: Path, hookpoints: Mapping[str, int] | None = None
) -> dict[int, torch.Tensor] | None:
    """The per-layer directions of a loaded ``.pt`` / safetensors object, when it is one of the
    layer-keyed formats (steered dict, ``{layer: tensor}``); ``None`` otherwise."""
    if not isinstance(data, Mapping) or not data:
        return None
    if all(isinstance(v, Mapping) and "steering_vector" in v for v in data.values()):
        return steered_layers(data, path, hookpoints)
    return layer_dict(data, path)


def check_layers(
    directions: Mapping[int, torch.Tensor], path: Path, num_layers: int, hidden: int
) -> None:
    """One line on a layer outside the model, a width other than ``hidden`` or NaN/inf."""
    for layer, v in sorted(directions.items()):
        if not 0 <= layer < num_layers:
            raise UserError(
                f"{_where(path)}: layer {layer} but the model has {num_layers} layers "
                f"(0..{num_layers - 1})"
            )
        if v.numel() != hidden:
            raise UserError(
                f"{_where(path)}: layer {layer} has width {v.numel()}; the model's is {hidden}"
            )
        if not torch.isfinite(v).all():
            raise UserError(f"{_where(path)}: layer {layer} contains NaN or inf")
