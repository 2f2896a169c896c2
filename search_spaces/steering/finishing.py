"""Export a steering candidate as lm-eval's ``steered`` model file or a llama.cpp control vector.

``steered`` (default, ``steered.pt``): hookpoints (module paths relative to
``model.base_model``, e.g. ``layers.12``) -> ``{"steering_vector", "steering_coefficient",
"action": "add", "bias": None, "head_index": None}``; ``lm_eval --model steered --model_args
pretrained=DIR,steer_path=FILE`` then reproduces the candidate's score.

``gguf`` (``control_vector.gguf``): one F32 ``direction.{layer}`` per steered layer, the
coefficient folded in (:func:`~blackbox.search_spaces.steering.vector_files.write_control_vector`);
``llama-cli -m MODEL.gguf --control-vector FILE`` adds it after the same blocks (llama.cpp
cannot steer layer 0).  Vectors of one candidate on the same layer are summed in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from blackbox.models.layers import layer_path
from blackbox.search_spaces.finishing import Finisher


def steer_config(space: Any, candidate: Any, model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The ``steered`` config dict of one steering candidate."""
    out: dict[str, dict[str, Any]] = {}
    for layer, delta in sorted(space.steer_config(candidate).items()):
        out[layer_path(model, layer)] = {
            "steering_vector": delta.detach().float().cpu().contiguous(),  # (d,)
            "steering_coefficient": 1.0,
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    return out


def export_steered(space: Any, candidate: Any, model: torch.nn.Module, path: Path) -> Path:
    """Write the ``steered`` .pt file of ``candidate`` atomically; returns the path."""
    from blackbox.staging import Staged

    path = Path(path)
    with Staged() as staged:
        torch.save(steer_config(space, candidate, model), staged.path(path))
    return path


def export_control_vector(space: Any, candidate: Any, model: torch.nn.Module, path: Path) -> Path:
    """Write ``candidate`` as a llama.cpp / repeng GGUF control vector; returns the path."""
    from blackbox.search_spaces.steering.vector_files import write_control_vector

    hint = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    return write_control_vector(space.steer_config(candidate), path, model_hint=hint)


class SteeringFinisher(Finisher):
    """Steering runs end with the best candidate as lm-eval's ``steered`` .pt
    (``lm_eval --model steered`` reproduces its lm-eval scores)."""

    formats = {
        "steered": "steered.pt for lm-eval's steered model",
        "gguf": "control_vector.gguf for llama.cpp --control-vector (and repeng)",
    }

    @classmethod
    def export(
        cls, p: Any, candidate: Any, run_dir: Path, out: Path | None = None, fmt: str | None = None
    ) -> list[Path]:
        fmt = cls.check_format(fmt, "steering")
        if fmt == "gguf":
            target = Path(out) if out is not None else Path(run_dir) / "control_vector.gguf"
            return [export_control_vector(p.space, candidate, p.loaded.model, target)]
        target = Path(out) if out is not None else Path(run_dir) / "steered.pt"
        return [export_steered(p.space, candidate, p.loaded.model, target)]
