"""Every allowed cell of the space x objective x strategy matrix runs, from config, on a tiny
model; every refused cell is refused before any model loads, with one line naming both sides.

The cells come from the registries' traits (:func:`blackbox.config.rules.allowed_cells`), so a
new space, objective or strategy is walked here without editing this file.  Each (space,
objective) pair is prepared once through the real pipeline (``prepare``: registries, builders,
calibration) and every strategy that can meet it runs two evaluations through the runner into
a real Optuna storage.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from blackbox.config import ConfigError, validate
from blackbox.config.rules import allowed_cells
from blackbox.evals.registry import OBJECTIVES
from blackbox.models.loading import LoadedModel
from blackbox.search_spaces.registry import SPACES
from blackbox.strategies import STRATEGIES
from blackbox.study.pipeline import prepare
from blackbox.study.runner import Budget, Runner
from blackbox.study.storage import open_study

PROMPTS = ["Tell me about the sea.", "What is a good breakfast?"]
HELDOUT = ["Name a colour."]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(4, 64, generator=g), root / "vec.pt")
    torch.save(torch.randn(64, generator=g), root / "feature.pt")
    torch.save({"W_dec": torch.randn(5, 64, generator=g)}, root / "sae.pt")
    return root


@pytest.fixture(scope="module")
def loaded(tiny_llama: Any, tokenizer: Any) -> LoadedModel:
    return LoadedModel(tiny_llama, tokenizer, "tiny-llama", Path("."), "cpu", "float32", 0.0)


SPACE_CFG: dict[str, Any] = {
    "steering": lambda f: {
        "type": "steering",
        "layers": [0, 3],
        "coeff": [-0.5, 0.5],
        "vectors": [{"name": "v", "file": str(f / "vec.pt")}],
    },
    "tokens": lambda f: {"type": "tokens", "n_tokens": 3, "placement": "after_input"},
    "soft_prompt": lambda f: {
        "type": "soft_prompt",
        "n_tokens": 2,
        "placement": "after_input",
        "subspace_dim": 4,
        "projection": {"beam_k": 1, "beam_max": 1, "repair_steps": 0},
    },
}
DOCS = {"prompts": PROMPTS, "heldout_prompts": HELDOUT, "calibrate": 4}
OBJECTIVE_CFG: dict[str, Any] = {
    "lm_eval_task": lambda f: {"type": "lm_eval_task"},
    "classification": lambda f: {"type": "classification", "search_size": 2, "heldout_size": 2},
    "behaviour": lambda f: {
        "type": "behaviour",
        "reference": "Talk like a pirate.",
        "prompts": PROMPTS,
        "heldout_prompts": HELDOUT,
        "max_new_tokens": 4,
        "k": 2,
    },
    "reference": lambda f: {
        "type": "reference",
        "target": "Sure, here",
        "prompts": PROMPTS,
        "heldout_prompts": HELDOUT,
    },
    "neuron": lambda f: {"type": "neuron", "layer": 2, "index": 5, **DOCS},
    "residual_direction": lambda f: {"type": "residual_direction", "layer": 1, **DOCS},
    "feature_direction": lambda f: {
        "type": "feature_direction",
        "layer": 1,
        "file": str(f / "feature.pt"),
        **DOCS,
    },
    "lp_features": lambda f: {
        "type": "lp_features",
        "layer": 1,
        "file": str(f / "sae.pt"),
        "rows": [0, 3],
        **DOCS,
    },
    "logit": lambda f: {"type": "logit", "target": " sea", **DOCS},
    "fluency": lambda f: {"type": "fluency", "prompts": PROMPTS},
}
STRATEGY_CFG: dict[str, dict[str, Any]] = {
    "pso": {"population": 2},
    "nevergrad": {"population": 2, "settings": {"optimizer": "RandomSearch"}},
    "optuna": {"population": 2, "settings": {"sampler": "random"}},
    "random": {"population": 2},
    "epo": {"population": 1, "settings": {"children": 2, "topk": 4}},
    "gcg": {"settings": {"search_width": 2, "topk": 4}},
    "token_ga": {"population": 2, "settings": {"mutation": {"gradient_topk": 1.0}}},
    "adam": {"settings": {"minibatch": 1}},
}


def study(space: str, objective: str, strategy: str, files: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": f"{space}-{objective}-{strategy}",
        "model": {"name": "tiny-llama", "device": "cpu"},
        "space": SPACE_CFG[space](files),
        "objective": OBJECTIVE_CFG[objective](files),
        "strategy": {"name": strategy, **STRATEGY_CFG[strategy]},
        "budget": {"evaluations": 2},
    }
    if objective == "lm_eval_task":
        cfg["task"] = {"name": "bb_rotten_tomatoes", "search_size": 2, "heldout_size": 2}
    return cfg


CELLS = allowed_cells()
PAIRS: dict[tuple[str, str], list[str]] = defaultdict(list)
for _s, _o, _g in CELLS:
    PAIRS[(_s, _o)].append(_g)


def test_the_matrix_covers_every_registered_name() -> None:
    assert {s for s, _, _ in CELLS} == set(SPACES.names())
    assert {o for _, o, _ in CELLS} == set(OBJECTIVES.names())
    assert {g for _, _, g in CELLS} == set(STRATEGIES.names())
    assert set(SPACE_CFG) == set(SPACES.names()) and set(OBJECTIVE_CFG) == set(OBJECTIVES.names())
    assert set(STRATEGY_CFG) == set(STRATEGIES.names())
    # what must hold whatever the registries grow into
    assert ("steering", "lm_eval_task", "pso") in CELLS
    assert ("tokens", "lm_eval_task", "epo") in CELLS
    assert ("soft_prompt", "neuron", "adam") in CELLS
    assert ("steering", "behaviour", "nevergrad") in CELLS
    assert ("steering", "feature_direction", "optuna") in CELLS
    assert not any(g == "adam" and s != "soft_prompt" for s, _, g in CELLS)
    assert not any(g in ("epo", "gcg", "token_ga") and s != "tokens" for s, _, g in CELLS)
    assert not any(g == "pso" and s == "tokens" for s, _, g in CELLS)
    assert not any(o == "fluency" and s != "tokens" for s, o, _ in CELLS)


@pytest.mark.parametrize("pair", sorted(PAIRS), ids=lambda p: f"{p[0]}-{p[1]}")
def test_every_allowed_cell_runs(pair, files, loaded, tmp_path) -> None:
    space, objective = pair
    first = PAIRS[pair][0]
    p = prepare(validate(study(space, objective, first, files)), progress=False, loaded=loaded)
    url = f"sqlite:///{tmp_path / 'm.db'}"
    for strategy in PAIRS[pair]:
        cfg = validate(study(space, objective, strategy, files))
        s_cfg = cfg.strategy
        from blackbox.strategies import make_strategy

        strat = make_strategy(
            s_cfg.name, p.space.box, seed=0, population=s_cfg.population, **s_cfg.settings
        )
        p.objective.reset_cache()
        st = open_study(url, cfg.name, p.space.box, cfg.fingerprint())
        summary = Runner(
            p.space,
            p.objective,
            strat,
            st,
            Budget(evaluations=2),
            progress=False,
            baselines=p.baselines,
        ).run()
        assert summary.evaluations == 2, strategy
        values = [t.value for t in st.get_trials() if t.user_attrs.get("kind") == "search"]
        assert len(values) == 2 and any(v is not None and np.isfinite(v) for v in values), strategy
        assert summary.search_cost > 0, strategy
        if "heldout" in p.objective.splits:
            assert summary.heldout_best is not None and np.isfinite(summary.heldout_best.value)
    assert optuna.get_all_study_names(url)


REFUSED = [
    ("steering", "lm_eval_task", "adam", "'adam' cannot search a steering space"),
    ("soft_prompt", "lm_eval_task", "epo", "'epo' cannot search a soft-prompt space"),
    ("tokens", "neuron", "pso", "'pso' cannot search a token space"),
    ("steering", "fluency", "random", "'fluency' cannot score a steering space"),
]


@pytest.mark.parametrize("space,objective,strategy,message", REFUSED)
def test_a_refused_cell_is_one_line_naming_both_sides(
    space, objective, strategy, message, files
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        validate(study(space, objective, strategy, files))
    assert "\n" not in str(err.value)


def test_steering_needs_documents_for_internal_objectives(files) -> None:
    data = study("steering", "neuron", "random", files)
    del data["objective"]["prompts"], data["objective"]["heldout_prompts"]
    with pytest.raises(ConfigError, match="steering has no prompt of its own"):
        validate(data)
