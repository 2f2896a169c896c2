"""Dreaming over drawn targets: EPO vs GCG vs the token GA vs random search at one budget.

Targets are drawn by ``--target-seed`` (the same seed, the same targets; tuning and validation
use two seeds): ``--neurons`` MLP neurons and ``--directions`` random residual directions, the
``i``-th of each kind in the early, middle and late third of the layers in turn (``i % 3``), its
layer uniform within that third.  A direction is ``torch.randn(hidden, generator=seed d)`` with
its own drawn seed ``d`` (the ``direction_seed`` of a ``direction`` objective), so any target can
be rebuilt in a study.  Target ``i`` of a kind does not depend on how many are drawn.

Every objective is a z-score (Fluent Dreaming eq. 5), calibrated once per target on
``--calibration`` random prompts; fluency is the prompt's self cross-entropy (nats, the
objective's ``xentropy`` column, computed for every evaluated prompt of every method).  Each
method gets ``--budget`` forward-pass equivalents (an evaluation is one; a gradient prompt three,
as ``pop_extra_cost`` reports; random search samples in batches), and its objective's cache is
cleared first, so no method is served another's evaluations.  Per run, over every prompt it
evaluated:

- best z;
- z at fluency: the best z among prompts with cross-entropy <= ``--ce-threshold`` nats;
- hypervolume of the (z up, cross-entropy down) front against the reference ``--hv-ref``
  (z, cross-entropy): the area that the front dominates inside it.

The (z, cross-entropy) front of each run (with the prompts' text) is saved, so the threshold
and the reference can change without rerunning.  Results go to ``--json``, rewritten atomically
after each run and keyed by (kind, layer, neuron index or direction seed, method, seed); a rerun
with the same settings skips finished runs (``--no-resume`` starts afresh).  The table gives,
per method, the median (IQR) over targets x seeds; the paired comparisons the first method
(EPO) minus each other, per target averaged over seeds, with a 95% bootstrap interval
(:func:`blackbox.stats.paired`) and the number of targets where the first method is ahead.

    python benchmarks/bench_dream_targets.py --neurons 10 --directions 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blackbox.api import Problem
from blackbox.evals.activation import NeuronObjective, ResidualDirectionObjective
from blackbox.evals.documents import layout
from blackbox.models.layers import hidden_size, mlp_width, num_layers
from blackbox.multiobjective import pareto_mask
from blackbox.pareto import FLUENCY
from blackbox.search_spaces.tokens.space import TokenSpace
from blackbox.staging import atomic_write
from blackbox.stats import paired
from blackbox.strategies.epo import EPO, GCG
from blackbox.strategies.genetic import TokenGA

BANDS = ("early", "middle", "late")
KINDS = ("neuron", "direction")

# Each method's settings: the strategies' shipped defaults (GA: bench_dream's), recorded in
# the JSON; random search samples ``batch`` prompts at a time.
METHODS: dict[str, dict[str, Any]] = {
    "epo": {"population": 4, "children": 8, "topk": 64},
    "gcg": {"search_width": 64, "topk": 64},
    "ga": {"population": 16, "mutation": "random_replace"},
    "random": {"batch": 32},
}

# Settings a resumed bench must share with the runs it keeps (the counts, seeds, methods,
# threshold and reference may change: runs are keyed, figures are recomputed from the fronts).
SAME = ("model", "budget", "target_seed", "n_tokens", "calibration", "method_settings")


# -- targets --------------------------------------------------------------------------------------
def band_layers(n_layers: int) -> list[range]:
    """The early, middle and late thirds of ``n_layers`` layers (each at least one layer)."""
    cuts = [round(k * n_layers / 3) for k in range(4)]
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        lo = min(lo, n_layers - 1)
        out.append(range(lo, max(hi, lo + 1)))
    return out


def draw_targets(model: torch.nn.Module, neurons: int, directions: int, seed: int) -> list[dict]:
    """The bench's targets, a function of ``seed`` alone: ``neurons`` MLP neurons then
    ``directions`` residual directions; the ``i``-th of a kind lies in band ``i % 3`` (early,
    middle, late) at a layer drawn within it, and does not depend on the counts."""
    bands = band_layers(num_layers(model))
    out = []
    for kind, count in zip(KINDS, (neurons, directions)):
        for i in range(count):
            rng = np.random.default_rng([seed, KINDS.index(kind), i])
            band = i % 3
            layer = int(rng.choice(bands[band]))
            t: dict[str, Any] = {"kind": kind, "layer": layer, "band": BANDS[band]}
            if kind == "neuron":
                t["index"] = int(rng.integers(mlp_width(model, layer)))
            else:
                t["index"] = int(rng.integers(2**31 - 1))  # the direction's seed
            out.append(t)
    return out


def target_name(t: dict[str, Any]) -> str:
    what = f"#{t['index']}" if t["kind"] == "neuron" else f"seed {t['index']}"
    return f"{t['kind']} L{t['layer']} {what} ({t['band']})"


def direction_of(model: torch.nn.Module, seed: int) -> torch.Tensor:
    """``(d,)`` the direction of seed ``seed`` (as a ``direction`` objective's
    ``direction_seed``)."""
    return torch.randn(hidden_size(model), generator=torch.Generator().manual_seed(int(seed)))


def make_objective(model: torch.nn.Module, items: Any, t: dict[str, Any]) -> Any:
    """The target's standardised objective (calibrate it before use), fluency on."""
    if t["kind"] == "neuron":
        obj: Any = NeuronObjective(
            model, {"search": items}, t["layer"], t["index"], standardise=True
        )
    else:
        d = direction_of(model, t["index"])
        obj = ResidualDirectionObjective(model, {"search": items}, t["layer"], d, standardise=True)
    obj.enable_fluency()
    return obj


# -- figures of one run ---------------------------------------------------------------------------
def front_of(z: np.ndarray, ce: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the (z up, cross-entropy down) non-dominated points
    (:func:`blackbox.multiobjective.pareto_mask`; non-finite points never are)."""
    pts = np.column_stack([np.asarray(z, float), np.asarray(ce, float)]).reshape(-1, 2)
    return pareto_mask(pts, FLUENCY)


def z_at_fluency(z: np.ndarray, ce: np.ndarray, threshold: float) -> float:
    """Best z among points with cross-entropy <= ``threshold`` (NaN: none)."""
    z, ce = np.asarray(z, float), np.asarray(ce, float)
    ok = np.isfinite(z) & np.isfinite(ce) & (ce <= threshold)
    return float(z[ok].max()) if ok.any() else float("nan")


def hypervolume(z: np.ndarray, ce: np.ndarray, ref_z: float, ref_ce: float) -> float:
    """Area that the points dominate (z up, cross-entropy down) inside the reference
    ``(ref_z, ref_ce)``: sort the front by cross-entropy and sum the steps."""
    z, ce = np.asarray(z, float), np.asarray(ce, float)
    on = front_of(z, ce) & (z > ref_z) & (ce < ref_ce)
    if not on.any():
        return 0.0
    order = np.argsort(ce[on], kind="stable")
    fz, fc = z[on][order], ce[on][order]  # on a front z rises with cross-entropy
    widths = np.diff(np.append(fc, ref_ce))
    return float(np.sum((fz - ref_z) * widths))


def run_figures(run: dict[str, Any], threshold: float, ref: tuple[float, float]) -> dict:
    """Best z, z at fluency and hypervolume of a saved run (from its front)."""
    f = np.array([[p[0], p[1]] for p in run["front"]], dtype=float).reshape(-1, 2)
    z, ce = f[:, 0], f[:, 1]
    return {
        "best_z": float(z.max()) if z.size else float("nan"),
        "z_at_ce": z_at_fluency(z, ce, threshold),
        "hypervolume": hypervolume(z, ce, *ref),
    }


# -- one run ----------------------------------------------------------------------------------------
def make_strategy(method: str, space: TokenSpace, seed: int) -> Any:
    kw = METHODS[method]
    if method == "epo":
        return EPO(space.box, seed=seed, **kw)
    if method == "gcg":
        return GCG(space.box, seed=seed, **kw)
    if method == "ga":
        return TokenGA(space.box, seed=seed, **kw)
    return None


def run_method(method: str, problem: Problem, budget: float, seed: int) -> dict[str, Any]:
    """One ask/tell loop (or random search) until ``budget`` forward-pass equivalents are spent;
    every evaluated prompt's (z, cross-entropy) goes into the run's front."""
    space = problem.space
    problem.objective.reset_cache()  # this run pays for its own evaluations
    strategy = make_strategy(method, space, seed)
    if strategy is not None and hasattr(strategy, "bind"):
        strategy.bind(problem)
    rng = np.random.default_rng(seed)
    batch = int(METHODS["random"]["batch"])
    front_z, front_ce, front_text = np.zeros(0), np.zeros(0), []
    spent, max_step, evaluated, steps = 0.0, 0.0, 0, 0
    while spent < budget:
        x = strategy.ask() if strategy is not None else space.box.sample(batch, rng)
        cands = space.decode(x)
        ev = problem.evaluate(cands)
        step = float(ev.cost)
        if strategy is not None:
            strategy.tell(x, ev.values, extra=ev.extra)
            step += strategy.pop_extra_cost()
        spent += step
        max_step, steps = max(max_step, step), steps + 1
        z = np.asarray(ev.values, float)
        ce = np.asarray(ev.extra, float)[:, 0]
        hits = np.array([bool(m.get("cache_hit")) for m in ev.metrics], dtype=bool)
        evaluated += int((np.isfinite(z) & ~hits).sum())  # new prompts (repeats are free)
        z_all = np.concatenate([front_z, z])
        ce_all = np.concatenate([front_ce, ce])
        text_all = front_text + [c.text for c in cands]
        keep = front_of(z_all, ce_all)
        front_z, front_ce = z_all[keep], ce_all[keep]
        front_text = [s for s, k in zip(text_all, keep) if k]
    order = np.argsort(front_ce, kind="stable")
    front, seen = [], set()
    for i in order:  # one point per prompt (a repeat is served from the cache: same figures)
        if front_text[i] not in seen:
            seen.add(front_text[i])
            front.append([float(front_z[i]), float(front_ce[i]), front_text[i]])
    return {
        "spent": spent,
        "max_step": max_step,
        "steps": steps,
        "evaluated": evaluated,
        "front": front,
    }


# -- resume -----------------------------------------------------------------------------------------
def run_key(t: dict[str, Any], method: str, seed: int) -> tuple:
    return (t["kind"], int(t["layer"]), int(t["index"]), method, int(seed))


def resumed_runs(path: Path, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs saved in ``path`` by a bench with the same settings (``[]``: no file)."""
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    was = saved["args"]
    differ = [f"{k}={was.get(k)!r}" for k in SAME if was.get(k) != args[k]]
    if differ:
        raise SystemExit(
            f"bench_dream_targets: --resume: {path} was made with other settings "
            f"({', '.join(differ)}); use the same settings, another --json or --no-resume"
        )
    return list(saved["runs"])


# -- summary ----------------------------------------------------------------------------------------
FIGURES = ("best_z", "z_at_ce", "hypervolume")


def _med_iqr(v: list[float], digits: int = 2) -> str:
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)]
    if not a.size:
        return "-"
    q1, q3 = np.percentile(a, [25, 75])
    return f"{np.median(a):.{digits}f} ({q3 - q1:.{digits}f})"


def summarise(
    runs: list[dict[str, Any]], methods: list[str], threshold: float, ref: tuple[float, float]
) -> dict[str, Any]:
    """Per method: median (IQR) of each figure over targets x seeds; the first method minus
    each other: per target (mean over seeds), the mean difference with its 95% interval."""
    for r in runs:
        r.update(run_figures(r, threshold, ref))
    rows = []
    for m in methods:
        group = [r for r in runs if r["method"] == m]
        if not group:
            continue
        at = [r["z_at_ce"] for r in group]
        rows.append(
            {
                "method": m,
                "runs": len(group),
                **{f: _med_iqr([r[f] for r in group]) for f in FIGURES},
                "reached": f"{int(np.isfinite(at).sum())}/{len(group)}",
                "spent": float(np.median([r["spent"] for r in group])),
            }
        )
    comparisons = []
    first = methods[0]
    targets = list(dict.fromkeys(r["target"] for r in runs))

    def per_target(method: str, figure: str) -> np.ndarray:
        out = []
        for t in targets:
            v = [r[figure] for r in runs if r["target"] == t and r["method"] == method]
            v = [x for x in v if np.isfinite(x)]
            out.append(np.mean(v) if v else np.nan)
        return np.array(out)

    for m in methods[1:]:
        for f in FIGURES:
            a, b = per_target(first, f), per_target(m, f)
            ok = np.isfinite(a) & np.isfinite(b)
            if not ok.any():
                continue
            p = paired(b[ok], a[ok])
            comparisons.append(
                {
                    "a": first,
                    "b": m,
                    "figure": f,
                    "targets": int(ok.sum()),
                    "mean": p["mean"],
                    "ci95": p["ci95"],
                    "p": p["p"],
                    "ahead": int(np.sum(a[ok] > b[ok])),
                }
            )
    return {"threshold": threshold, "hv_ref": list(ref), "rows": rows, "paired": comparisons}


def table(summary: dict[str, Any]) -> list[str]:
    thr = summary["threshold"]
    out = [
        f"| method | runs | best z | z at CE <= {thr:g} (reached) | hypervolume "
        f"(ref z {summary['hv_ref'][0]:g}, CE {summary['hv_ref'][1]:g}) | spent |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["rows"]:
        out.append(
            f"| {r['method']} | {r['runs']} | {r['best_z']} | {r['z_at_ce']} ({r['reached']}) "
            f"| {r['hypervolume']} | {r['spent']:.0f} |"
        )
    if summary["paired"]:
        out += [
            "",
            "| comparison | figure | targets | mean difference [95% interval] | p | ahead |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for c in summary["paired"]:
            lo, hi = c["ci95"]
            out.append(
                f"| {c['a']} - {c['b']} | {c['figure']} | {c['targets']} | "
                f"{c['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {c['p']:.3f} "
                f"| {c['ahead']}/{c['targets']} |"
            )
    return out


# -- the bench --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from blackbox.models import DEFAULT_MODEL

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--neurons", type=int, default=10)
    ap.add_argument("--directions", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=600.0, help="forward-pass equivalents")
    ap.add_argument("--target-seed", type=int, default=0, help="draws the targets")
    ap.add_argument("--n-tokens", type=int, default=8)
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--ce-threshold", type=float, default=7.0, help="nats, for z at fluency")
    ap.add_argument(
        "--hv-ref", type=float, nargs=2, default=[0.0, 12.0], metavar=("Z", "CE"), help="nats"
    )
    ap.add_argument("--calibration", type=int, default=256, help="random prompts per target")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--json", default="runs/bench_dream_targets.json")
    ap.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the runs already in --json (same settings); run only the missing ones",
    )
    args = ap.parse_args(argv)
    args.method_settings = METHODS
    return args


def run_bench(lm: Any, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Run every missing (target, method, seed); returns the saved document and how many runs
    this call made."""
    settings = vars(args)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = resumed_runs(out, settings) if args.resume else []
    done = {run_key(r, r["method"], r["seed"]) for r in runs}
    targets = draw_targets(lm.model, args.neurons, args.directions, args.target_seed)
    space = TokenSpace(lm.tokenizer, n_tokens=args.n_tokens)
    items = layout(lm.tokenizer, [""], chat=True)[0]  # the prompt alone in a user turn
    n_layers = num_layers(lm.model)
    print(
        f"{len(targets)} targets (target seed {args.target_seed}, {n_layers} layers, thirds "
        f"{[f'{b.start}-{b.stop - 1}' for b in band_layers(n_layers)]}), methods {args.methods}, "
        f"seeds {args.seeds}, budget {args.budget:g} fwd-eq, {args.n_tokens} tokens, "
        f"{args.calibration} calibration prompts",
        flush=True,
    )
    todo_total = sum(
        run_key(t, m, s) not in done for t in targets for m in args.methods for s in args.seeds
    )
    made = 0

    def document(final: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {"args": settings, "targets": targets, "runs": runs}
        if final:
            keys = {run_key(t, m, s) for t in targets for m in args.methods for s in args.seeds}
            mine = [r for r in runs if run_key(r, r["method"], r["seed"]) in keys]
            doc["summary"] = summarise(mine, args.methods, args.ce_threshold, tuple(args.hv_ref))
        return doc

    for t in targets:
        todo = [(m, s) for m in args.methods for s in args.seeds if run_key(t, m, s) not in done]
        if not todo:
            continue
        obj = make_objective(lm.model, items, t)
        problem = Problem(space, obj)
        cal = obj.calibrate(problem, args.calibration, args.target_seed + 1000)
        for method, seed in todo:
            t0 = time.perf_counter()
            r = run_method(method, problem, args.budget, seed)
            r = {
                **t,
                "target": target_name(t),
                "method": method,
                "seed": seed,
                "budget": args.budget,
                "mu": cal["mu"],
                "sigma": cal["sigma"],
                **r,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            runs.append(r)
            made += 1
            atomic_write(out, json.dumps(document(), indent=1))
            fig = run_figures(r, args.ce_threshold, tuple(args.hv_ref))
            ce = [p[1] for p in r["front"]]
            ce_range = f"{min(ce):.1f} to {max(ce):.1f}" if ce else "-"
            print(
                f"[{made}/{todo_total}] {r['target']} {method} seed {seed}: best z "
                f"{fig['best_z']:.2f}, z at CE<={args.ce_threshold:g} {fig['z_at_ce']:.2f}, "
                f"HV {fig['hypervolume']:.1f}, front {len(r['front'])} (CE {ce_range}), "
                f"spent {r['spent']:.0f} "
                f"(max step {r['max_step']:.0f}), {r['evaluated']} prompts, {r['seconds']} s",
                flush=True,
            )
        del obj, problem
    doc = document(final=True)
    atomic_write(out, json.dumps(doc, indent=1))
    return doc, made


def main(argv: list[str] | None = None) -> None:
    from blackbox.models import load_model

    args = parse_args(argv)
    t0 = time.perf_counter()
    lm = load_model(args.model)
    doc, made = run_bench(lm, args)
    s = doc["summary"]
    print(
        f"\n{made} runs made, {len(doc['runs'])} in {args.json}; median (IQR) over targets x "
        f"seeds; paired: {args.methods[0]} minus each, per target (mean over seeds)"
    )
    print("\n".join(table(s)))
    print(f"wrote {args.json} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
