"""End to end on the embedded SmolLM2-135M-Instruct with real Rotten Tomatoes data.

No stand-ins: the real model, lm-eval's own task machinery, simple_evaluate and SteeredModel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from blackbox.config import apply_overrides, validate
from blackbox.evals.parity import reference_scores
from blackbox.search_spaces.steering.finishing import export_steered
from blackbox.search_spaces.steering.space import Edit
from blackbox.study.storage import records

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "studies" / "steer_rotten_tomatoes.yaml"
SMALL = [
    "task.search_size=24",
    "task.heldout_size=24",
    "budget.evaluations=8",
    "strategy.population=4",
]


@pytest.fixture(scope="module")
def prepared():
    from blackbox.study.pipeline import prepare

    cfg = validate(apply_overrides(yaml.safe_load(DEMO.read_text()), SMALL))
    return prepare(cfg, progress=False)


def _candidates(space):
    return [
        space.baseline(),
        (Edit("sentiment", 6, 0.1), Edit("answer_bias", 20, -0.05)),
        (Edit("sentiment", 15, -0.1), Edit("answer_bias", 3, 0.05)),
        (Edit("sentiment", 25, 0.05), Edit("answer_bias", 27, 0.03)),
    ]


def _assert_equals_simple_evaluate(p, cands, values) -> None:
    """Same accuracy as lm-eval's simple_evaluate with the hooks, log-likelihoods to 1e-4."""
    spec = p.objective.spec("search")
    for c, value in zip(cands, values):
        ref, ref_lls = reference_scores(
            p.lm, p.task, spec.split, spec.samples, lambda c=c: p.space.apply(p.loaded.model, [c])
        )
        assert value == pytest.approx(ref["acc"], abs=0)
        fast = np.concatenate(p.objective.request_logliks(p.space.intervention([c])))
        np.testing.assert_allclose(fast, np.concatenate(ref_lls), atol=1e-4, rtol=0)


def test_fast_path_equals_simple_evaluate_on_real_model(prepared) -> None:
    p = prepared
    cands = _candidates(p.space)
    ev = p.problem.evaluate(cands)
    lls = [np.concatenate(p.objective.request_logliks(p.space.intervention([c]))) for c in cands]
    for other in lls[1:]:  # every steered candidate changes the model's log-likelihoods
        assert np.abs(other - lls[0]).max() > 1e-2
    _assert_equals_simple_evaluate(p, cands, ev.values)


def test_packed_choices_equal_simple_evaluate_on_real_model() -> None:
    """Multi-token choices: each question's context runs once (a packed tree row), exactly."""
    from blackbox.study.pipeline import prepare

    over = [*SMALL, "task.name=social_iqa", "task.search_size=12"]
    over += ["task.search_split=validation", "task.heldout_split=validation"]  # its only split
    p = prepare(validate(apply_overrides(yaml.safe_load(DEMO.read_text()), over)), progress=False)
    search = p.objective.prepared("search")
    assert p.objective.scorer.packing is True and search.rows.parents is not None
    assert search.rows.sequences == 12 < sum(map(len, search.requests_of_doc))
    cands = _candidates(p.space)[:3]
    ev = p.problem.evaluate(cands)
    _assert_equals_simple_evaluate(p, cands, ev.values)


def test_export_reproduced_by_lm_eval_steered_model(prepared, tmp_path) -> None:
    from lm_eval.models.hf_steered import SteeredModel

    from blackbox.evals.lm_eval_tasks import quiet_lm_eval

    p = prepared
    cand = _candidates(p.space)[1]
    path = export_steered(p.space, cand, p.loaded.model, tmp_path / "steered.pt")
    spec = p.objective.spec("heldout")
    ours = p.problem.evaluate([cand], split="heldout").values[0]
    with quiet_lm_eval():
        steered = SteeredModel(
            pretrained=str(p.loaded.path), steer_path=str(path), device="cpu", batch_size=8
        )
    ref, _ = reference_scores(steered, p.task, spec.split, spec.samples, None)
    assert ref["acc"] == pytest.approx(ours, abs=0)


def _cli(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "blackbox.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_killed_run_resumes_with_the_same_command(tmp_path) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        str(DEMO),
        "--out",
        str(out),
        "--no-progress",
        *(f"--set={s}" for s in SMALL),
        "--set=budget.evaluations=16",
    ]
    proc = _cli(args)
    db = out / "study.db"
    deadline = time.time() + 300
    recorded = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                recorded = len(
                    records(
                        optuna.load_study(
                            study_name="steer_rotten_tomatoes", storage=f"sqlite:///{db}"
                        )
                    )
                )
            except Exception:
                recorded = 0
            if recorded >= 5:  # baseline + at least one batch of 4
                break
        time.sleep(0.5)
    assert proc.poll() is None, f"run ended before it could be killed:\n{proc.communicate()[0]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists()

    again = _cli(args)
    log, _ = again.communicate(timeout=600)
    assert again.returncode == 0, log
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_evaluations"] >= recorded
    assert result["evaluations"] == 16
    trials = records(
        optuna.load_study(study_name="steer_rotten_tomatoes", storage=f"sqlite:///{db}")
    )
    keys = [
        (t.user_attrs["kind"], t.user_attrs["generation"], t.user_attrs["index"]) for t in trials
    ]
    assert len(keys) == len(set(keys)) == 1 + 16 + 2, "no evaluation lost or recorded twice"
    assert (out / "steered.pt").exists() and (out / "best_so_far.png").exists()
    assert "baseline: unsteered" in log and "best found" in log


def test_the_demo_with_racing_writes_intervals_the_paired_test_and_documents(tmp_path) -> None:
    """The demo on the embedded model with ``scoring.racing`` on: result.json carries the
    held-out intervals, the paired test, the documents and the lm-eval commands; the printed
    table shows the intervals."""
    out = tmp_path / "run"
    args = ["run", str(DEMO), "--out", str(out), *(f"--set={s}" for s in SMALL)]
    args += ["--set=scoring.racing={schedule: [8], confidence: 0.9}", "--no-progress"]
    proc = _cli(args)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    result = json.loads((out / "result.json").read_text())
    held = result["statistics"]["heldout"]
    assert held["n_documents"] == 24 == len(result["provenance"]["heldout"]["documents"])
    assert held["best"]["ci95"][0] <= result["best"]["heldout"]["score"] <= held["best"]["ci95"][1]
    assert held["difference"]["test"] == "mcnemar_exact" and 0 <= held["difference"]["p"] <= 1
    assert len(result["provenance"]["search"]["documents"]) == 24
    assert result["racing"]["schedule"] == [8] and result["cost_forward_passes"] <= 8 * 24
    assert "--model steered" in result["provenance"]["lm_eval"]["commands"]["best"]
    assert "mcnemar_exact" in log and "95% bootstrap intervals" in log


def test_bad_layer_range_is_one_line_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "bad"
    proc = _cli(["run", str(DEMO), "--out", str(out), "--set", "space.layers=[2, 40]"])
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = [line for line in log.strip().splitlines() if line.startswith("blackbox: error")]
    assert lines == [
        "blackbox: error: config: space.layers: [2, 40] is outside the model's layers; allowed 0..29"
    ]
    assert not out.exists()
