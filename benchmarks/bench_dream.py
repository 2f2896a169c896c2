"""Dreaming on the embedded model: EPO vs the token GA vs random search at one budget.

Two targets (``--target``):

- ``directions``: random residual directions at a middle layer; the objective is the z-score
  (Fluent Dreaming eq. 5) of the last position's cosine alignment, calibrated on random prompts.
- ``neurons``: MLP neurons (random indices, seeded).  Raw activations are a few hundredths, so
  EPO's fluency weights (lambda x cross-entropy of a few nats) swamp them unless the objective
  is standardised against random prompts, which is now the default of every internal objective.
  Rows: EPO on the standardised neuron (the default), EPO on the raw neuron (the old default),
  the token GA and random search; every figure is the *raw* activation of the best prompt
  (EPO: over every prompt it evaluated, which its most objective-weighted member follows),
  plus the cross-entropy of EPO's most fluent front member.

Each method gets the same forward-pass-equivalent budget (evaluations + 3 per gradient prompt).

    python benchmarks/bench_dream.py --target directions --count 5 --budget 600
    python benchmarks/bench_dream.py --target neurons --count 5 --budget 600
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from blackbox.api import Problem
from blackbox.evals.activation import NeuronObjective, ResidualDirectionObjective
from blackbox.evals.documents import layout
from blackbox.models import load_model
from blackbox.models.layers import mlp_width
from blackbox.search_spaces.tokens.space import TokenSpace
from blackbox.strategies.epo import EPO
from blackbox.strategies.genetic import TokenGA


def run_strategy(strategy, problem: Problem, budget: float) -> tuple[float, float]:
    """Best value and spent budget of an ask/tell loop stopped at ``budget``."""
    if hasattr(strategy, "bind"):
        strategy.bind(problem)
    spent = 0.0
    while spent < budget:
        x = strategy.ask()
        ev = problem.evaluate(problem.space.decode(x))
        strategy.tell(x, ev.values, extra=ev.extra)
        spent += ev.cost + strategy.pop_extra_cost()
    return strategy.best_value, spent


def run_random(problem: Problem, budget: float, seed: int, batch: int = 32) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    best, spent = -np.inf, 0.0
    while spent < budget:
        ev = problem.evaluate(problem.space.sample(batch, rng))
        if np.isfinite(ev.values).any():
            best = max(best, float(np.nanmax(ev.values)))
        spent += ev.cost
    return best, spent


def epo(seed: int, space: TokenSpace, **kw) -> EPO:
    return EPO(space.box, seed=seed, population=4, children=8, topk=64, restart_every=10, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["directions", "neurons"], default="directions")
    ap.add_argument("--count", type=int, default=5, help="directions or neurons")
    ap.add_argument("--budget", type=float, default=600.0)
    ap.add_argument("--n-tokens", type=int, default=8)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lm = load_model()
    n_layers = lm.model.config.num_hidden_layers
    layer = n_layers // 2 if args.layer is None else args.layer
    space = TokenSpace(lm.tokenizer, n_tokens=args.n_tokens)
    items = layout(lm.tokenizer, [""], chat=True)[0]  # the prompt alone in a user turn
    gen = torch.Generator().manual_seed(args.seed)
    print(
        f"{args.target}: layer {layer}/{n_layers}, {args.n_tokens} tokens, budget "
        f"{args.budget:g} fwd-eq, {args.calibration} calibration prompts, seed {args.seed}"
    )
    if args.target == "directions":
        table: dict[str, list[float]] = {"EPO": [], "GA+random": [], "random": []}
        dirs = torch.randn(args.count, lm.model.config.hidden_size, generator=gen)
        for k, d in enumerate(dirs):
            obj = ResidualDirectionObjective(
                lm.model, {"search": items}, layer, d, standardise=True
            )
            obj.enable_fluency()
            problem = Problem(space, obj)
            obj.calibrate(problem, args.calibration, args.seed + 1000)
            t0 = time.perf_counter()
            e = epo(
                args.seed + k, space, lambda_min=0.01, lambda_max=1.0, lambda_restart=(0.05, 0.5)
            )
            z_epo, s1 = run_strategy(e, problem, args.budget)
            ga = TokenGA(space.box, seed=args.seed + k, population=16, mutation="random_replace")
            z_ga, s2 = run_strategy(ga, problem, args.budget)
            z_rs, s3 = run_random(problem, args.budget, seed=args.seed + k)
            for name, z in zip(table, (z_epo, z_ga, z_rs)):
                table[name].append(z)
            print(
                f"direction {k}: z EPO {z_epo:6.2f} ({s1:.0f})  GA+random {z_ga:6.2f} ({s2:.0f})"
                f"  random {z_rs:6.2f} ({s3:.0f})  [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
        print("\nmethod       mean best z   per direction")
    else:
        table = {"EPO (standardised)": [], "EPO (raw)": [], "GA+random": [], "random": []}
        fluent: list[float] = []
        width = mlp_width(lm.model, layer)
        neurons = torch.randperm(width, generator=gen)[: args.count].tolist()
        for k, index in enumerate(neurons):
            t0 = time.perf_counter()
            std = NeuronObjective(lm.model, {"search": items}, layer, index, standardise=True)
            std.enable_fluency()
            p_std = Problem(space, std)
            cal = std.calibrate(p_std, args.calibration, args.seed + 1000)
            raw_obj = NeuronObjective(lm.model, {"search": items}, layer, index)
            raw_obj.enable_fluency()
            p_raw = Problem(space, raw_obj)

            def raw(z: float, cal=cal) -> float:
                return z * cal["sigma"] + cal["mu"]

            e_std = epo(args.seed + k, space)  # the shipped lambda grid, 0.1 .. 10
            z_epo, _ = run_strategy(e_std, p_std, args.budget)
            e_raw = epo(args.seed + k, space)
            a_raw, _ = run_strategy(e_raw, p_raw, args.budget)
            ga = TokenGA(space.box, seed=args.seed + k, population=16, mutation="random_replace")
            z_ga, _ = run_strategy(ga, p_std, args.budget)
            z_rs, _ = run_random(p_std, args.budget, seed=args.seed + k)
            row = (raw(z_epo), a_raw, raw(z_ga), raw(z_rs))
            for name, v in zip(table, row):
                table[name].append(v)
            most_fluent = min(p.xentropy for p in e_std.front)
            fluent.append(most_fluent)
            print(
                f"neuron {layer}.{index}: EPO std {row[0]:.4f}  EPO raw {row[1]:.4f}  "
                f"GA {row[2]:.4f}  random {row[3]:.4f}  (front: {len(e_std.front)} prompts, "
                f"most fluent xent {most_fluent:.2f})  [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
        print(f"\nEPO (standardised) front, most fluent member's xent: mean {np.mean(fluent):.2f}")
        print("\nmethod               mean best raw activation   per neuron")
    for name, zs in table.items():
        print(f"{name:20s} {np.mean(zs):10.4f}   " + " ".join(f"{z:8.4f}" for z in zs))


if __name__ == "__main__":
    main()
