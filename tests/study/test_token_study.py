"""Token studies end to end through the CLI on the embedded model (small budgets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from blackbox.config import ConfigError, apply_overrides, read_yaml, validate

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _run(config: str, out: Path, *sets: str) -> tuple[int, str]:
    args = [
        sys.executable,
        "-m",
        "blackbox.cli",
        "run",
        str(ROOT / "studies" / config),
        "--out",
        str(out),
        "--no-progress",
    ]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_dream_neuron_with_epo_writes_front_and_resumes(tmp_path) -> None:
    out = tmp_path / "dream"
    code, log = _run("dream_neuron.yaml", out, "budget.cost=60", "space.n_tokens=4")
    assert code == 0, log
    result = json.loads((out / "result.json").read_text())
    front = result["pareto_front"]
    attribution = result["prompt"]["attribution"]
    assert front and result["prompt"]["text"] and len(attribution) == 4
    assert result["metric"] == "z" and result["calibration"]["sigma"] > 0  # z-scored (eq. 5)
    assert "activation" in result["best"]["search"]["metrics"]
    assert all(isinstance(a["token"], str) and np.isfinite(a["drop"]) for a in attribution)
    x = np.array([p["xentropy"] for p in front])
    v = np.array([p["value"] for p in front])
    for i in range(len(front)):  # non-dominated: nobody is at least as good on both, better on one
        dominated = (v >= v[i]) & (x <= x[i]) & ((v > v[i]) | (x < x[i]))
        assert not dominated.any()
    # the budget holds exactly: the run stops when the next gradient pass (4 prompts, one
    # forward + one backward each = 12) plus one candidate no longer fits in what is left
    cost = result["cost_forward_passes"]
    assert 60 - 13 < cost <= 60 + 1e-6 and (out / "pareto.png").exists()
    trials = optuna.load_study(
        study_name="dream_neuron", storage=f"sqlite:///{out / 'study.db'}"
    ).get_trials()
    code, log = _run("dream_neuron.yaml", out, "budget.cost=60", "space.n_tokens=4")
    assert code == 0, log
    again = json.loads((out / "result.json").read_text())
    # every search evaluation and the "no prompt" baseline are read back
    assert again["resumed_evaluations"] == again["evaluations"] + 1
    assert again["evaluations"] == result["evaluations"]
    assert len(
        optuna.load_study(
            study_name="dream_neuron", storage=f"sqlite:///{out / 'study.db'}"
        ).get_trials()
    ) == len(trials)


def test_logit_target_never_evaluates_banned_text(tmp_path) -> None:
    out = tmp_path / "logit"
    code, log = _run("logit_target.yaml", out, "budget.cost=60", "space.n_tokens=4")
    assert code == 0, log
    trials = optuna.load_study(
        study_name="logit_target", storage=f"sqlite:///{out / 'study.db'}"
    ).get_trials()
    texts = [t.user_attrs["candidate"]["text"] for t in trials if t.value is not None]
    assert texts and not any("cat" in t.lower() for t in texts)


def test_token_config_errors_are_one_line() -> None:
    data = read_yaml(ROOT / "studies" / "dream_neuron.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'objective.idx'; allowed here: .*index"):
        validate(apply_overrides(data, ["objective.idx=3"]))
    with pytest.raises(ConfigError, match=r"objective: a study needs an objective"):
        validate({k: v for k, v in data.items() if k != "objective"})
    bad = apply_overrides(data, ["objective.layer=99"])
    code, log = _run_cfg(bad)
    assert (
        code == 2
        and log.strip().splitlines()[-1]
        == "blackbox: error: config: objective.layer: 99 is outside 0..29"
    )


def _run_cfg(data: dict) -> tuple[int, str]:
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = subprocess.run(
            [sys.executable, "-m", "blackbox.cli", "run", str(path), "--out", str(Path(d) / "o")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert not (Path(d) / "o").exists()
        return proc.returncode, proc.stderr
