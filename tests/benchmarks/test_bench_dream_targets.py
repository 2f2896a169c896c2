"""``benchmarks/bench_dream_targets.py``: the target draw, the figures of a front, resume and
the budget every method is charged (on the tiny random Llama, at a tiny budget; the real runs
take hours on the embedded model and are run on demand by ``make bench``)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from blackbox.models.layers import mlp_width

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_dream_targets", ROOT / "benchmarks" / "bench_dream_targets.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_thirds_of_the_layers(bench) -> None:
    assert bench.band_layers(30) == [range(0, 10), range(10, 20), range(20, 30)]
    assert bench.band_layers(4) == [range(0, 1), range(1, 3), range(3, 4)]
    assert bench.band_layers(2) == [range(0, 1), range(1, 2), range(1, 2)]  # none empty


def test_the_target_draw_is_a_function_of_the_target_seed(bench, tiny_llama) -> None:
    a = bench.draw_targets(tiny_llama, 6, 6, seed=0)
    assert a == bench.draw_targets(tiny_llama, 6, 6, seed=0)  # deterministic
    assert a != bench.draw_targets(tiny_llama, 6, 6, seed=1)  # training vs validation draws
    assert [t["kind"] for t in a] == ["neuron"] * 6 + ["direction"] * 6
    bands = bench.band_layers(4)
    for kind in bench.KINDS:
        mine = [t for t in a if t["kind"] == kind]
        assert [t["band"] for t in mine] == ["early", "middle", "late"] * 2
        for t in mine:  # early, middle and late thirds: layers 0, 1-2, 3 of 4
            assert t["layer"] in bands[bench.BANDS.index(t["band"])]
    for t in a:
        if t["kind"] == "neuron":
            assert 0 <= t["index"] < mlp_width(tiny_llama, t["layer"])
    # target i of a kind does not depend on how many are drawn
    small = bench.draw_targets(tiny_llama, 2, 1, seed=0)
    assert small == a[:2] + a[6:7]
    # a direction is its seed's randn, as a direction objective's direction_seed draws it
    d = bench.direction_of(tiny_llama, a[6]["index"])
    assert d.shape == (64,) and bench.direction_of(tiny_llama, a[6]["index"]).equal(d)


def test_hypervolume_and_z_at_fluency_on_a_hand_made_front(bench) -> None:
    # (z, cross-entropy): three on the front, one dominated, one past the reference's CE
    z = np.array([1.0, 3.0, 5.0, 2.0, 9.0, np.nan])
    ce = np.array([2.0, 4.0, 8.0, 6.0, 13.0, 1.0])
    assert bench.front_of(z, ce).tolist() == [True, True, True, False, True, False]
    # the area inside (z >= 0, CE <= 12) dominated by some point, counted on a fine grid
    step = 0.01
    gz, gc = np.meshgrid(np.arange(0, 10, step) + step / 2, np.arange(0, 12, step) + step / 2)
    ok = np.isfinite(z)
    dominated = (
        (z[ok][None, None, :] >= gz[..., None]) & (ce[ok][None, None, :] <= gc[..., None])
    ).any(-1)
    grid = dominated.sum() * step * step
    assert grid == pytest.approx(34.0, abs=1e-6)  # 1 x 2 + 3 x 4 + 5 x 4
    assert bench.hypervolume(z, ce, 0.0, 12.0) == pytest.approx(grid)
    assert bench.hypervolume(z, ce, 2.0, 12.0) == pytest.approx(1 * 4 + 3 * 4)
    assert bench.hypervolume(z, ce, 10.0, 12.0) == 0.0
    assert bench.z_at_fluency(z, ce, 7.0) == 3.0  # not the NaN at CE 1
    assert bench.z_at_fluency(z, ce, 8.0) == 5.0
    assert math.isnan(bench.z_at_fluency(z, ce, 1.5))
    run = {"front": [[1.0, 2.0, "a"], [3.0, 4.0, "b"], [5.0, 8.0, "c"]]}
    assert bench.run_figures(run, 7.0, (0.0, 12.0)) == {
        "best_z": 5.0,
        "z_at_ce": 3.0,
        "hypervolume": pytest.approx(34.0),
    }


def test_the_summary_pairs_targets_over_seeds(bench) -> None:
    def run(target: str, method: str, seed: int, z: float) -> dict[str, Any]:
        return {"target": target, "method": method, "seed": seed, "spent": 600.0,
                "front": [[z, 6.0, "p"], [z + 1, 10.0, "q"]]}  # fmt: skip

    runs = [
        run(t, m, s, z)
        for t, base in (("t0", 1.0), ("t1", 2.0), ("t2", 3.0))
        for m, gain in (("epo", 1.0), ("random", 0.0))
        for s, z in ((0, base + gain), (1, base + gain + 0.5))
    ]
    s = bench.summarise(runs, ["epo", "random"], 7.0, (0.0, 12.0))
    rows = {r["method"]: r for r in s["rows"]}
    assert rows["epo"]["best_z"] == "4.25 (1.25)" and rows["epo"]["reached"] == "6/6"
    best = next(c for c in s["paired"] if c["figure"] == "best_z")
    assert (best["a"], best["b"], best["targets"], best["ahead"]) == ("epo", "random", 3, 3)
    assert best["mean"] == pytest.approx(1.0)
    lines = bench.table(s)
    assert "| epo - random | best_z | 3 | +1.00 [+1.00, +1.00] |" in "\n".join(lines)


def test_resume_skips_finished_runs_and_every_method_spends_the_budget(
    bench, tiny_llama, tokenizer, tmp_path: Path
) -> None:
    lm = SimpleNamespace(model=tiny_llama, tokenizer=tokenizer)
    path = tmp_path / "dream.json"
    argv = ["--neurons", "1", "--directions", "1", "--seeds", "0", "--budget", "80"]
    argv += ["--calibration", "16", "--n-tokens", "4", "--json", str(path)]
    args = bench.parse_args(argv)
    doc, made = bench.run_bench(lm, args)
    assert made == 2 * 4  # two targets, four methods, one seed
    saved = json.loads(path.read_text())
    assert len(saved["runs"]) == 8 and saved["args"]["target_seed"] == 0
    assert saved["targets"] == bench.draw_targets(tiny_llama, 1, 1, 0)
    for r in saved["runs"]:
        # charged at least the budget, and at most one step (one batch) more
        assert args.budget <= r["spent"] < args.budget + r["max_step"], r
        assert 0 < r["evaluated"] <= r["spent"]  # new prompts; repeats and rejects are free
        assert r["front"] and all(np.isfinite(p[0]) and np.isfinite(p[1]) for p in r["front"])
    steps = {r["method"]: r["max_step"] for r in saved["runs"]}
    # one step: a batch of new prompts (repeats and rejected prompts cost nothing) and the
    # gradients of its parents (three forward passes a prompt)
    assert steps["random"] <= 32 and steps["ga"] <= 16
    assert steps["epo"] <= 4 * 3 + 32 and steps["gcg"] <= 3 + 64
    assert {r["method"] for r in doc["summary"]["rows"]} == {"epo", "gcg", "ga", "random"}
    assert {c["b"] for c in doc["summary"]["paired"]} == {"gcg", "ga", "random"}
    # the same settings again: nothing to run
    again, made = bench.run_bench(lm, bench.parse_args(argv))
    assert made == 0 and len(again["runs"]) == 8
    # a new seed runs only the new seed's runs, for one method
    _, made = bench.run_bench(
        lm, bench.parse_args(argv[:5] + ["0", "1"] + argv[6:] + ["--methods", "random"])
    )
    assert made == 2
    # other settings are refused
    with pytest.raises(SystemExit, match=r"other settings \(budget=80.0\)"):
        bench.run_bench(lm, bench.parse_args([*argv[:7], "64", *argv[8:]]))
