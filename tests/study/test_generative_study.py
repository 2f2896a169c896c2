"""Whole studies on generative and perplexity lm-eval tasks (tiny model): steering searched
for TriviaQA's exact match with racing, a token prompt by the GA, and a perplexity guard;
result.json says what decoding did and budgets count generated tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from blackbox.config import validate
from blackbox.study.pipeline import run_config


@pytest.fixture
def vector(tmp_path: Path) -> str:
    torch.save(torch.ones(4, 64), tmp_path / "v.pt")
    return str(tmp_path / "v.pt")


def _study(model_dir: Path, **over) -> dict:
    cfg = {
        "name": "gen",
        "model": {"name": str(model_dir), "device": "cpu"},
        "task": {
            "name": "triviaqa",
            "metric": "exact_match",
            "search_size": 6,
            "heldout_size": 4,
            "max_gen_toks": 8,  # a random model never stops on its own
        },
        "strategy": {"name": "random", "population": 2},
        "budget": {"evaluations": 4},
    }
    cfg.update(over)
    return cfg


def test_steering_for_triviaqa_records_decoding(
    standard_data_dir, tiny_model_dir, vector, tmp_path
) -> None:
    space = {"layers": [0, 3], "vectors": [{"name": "v", "file": vector}]}
    scoring = {"racing": {"schedule": [3]}, "gen_rows": 5}
    cfg = _study(tiny_model_dir, space=space, scoring=scoring)
    result = run_config(validate(cfg), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    best = saved["best"]["heldout"]
    assert best["metrics"]["exact_match"] == best["score"]
    assert "exact_match,remove_whitespace" in best["metrics"]
    gen = saved["scoring"]["generation"]
    assert (
        gen["shared_prefill"] is True and gen["rows"] <= gen["generated_tokens"] <= 8 * gen["rows"]
    )
    assert gen["rows_per_call"] == 5  # scoring.gen_rows reached the decoder
    assert result["evaluations"] >= 4
    variant = (tmp_path / "run" / "lm_eval" / "triviaqa_heldout.yaml").read_text()
    assert "max_gen_toks: 8" in variant  # the reproducing lm_eval command caps it too


def test_a_token_prompt_for_triviaqa(standard_data_dir, tiny_model_dir, tmp_path) -> None:
    cfg = _study(
        tiny_model_dir,
        space={"type": "tokens", "n_tokens": 2, "placement": "after_input"},
        strategy={"name": "token_ga", "population": 2},
    )
    run_config(validate(cfg), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert 0.0 <= saved["best"]["search"]["score"] <= 1.0
    assert saved["scoring"]["generation"]["rows"] > 0


def test_perplexity_guard_beside_a_generative_fitness(
    standard_data_dir, tiny_model_dir, vector, tmp_path
) -> None:
    """The guard's column is the rise of bits per byte (x100) over the unsteered model."""
    space = {"layers": [0, 3], "vectors": [{"name": "v", "file": vector}]}
    guard = {
        "type": "guard",
        "task": "bb_rotten_tomatoes_ppl",
        "metric": "bits_per_byte",
        "search_size": 4,
        "heldout_size": 4,
        "max_drop": 5.0,
    }
    cfg = _study(tiny_model_dir, space=space, side_effects=[guard])
    run_config(validate(cfg), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    chosen = saved["side_effects"]["chosen"]
    col = "drop:bb_rotten_tomatoes_ppl"
    assert col in json.dumps(saved["side_effects"])
    assert chosen is not None


def test_a_soft_prompt_for_triviaqa(standard_data_dir, tiny_model_dir, tmp_path) -> None:
    """Gradient-free search of a soft prompt; its projection to tokens is scored by decoding
    (no gradient repair: a generative task has no choice to follow)."""
    cfg = _study(
        tiny_model_dir,
        space={"type": "soft_prompt", "n_tokens": 2, "placement": "after_input", "subspace_dim": 8},
        strategy={"name": "random", "population": 2},
    )
    run_config(validate(cfg), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["scoring"]["generation"]["rows"] > 0
    assert 0.0 <= saved["best"]["heldout"]["score"] <= 1.0


def test_a_sampling_task_is_refused_before_the_model_loads(
    standard_data_dir, tiny_model_dir, vector
) -> None:
    from blackbox.evals.lm_eval_splits import load_task
    from blackbox.sections import ConfigError
    from blackbox.study.pipeline import check_with_task

    task = load_task("triviaqa")
    task.config.generation_kwargs["do_sample"] = True
    cfg = validate(
        _study(tiny_model_dir, space={"layers": [0, 3], "vectors": [{"name": "v", "file": vector}]})
    )
    with pytest.raises(ConfigError, match=r"samples its generations \(do_sample: true\)"):
        check_with_task(cfg, task)
