"""``blackbox run`` then ``blackbox export`` for every space, on a tiny model saved to disk:
the exported file holds the run's best candidate (steered.pt, tokens.json, safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file

from blackbox.cli import main


def _config(model: Path, space: dict, objective: dict, strategy: dict) -> dict:
    cfg = {
        "name": f"export_{space['type']}",
        "model": {"name": str(model), "device": "cpu"},
        "space": space,
        "objective": objective,
        "strategy": strategy,
        "budget": {"evaluations": 4},
    }
    return cfg


CASES = {
    "steering": (
        lambda r: {
            "type": "steering",
            "layers": [0, 3],
            "vectors": [{"name": "v", "file": str(r / "v.pt")}],
        },
        {"type": "neuron", "layer": 2, "index": 3, "prompts": ["Hi there", "Why?"], "calibrate": 4},
        {"name": "random", "population": 2},
        "steered.pt",
    ),
    "tokens": (
        lambda r: {"type": "tokens", "n_tokens": 3},
        {"type": "neuron", "layer": 2, "index": 3, "chat": True, "calibrate": 4},
        {"name": "token_ga", "population": 2},
        "tokens.json",
    ),
    "soft_prompt": (
        lambda r: {
            "type": "soft_prompt",
            "n_tokens": 2,
            "subspace_dim": 4,
            "projection": {"beam_k": 1, "beam_max": 1, "repair_steps": 0},
        },
        {"type": "reference", "target": "Sure", "prompts": ["Say yes."]},
        {"name": "random", "population": 2},
        "soft_prompt.safetensors",
    ),
}


@pytest.mark.parametrize("space", list(CASES))
def test_export_writes_the_best_candidate_of_any_space(space, tiny_model_dir, tmp_path) -> None:
    make_space, objective, strategy, file = CASES[space]
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), tmp_path / "v.pt")
    cfg = _config(tiny_model_dir, make_space(tmp_path), objective, strategy)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "--no-progress"]) == 0
    result = json.loads((run / "result.json").read_text())
    assert file in result["files"] and result["space"] == space
    written = run / file
    before = written.read_bytes()
    written.unlink()
    out = tmp_path / f"again_{file}"
    assert main(["export", str(run), "--out", str(out)]) == 0
    best = max(
        (
            t
            for t in optuna.load_study(
                study_name=cfg["name"], storage=f"sqlite:///{run / 'study.db'}"
            ).get_trials()
            if t.user_attrs.get("kind") == "search" and t.value is not None
        ),
        key=lambda t: t.value,
    )
    if file == "tokens.json":
        assert json.loads(out.read_text()) == json.loads(before)
        assert json.loads(out.read_text())["best"]["ids"] == best.user_attrs["candidate"]["ids"]
    elif file == "soft_prompt.safetensors":
        a, b = load_file(str(out)), result
        assert a["embeddings"].shape == (2, 64) and b["best"]["candidate"]["label"] == "soft"
        torch.testing.assert_close(a["z"], torch.tensor([best.params[f"z{i}"] for i in range(4)]))
    else:
        a = torch.load(out, weights_only=True)
        layer = best.user_attrs["candidate"]["v.layer"]
        assert list(a) == [f"layers.{layer}"] and a[f"layers.{layer}"]["action"] == "add"
    assert main(["export", str(tmp_path / "nowhere")]) == 2
