"""A run's result.json carries intervals, the paired test, the documents it used and the lm-eval
commands that reproduce its held-out numbers; running those commands' equivalent through
lm-eval gives the same numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from blackbox.cli import main
from blackbox.evals.lm_eval_tasks import quiet_lm_eval


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    root = tmp_path_factory.mktemp("provenance")
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 4, root / "v.pt")
    cfg = {
        "name": "prov",
        "model": {"name": str(tiny_model_dir), "device": "cpu"},
        "task": {"name": "bb_rotten_tomatoes", "search_size": 16, "heldout_size": 16},
        "space": {
            "layers": [0, 3],
            "coeff": [-2.0, 2.0],
            "vectors": [{"name": "v", "file": str(root / "v.pt")}],
        },
        "strategy": {"name": "random", "population": 4},
        "budget": {"evaluations": 8},
        "scoring": {"racing": {"schedule": [8], "confidence": 0.75}},
    }
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "run"
    assert main(["run", str(root / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    return tiny_model_dir, out, json.loads((out / "result.json").read_text())


def test_result_has_intervals_the_paired_test_and_the_documents(run) -> None:
    _, out, result = run
    st = result["statistics"]["heldout"]
    assert st["n_documents"] == 16 == len(result["provenance"]["heldout"]["documents"])
    assert st["best"]["mean"] == result["best"]["heldout"]["score"]
    assert st["baseline"]["mean"] == result["baseline"]["heldout"]["score"]
    for k in ("best", "baseline"):
        lo, hi = st[k]["ci95"]
        assert lo <= st[k]["mean"] <= hi
    d = st["difference"]
    assert d["test"] == "mcnemar_exact" and 0 <= d["p"] <= 1
    assert d["mean"] == pytest.approx(st["best"]["mean"] - st["baseline"]["mean"])
    prov = result["provenance"]
    assert prov["search"]["split"] == "train" and len(prov["search"]["documents"]) == 16
    assert not set(prov["search"]["documents"]) & set(prov["heldout"]["documents"]) or (
        prov["search"]["split"] != prov["heldout"]["split"]
    )
    assert "--samples" in prov["lm_eval"]["commands"]["best"]
    assert "--model steered" in prov["lm_eval"]["commands"]["best"]


def test_racing_records_pruned_trials_and_the_best_is_full(run) -> None:
    _, out, result = run
    study = optuna.load_study(study_name="prov", storage=f"sqlite:///{out / 'study.db'}")
    search = [t for t in study.trials if t.user_attrs.get("kind") == "search"]
    full = [t for t in search if t.state == TrialState.COMPLETE]
    assert result["racing"]["stopped_candidates"] > 0
    assert result["racing"]["stopped_candidates"] + result["racing"]["cut_by_budget"] == sum(
        t.state == TrialState.PRUNED for t in search
    )
    assert all(len(t.user_attrs["per_doc"]) == 16 for t in full)
    assert result["best"]["search"]["score"] == max(t.value for t in full)
    assert result["cost_forward_passes"] == sum(t.user_attrs["cost"] for t in search)


def _lm_eval(model: str, args: dict[str, Any], prov: dict[str, Any]) -> float:
    import lm_eval
    from lm_eval.tasks import TaskManager

    spec = prov["lm_eval"]
    name = spec["task"]
    samples = json.loads(Path(spec["samples"]).read_text())
    with quiet_lm_eval():
        out = lm_eval.simple_evaluate(
            model=model,
            model_args=args,
            tasks=[name],
            samples=samples,
            task_manager=TaskManager(include_path=spec["include_path"]),
            bootstrap_iters=0,
            log_samples=True,
            verbosity="ERROR",
        )
    assert sorted(s["doc_id"] for s in out["samples"][name]) == sorted(samples[name])
    return float(out["results"][name]["acc,none"])


def test_the_lm_eval_commands_reproduce_the_heldout_numbers(run) -> None:
    """The commands' equivalent (same model, task YAML, samples; the steered file for the
    best) through lm-eval's own ``simple_evaluate``."""
    model_dir, out, result = run
    prov = result["provenance"]
    model = str(model_dir.resolve())
    assert f"pretrained={model}" in prov["lm_eval"]["commands"]["baseline"]
    base = _lm_eval("hf", {"pretrained": model, "device": "cpu"}, prov)
    assert base == result["baseline"]["heldout"]["score"]
    steer = str(out / "steered.pt")
    best = _lm_eval("steered", {"pretrained": model, "steer_path": steer, "device": "cpu"}, prov)
    assert best == result["best"]["heldout"]["score"]
    assert best != base  # the steered file changes the model: the check has teeth
