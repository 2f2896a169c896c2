"""sae-lens style SAE directories: ``cfg.json`` + ``sae_weights.safetensors``.

The decoder ``W_dec`` ``(d_sae, d_in)`` holds one residual-stream direction per feature (row
``i`` = feature ``i``); ``cfg.json``'s ``hook_name`` says which residual stream the SAE reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from blackbox.errors import UserError

SAE_CONFIG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"


def sae_layer(cfg: dict[str, Any]) -> int | None:
    """The decoder layer whose output an SAE reads (blackbox numbering), from its hook name:
    ``blocks.L.hook_resid_post`` -> L, ``blocks.L.hook_resid_pre`` -> L - 1 (``-1``: the
    embeddings), ``model.layers.L`` -> L; ``None`` when the hook is not the residual stream."""
    import re

    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name") or ""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook)
    if m:
        return int(m.group(1)) - (1 if m.group(2) == "pre" else 0)
    m = re.fullmatch(r"(?:model\.)?layers\.(\d+)", hook)
    return int(m.group(1)) if m else None


def load_sae_decoder(path: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """``W_dec`` ``(d_sae, d_in)`` and the config of a sae-lens style SAE directory
    (``cfg.json`` + ``sae_weights.safetensors``).

    Raises:
        ValueError: one line: a missing file, no ``W_dec``, a shape other than
            ``(cfg.d_sae, cfg.d_in)``, a dtype that is not floating point.
    """
    import json

    from safetensors import safe_open

    path = Path(path)
    where = f"SAE directory {str(path)!r}"
    missing = [f for f in (SAE_CONFIG, SAE_WEIGHTS) if not (path / f).is_file()]
    if missing:
        raise UserError(f"{where}: no {' or '.join(missing)} (a sae-lens SAE directory)")
    try:
        cfg = json.loads((path / SAE_CONFIG).read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{where}: {SAE_CONFIG} is not JSON") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: {SAE_CONFIG} is not a JSON object")
    try:
        with safe_open(str(path / SAE_WEIGHTS), framework="pt") as f:
            if "W_dec" not in f.keys():
                raise UserError(f"{where}: {SAE_WEIGHTS} has no W_dec")
            w = f.get_tensor("W_dec")
    except ValueError:
        raise
    except Exception as exc:
        raise UserError(f"{where}: {SAE_WEIGHTS} cannot be read ({type(exc).__name__})") from None
    if not w.is_floating_point():
        raise UserError(f"{where}: W_dec has dtype {w.dtype}; expected a float tensor")
    want = (cfg.get("d_sae"), cfg.get("d_in"))
    if w.dim() != 2 or (None not in want and tuple(w.shape) != want):
        raise UserError(
            f"{where}: W_dec has shape {tuple(w.shape)}; cfg.json says (d_sae, d_in) = {want}"
        )
    return w.float(), cfg
