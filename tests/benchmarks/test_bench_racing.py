"""``benchmarks/bench_racing.py``'s pieces that decide its figures (the runs themselves take
minutes each on the embedded model and are run on demand by ``make bench``)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from blackbox.models.loading import first_token_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_racing", ROOT / "benchmarks" / "bench_racing.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_each_task_gets_its_own_answer_direction_of_one_token_words(bench, tokenizer: Any) -> None:
    base = yaml.safe_load((ROOT / "studies" / "steer_rotten_tomatoes.yaml").read_text())
    demo = bench.task_study(base, "bb_rotten_tomatoes")
    assert demo == base and demo is not base  # the demo as it is
    for task, words in bench.ANSWERS.items():
        study = bench.task_study(base, task)
        vec = {v["name"]: v for v in study["space"]["vectors"]}
        assert vec["answer_bias"]["unembed"] == words
        assert vec["sentiment"] == {v["name"]: v for v in base["space"]["vectors"]}["sentiment"]
        # the task's own splits (a standard task has validation only), not the demo's train/test
        assert study["task"]["search_split"] is study["task"]["heldout_split"] is None
        ids = [first_token_id(tokenizer, w) for w in words]  # refuses words of several tokens
        assert ids[0] != ids[1]
    assert base["space"]["vectors"][1]["unembed"] == [" positive", " negative"]  # not mutated
    assert base["task"]["search_split"] == "train"


def test_forward_passes_to_reach_a_held_out_score(bench) -> None:
    curve = [(64.0, -0.9), (128.0, -0.8), (256.0, -0.7), (512.0, -0.7)]
    assert bench.reach(curve, -0.8) == 128.0
    assert bench.reach(curve, -0.7) == 256.0
    assert math.isnan(bench.reach(curve, -0.6))  # never reached


def test_a_resumed_bench_keeps_runs_of_the_same_settings_only(bench, tmp_path: Path) -> None:
    args = {"budget": 1024.0, "search": 64, "large": 0, "heldout": 100, "racing": "true"}
    args |= {"overrides": ["task.metric=gold_logprob"], "tasks": ["rte"], "seeds": [0]}
    path = tmp_path / "bench.json"
    assert bench.resumed_runs(path, args) == []  # nothing saved yet
    run = {"task": "rte", "search_docs": 64, "racing": False, "seed": 0}
    path.write_text(json.dumps({"args": args, "runs": [run]}))
    assert bench.resumed_runs(path, {**args, "seeds": [0, 1, 2]}) == [run]  # more seeds: fine
    with pytest.raises(SystemExit, match=r"other settings \(budget=1024.0\); use the same"):
        bench.resumed_runs(path, {**args, "budget": 2048.0})


def test_the_table_reaches_against_the_full_run_of_the_same_seed(bench) -> None:
    def run(racing: bool, seed: int, held: float, curve: list, **kw: Any) -> dict[str, Any]:
        return {"task": "t", "search_docs": 64, "racing": racing, "seed": seed} | {
            "heldout_best": held, "search_best": held, "evaluations": 16, "stopped": 0,
            "cost": 1024.0, "curve": curve, **kw,
        }  # fmt: skip

    runs = [
        run(False, 0, -0.7, [(512.0, -0.7)]),
        run(False, 1, -0.5, [(512.0, -0.6), (1024.0, -0.5)]),
        run(True, 0, -0.7, [(256.0, -0.7)], stopped=9, cut=2),
        run(True, 1, -0.6, [(300.0, -0.6)], stopped=5),  # never reaches seed 1's -0.5
    ]
    full, racing = bench.summarise(runs)
    assert (full["mode"], full["to_reach_full_final"], full["reached"]) == (
        "full",
        "768 (256)",
        "2/2",
    )
    assert (racing["to_reach_full_final"], racing["reached"]) == ("256 (0)", "1/2")
    assert racing["stopped"] == 7 and racing["cut"] == 1 and racing["seeds"] == [0, 1]
    lines = bench.table([full, racing])
    assert len(lines) == 4 and all(line.count("|") == 11 for line in lines)
    assert "| t | 64 | racing | 0 1 | -0.650 (0.050) |" in lines[3] and "| 7 (1) |" in lines[3]
