"""Soft prompts end to end on the embedded SmolLM2-135M-Instruct with real Rotten Tomatoes data:
Adam, projection, HotFlip repair, export, resume (small budget: CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "soft_rotten_tomatoes_adam.yaml"
SMALL = [
    "objective.search_size=16",
    "objective.heldout_size=32",
    "budget.evaluations=6",
    "strategy.settings={lr: 0.1, steps: 1, minibatch: 8}",
    "space.projection={beam_k: 2, beam_max: 8, repair_steps: 2, repair_topk: 4, ban: [positive, negative]}",
]


def _run(out: Path) -> subprocess.CompletedProcess:
    args = ["run", str(STUDY), "--out", str(out), "--no-progress"]
    args += [f"--set={s}" for s in SMALL]
    return subprocess.run(
        [sys.executable, "-m", "blackbox.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("soft") / "run"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "result.json").read_text()), proc.stdout


def test_stages_are_scored_on_search_and_heldout(run) -> None:
    _, result, log = run
    stages = {s["stage"]: s for s in result["stages"]}
    assert list(stages) == ["baseline", "no prompt", "soft", "projected", "beam", "repaired"]
    assert result["splits"] == {"search": 16, "heldout": 32}
    for s in stages.values():
        for split in ("search", "heldout"):
            assert 0.0 <= s[split]["acc"] <= 1.0 and s[split]["label_logprob"] < 0
    assert stages["baseline"]["text"] == "Is this review positive or negative?"
    # repair starts from the beam's tokens and only accepts swaps that lower the search loss
    assert (
        stages["repaired"]["search"]["label_logprob"] >= stages["beam"]["search"]["label_logprob"]
    )
    assert "| repaired |" in log and "forward-pass equivalents" in log


def test_adam_improves_on_its_first_step(run) -> None:
    out, result, _ = run
    import optuna

    study = optuna.load_study(
        study_name=result["study_name"], storage=f"sqlite:///{out / 'study.db'}"
    )
    search = [t for t in study.get_trials() if t.user_attrs["kind"] == "search"]
    values = [t.value for t in sorted(search, key=lambda t: t.number)]
    assert len(values) == 6 and max(values[1:]) > values[0]
    # cost: 6 evaluations of 16 docs + 6 gradient steps on 8 docs (backward = 2 forwards)
    assert result["cost_forward_passes"] == pytest.approx(6 * 16 + 6 * 3 * 8)


def test_exports_tensor_with_config_and_tokens(run, tokenizer) -> None:
    out, result, _ = run
    with safe_open(str(out / "soft_prompt.safetensors"), "pt") as f:
        emb = f.get_tensor("embeddings")
        assert emb.shape == (4, 576) and f.get_tensor("z").shape == (4 * 576,)
        cfg = json.loads(f.metadata()["config"])
    assert cfg["space"]["type"] == "soft_prompt" and cfg["strategy"]["name"] == "adam"
    tokens = json.loads((out / "tokens.json").read_text())
    for stage in ("projected", "beam", "repaired"):
        ids = tokens[stage]["ids"]
        assert len(ids) == 4 and tokenizer.decode(ids) == tokens[stage]["text"]
        assert not {"positive", "negative"} & {tokenizer.decode([i]).strip() for i in ids}
    # the soft stage's score is that of the exported tensor
    assert torch.isfinite(emb).all()
    assert (out / "config.yaml").exists() and (out / "best_so_far.png").exists()


def test_second_run_reads_every_evaluation_back(run) -> None:
    out, result, _ = run
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "result.json").read_text())
    # every search evaluation, the 2 baselines and the held-out scores are read back
    assert again["resumed_evaluations"] == 6 + 2 + 3 and again["evaluations"] == 6
    assert again["stages"] == result["stages"]
