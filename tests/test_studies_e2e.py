"""Every study config of a new cell of the matrix runs on the embedded SmolLM2-135M-Instruct
with real data (small budgets: CI) and writes result.json with its space's files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# study -> (overrides, the files its finishing step writes)
CELLS = {
    "tokens_rotten_tomatoes.yaml": (
        [
            "task.search_size=6",
            "task.heldout_size=6",
            "budget.cost=200",
            "strategy.settings={children: 2, topk: 16}",
        ],
        ["tokens.json"],
    ),
    "steer_feature_cats.yaml": (
        ["budget.evaluations=8", "objective.calibrate=8"],
        ["steered.pt"],
    ),
    "steer_behaviour_cats.yaml": (
        ["budget.evaluations=8", "objective.max_new_tokens=8", "objective.k=4"],
        ["steered.pt"],
    ),
    "soft_dream_neuron.yaml": (
        [
            "budget.evaluations=4",
            "objective.calibrate=8",
            "space.projection={beam_k: 1, beam_max: 1, repair_steps: 1, repair_topk: 2}",
        ],
        ["soft_prompt.safetensors", "tokens.json"],
    ),
    "tokens_behaviour_cats.yaml": (
        [
            "budget.cost=30",
            "objective.max_new_tokens=6",
            "objective.k=4",
            "objective.prompts=[Hi there.]",
            "strategy.settings={search_width: 4, topk: 16}",
        ],
        ["tokens.json"],
    ),
    "steer_rotten_tomatoes_side_effects.yaml": (
        [
            "task.search_size=8",
            "task.heldout_size=8",
            "budget.evaluations=8",
            "strategy.population=4",
            "side_effects=[{type: kl, max: 0.1, size: 4, heldout_size: 4, max_tokens: 16}, "
            "{type: guard, task: rte, search_size: 8, heldout_size: 8, max_drop: 5}]",
        ],
        ["steered.pt"],
    ),
    "dream_lp_features.yaml": (
        ["budget.cost=60", "objective.calibrate=16"],
        ["tokens.json", "pareto.png"],
    ),
}


@pytest.mark.parametrize("study", list(CELLS))
def test_study_runs_and_writes_its_result(study: str, tmp_path: Path) -> None:
    overrides, files = CELLS[study]
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "blackbox.cli",
        "run",
        str(ROOT / "studies" / study),
        "--out",
        str(out),
        "--no-progress",
        *(f"--set={o}" for o in overrides),
    ]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    best = result["best"]["search"]
    assert best is not None and np.isfinite(best["score"])
    assert result["baselines"] and all(
        np.isfinite(b["search"]["score"]) for b in result["baselines"].values()
    )
    assert set(files) <= set(result["files"]) and all((out / f).exists() for f in files)
    if "heldout" in result["splits"]:
        assert np.isfinite(result["best"]["heldout"]["score"])
    if result["calibration"]:
        assert result["metric"] == "z" and result["calibration"]["sigma"] > 0
    assert "best found" in proc.stdout
    # --no-progress: no bar at all, lm-eval's own (guard tasks' request building) included
    assert "it/s]" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]
    side = result.get("side_effects")
    if side is not None:  # the front, held-out re-scored, and the chosen member exported
        assert side["front"] and all(m["heldout"] is not None for m in side["front"])
        assert side["chosen"]["heldout"] is not None and (out / "pareto.png").exists()
        assert result["best"]["candidate"] is not None
        import torch

        written = torch.load(out / "steered.pt", weights_only=True)
        again = subprocess.run(
            [
                sys.executable,
                "-m",
                "blackbox.cli",
                "export",
                str(out),
                "--out",
                str(tmp_path / "e.pt"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        exported = torch.load(tmp_path / "e.pt", weights_only=True)  # the chosen member again
        assert written.keys() == exported.keys()
        for k in written:
            assert torch.equal(written[k]["steering_vector"], exported[k]["steering_vector"])
