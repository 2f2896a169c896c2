"""Soft prompts for Rotten Tomatoes on the embedded model: hand-written vs Adam vs CMA-ES.

Runs the two bundled studies (``studies/soft_rotten_tomatoes_adam.yaml``, Adam on the full
4 x 576 soft prompt, and ``studies/soft_rotten_tomatoes_cmaes.yaml``, nevergrad's CMA-ES on a
64-dimensional random subspace) for each seed, each followed by projection to tokens and HotFlip
repair, and prints one table of held-out accuracy (mean +- std over seeds) per stage, with
the gain over the hand-written prompt in points.  Runs go to ``--out`` (resumable: run the
same command again after an interruption); the table is also written there as JSON.

    python benchmarks/bench_soft_prompt.py --seeds 0 1 2 --cmaes-evals 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from blackbox.config import load_config
from blackbox.study.pipeline import execute, prepare

ROOT = Path(__file__).resolve().parents[1]


def run(study: str, seed: int, out: Path, overrides: list[str]) -> dict:
    cfg = load_config(ROOT / "studies" / study, [f"seed={seed}", *overrides])
    run_dir = out / f"{cfg.name}-seed{seed}"
    t0 = time.perf_counter()
    result = execute(prepare(cfg, progress=False), run_dir, progress=False)
    print(f"{cfg.name} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--adam-evals", type=int, default=40)
    ap.add_argument("--cmaes-evals", type=int, default=300)
    ap.add_argument("--search-size", type=int, default=32)
    ap.add_argument("--heldout-size", type=int, default=200)
    ap.add_argument("--repair-steps", type=int, default=4)
    ap.add_argument("--repair-topk", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_soft_prompt")
    a = ap.parse_args()
    common = [
        f"objective.search_size={a.search_size}",
        f"objective.heldout_size={a.heldout_size}",
        f"space.projection.repair_steps={a.repair_steps}",
        f"space.projection.repair_topk={a.repair_topk}",
        "space.projection.beam_max=9",
    ]
    rows: dict[str, list[float]] = {}
    extra: dict[str, list[float]] = {}
    for seed in a.seeds:
        adam = run(
            "soft_rotten_tomatoes_adam.yaml",
            seed,
            a.out,
            [*common, f"budget.evaluations={a.adam_evals}"],
        )
        cma = run(
            "soft_rotten_tomatoes_cmaes.yaml",
            seed,
            a.out,
            [*common, f"budget.evaluations={a.cmaes_evals}"],
        )
        for tag, res in (("Adam", adam), (f"CMA-ES on z ({a.cmaes_evals} evals)", cma)):
            for st in res["stages"]:
                name = (
                    "hand-written prompt" if st["stage"] == "baseline" else f"{tag}: {st['stage']}"
                )
                if st["stage"] == "no prompt":
                    continue
                if st["stage"] == "baseline" and tag != "Adam":
                    continue
                rows.setdefault(name, []).append(st["heldout"]["acc"])
                extra.setdefault(name, []).append(st["search"]["acc"])
            extra.setdefault(f"{tag}: cost (forward passes)", []).append(res["cost_forward_passes"])
    base = np.mean(rows["hand-written prompt"])
    print(f"\nRotten Tomatoes, held-out {a.heldout_size} docs, seeds {a.seeds}\n")
    print("| stage | held-out acc (mean +- std) | gain vs hand-written (points) | search acc |")
    print("|---|---|---|---|")
    table = []
    for name, vals in rows.items():
        m, s = float(np.mean(vals)), float(np.std(vals))
        srch = float(np.mean(extra[name]))
        print(f"| {name} | {m:.3f} +- {s:.3f} | {100 * (m - base):+.1f} | {srch:.3f} |")
        table.append({"stage": name, "heldout_acc": vals, "search_acc": extra[name]})
    for name, vals in extra.items():
        if "cost" in name:
            print(f"\n{name}: {np.mean(vals):.0f} per seed")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.json").write_text(
        json.dumps({"args": vars(a) | {"out": str(a.out)}, "rows": table}, indent=2)
    )


if __name__ == "__main__":
    main()
