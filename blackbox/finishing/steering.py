"""Export a steering candidate as lm-eval's ``steered`` model file.

The file maps hookpoints (module paths relative to ``model.base_model``, e.g. ``layers.12``)
to ``{"steering_vector", "steering_coefficient", "action": "add", "bias": None,
"head_index": None}``; ``lm_eval --model steered --model_args pretrained=DIR,steer_path=FILE``
then reproduces the candidate's score.  Vectors of one candidate on the same layer are summed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from blackbox.finishing.base import Finisher
from blackbox.models.layers import layer_path


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(steer_config(space, candidate, model), tmp)
    os.replace(tmp, path)
    return path


class SteeringFinisher(Finisher):
    """Steering runs end with the best candidate as lm-eval's ``steered`` .pt
    (``lm_eval --model steered`` reproduces its lm-eval scores)."""

    @classmethod
    def export(cls, p: Any, candidate: Any, run_dir: Path, out: Path | None = None) -> list[Path]:
        target = Path(out) if out is not None else Path(run_dir) / "steered.pt"
        return [export_steered(p.space, candidate, p.loaded.model, target)]
