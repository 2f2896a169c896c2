"""Racing vs full scoring at one forward-pass budget, on the embedded model.

The demo's search (``studies/steer_rotten_tomatoes.yaml``: two steering vectors, PSO with 8
particles) on the demo task and two standard lm-eval tasks with fixed answers (rte: True/False,
boolq: yes/no); per task, ``--seeds`` strategy seeds (the data subsample is the demo's, seed 0,
for every run; on another task the demo's second vector, the logit-lens answer direction, is the
task's answers' instead of " positive" minus " negative": see ``ANSWERS``) and two modes at the
same budget of ``--budget`` forward-pass equivalents:

- ``full``: every candidate on every search document (today's default);
- ``racing``: ``scoring.racing: true`` (16, 32, then all 64 documents; confidence 0.95).

and, on the first task, ``racing`` with ``--large`` search documents (a larger search set at
the same budget: does it overfit less?).  Held-out scores are on ``--heldout`` documents: the
demo's test split; a standard task has only a validation split, so its search and held-out
documents both come from it (disjoint).

Per run: the held-out score of the best found (a full-fidelity number: racing scores survivors
on every document), and the held-out score of the incumbent at every generation (not charged to
the budget), from which "forward passes to reach": the first cost at which a run's incumbent
scores at least the ``full`` run's final held-out best (same seed).  Printed as a table and
written to ``--json``.

    python benchmarks/bench_racing.py --budget 2048 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from blackbox.config import apply_overrides, validate
from blackbox.strategies import make_strategy
from blackbox.study.pipeline import prepare, racing_of, strategy_settings
from blackbox.study.runner import Budget, Runner
from blackbox.study.storage import open_study

# The logit-lens answer direction of each task (first tokens where the two answers differ).
ANSWERS: dict[str, list[str]] = {
    "rte": [" True", " False"],
    "boolq": [" yes", " no"],
}


def task_study(base: dict[str, Any], task: str) -> dict[str, Any]:
    """The demo's study with ``task``'s answer direction as its second steering vector and, off
    the demo's task, the task's own splits (``null``: train and test where it has them, else
    its validation split for both, held-out documents never searched)."""
    study = copy.deepcopy(base)
    if task in ANSWERS:
        vec = next(v for v in study["space"]["vectors"] if v["name"] == "answer_bias")
        vec["unembed"] = ANSWERS[task]
    if task != base["task"]["name"]:
        study["task"] |= {"search_split": None, "heldout_split": None}
    return study


def one_run(
    p: Any, seed: int, racing: bool, budget: float, setting: str = "true"
) -> dict[str, Any]:
    """One search at ``budget``; incumbents re-scored on held-out after the run."""
    cfg = p.config
    if racing:
        cfg = validate(apply_overrides(cfg.resolved(), [f"scoring.racing={setting}"]))
    strategy = make_strategy(
        cfg.strategy.name,
        p.space.box,
        seed=seed,
        population=cfg.strategy.population,
        **strategy_settings(cfg),
    )
    p.objective.reset_cache()
    study = open_study(optuna.storages.InMemoryStorage(), "bench", p.space.box, "fp")
    trace: list[tuple[float, Any]] = []  # (cost so far, incumbent) after every generation
    runner = Runner(
        p.space,
        p.objective,
        strategy,
        study,
        Budget(cost=budget),
        heldout_split=None,
        progress=False,
        baselines={},
        racing=racing_of(cfg),
    )
    runner.on_generation = lambda g: trace.append((g.cost, runner.incumbent))
    t0 = time.perf_counter()
    s = runner.run()
    seconds = time.perf_counter() - t0
    held: dict[int, float] = {}
    curve = []
    for cost, inc in trace:
        if inc is None:
            continue
        if id(inc) not in held:
            held[id(inc)] = float(p.problem.evaluate([inc.candidate], split="heldout").values[0])
        curve.append((cost, held[id(inc)]))
    return {
        "seed": seed,
        "racing": racing,
        "search_docs": int(p.objective.n_examples("search")),
        "evaluations": s.evaluations,
        "stopped": s.raced_stops,
        "cut": s.budget_cuts,
        "cost": s.search_cost,
        "search_best": s.best.value if s.best else float("nan"),
        "heldout_best": curve[-1][1] if curve else float("nan"),
        "curve": curve,
        "seconds": round(seconds, 1),
    }


# Settings a resumed bench must share with the runs it keeps.
SAME = ("budget", "search", "large", "heldout", "racing", "overrides")


def resumed_runs(path: Path, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs saved in ``path`` by a bench with the same settings (``[]``: no file)."""
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    was = saved["args"]
    differ = [f"{k}={was.get(k)!r}" for k in SAME if was.get(k) != args[k]]
    if differ:
        raise SystemExit(
            f"bench_racing: --resume: {path} was made with other settings "
            f"({', '.join(differ)}); "
            "use the same settings or another --json"
        )
    return list(saved["runs"])


def reach(curve: list[tuple[float, float]], target: float) -> float:
    """First cost at which the incumbent's held-out score is >= ``target`` (NaN: never)."""
    return next((c for c, h in curve if h >= target - 1e-12), float("nan"))


def _med_iqr(v: list[float], digits: int = 3) -> str:
    """``median (IQR)`` of the finite values (forward passes: ``digits=0``)."""
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)]
    if not a.size:
        return "-"
    q1, q3 = np.percentile(a, [25, 75])
    return f"{np.median(a):.{digits}f} ({q3 - q1:.{digits}f})"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, search documents, mode): medians (IQR) across seeds; "to reach" is
    against the full-scoring run of the same task and seed."""
    rows: list[dict[str, Any]] = []
    full = {(r["task"], r["seed"]): r for r in runs if not r["racing"]}
    for key in dict.fromkeys((r["task"], r["search_docs"], r["racing"]) for r in runs):
        group = [r for r in runs if (r["task"], r["search_docs"], r["racing"]) == key]
        to_reach = [
            reach(r["curve"], full[(r["task"], r["seed"])]["heldout_best"])
            if (r["task"], r["seed"]) in full
            else float("nan")
            for r in group
        ]
        rows.append(
            {
                "task": key[0],
                "search_docs": key[1],
                "mode": "racing" if key[2] else "full",
                "seeds": sorted(r["seed"] for r in group),
                "heldout_best": _med_iqr([r["heldout_best"] for r in group]),
                "search_best": _med_iqr([r["search_best"] for r in group]),
                "evaluations": float(np.median([r["evaluations"] for r in group])),
                "stopped": float(np.median([r["stopped"] for r in group])),
                # runs saved before budget cuts were counted apart have none
                "cut": float(np.median([r.get("cut", 0) for r in group])),
                "cost": float(np.median([r["cost"] for r in group])),
                "to_reach_full_final": _med_iqr(to_reach, digits=0),
                "reached": f"{sum(np.isfinite(to_reach))}/{len(group)}",
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a markdown table."""
    out = [
        "| task | search docs | mode | seeds | held-out best | search best | evaluations "
        "| stopped (cut) | forward passes spent "
        "| forward passes to reach full's final held-out (reached) |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['task']} | {r['search_docs']} | {r['mode']} | "
            f"{' '.join(map(str, r['seeds']))} | {r['heldout_best']} | {r['search_best']} "
            f"| {r['evaluations']:.0f} | {r['stopped']:.0f} ({r['cut']:.0f}) | {r['cost']:.0f} "
            f"| {r['to_reach_full_final']} ({r['reached']}) |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--tasks",
        nargs="+",
        default=["bb_rotten_tomatoes", "rte", "boolq"],
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=float, default=2048.0)
    ap.add_argument("--search", type=int, default=64)
    ap.add_argument("--large", type=int, default=256, help="racing with this many, first task")
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--json", default="runs/bench_racing.json")
    ap.add_argument(
        "--racing", default="true", help="scoring.racing value, e.g. '{schedule: [16, 32]}'"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --json (same settings) and run only the missing ones",
    )
    args = ap.parse_args()

    base = yaml.safe_load(open("studies/steer_rotten_tomatoes.yaml"))
    out = Path(args.json)  # rewritten after every run: an interrupted bench keeps its runs
    out.parent.mkdir(parents=True, exist_ok=True)
    loaded = None
    runs = resumed_runs(out, vars(args)) if args.resume else []
    done = {(r["task"], r.get("requested", r["search_docs"]), r["racing"], r["seed"]) for r in runs}
    for t, task in enumerate(args.tasks):
        sizes = [args.search] + ([args.large] if t == 0 and args.large else [])
        for size in sizes:
            over = [
                f"task.name={task}",
                f"task.search_size={size}",
                f"task.heldout_size={args.heldout}",
                *args.overrides,
            ]
            modes = [False, True] if size == args.search else [True]
            todo = [(m, s) for m in modes for s in args.seeds if (task, size, m, s) not in done]
            if not todo:
                continue
            cfg = validate(apply_overrides(task_study(base, task), over))
            p = prepare(cfg, progress=False, loaded=loaded)
            loaded = p.loaded
            for racing, seed in todo:
                r = one_run(p, seed, racing, args.budget, args.racing)
                r["task"], r["requested"] = task, size
                runs.append(r)
                print(
                    f"{task} docs={size} racing={racing} seed={seed}: held-out "
                    f"{r['heldout_best']:.3f}, search {r['search_best']:.3f}, "
                    f"{r['evaluations']} evals ({r['stopped']} stopped, {r['cut']} cut), "
                    f"cost {r['cost']:.0f}, {r['seconds']} s",
                    flush=True,
                )
                out.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    rows = summarise(runs)
    print()
    print(
        f"budget {args.budget:g} forward passes per run, seeds "
        f"{sorted({r['seed'] for r in runs})} (runs per row: 'reached' below), PSO x 8, held-out "
        f"{args.heldout} documents, racing {args.racing}, overrides {args.overrides}; "
        "median (IQR) across seeds"
    )
    print("\n".join(table(rows)))
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "runs": runs}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
