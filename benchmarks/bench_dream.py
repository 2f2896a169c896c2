"""Dreaming random residual directions: EPO vs GA + random mutation vs random search.

For each of ``--directions`` random unit directions at a middle layer of the embedded model, the
objective is the z-score (Fluent Dreaming eq. 5) of the last position's cosine alignment,
calibrated on ``--calibration`` random prompts of the same length and context.  Each method gets
the same forward-pass-equivalent budget (evaluations + 3 per gradient prompt); the table shows
the best z each reached.

    python benchmarks/bench_dream.py --directions 5 --budget 600
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from blackbox.evals.activation import ResidualDirectionObjective
from blackbox.models import load_model
from blackbox.search_spaces.tokens import TokenSpace
from blackbox.strategies.epo import EPO
from blackbox.strategies.genetic import TokenGA


def run_strategy(strategy, space, obj, budget: float) -> tuple[float, float]:
    """Best value and spent budget of an ask/tell loop stopped at ``budget``."""
    if getattr(strategy, "uses_gradients", False) or hasattr(strategy, "bind"):
        strategy.bind(space, obj)
    spent = 0.0
    while spent < budget:
        x = strategy.ask()
        ev = obj.evaluate(space.decode(x))
        strategy.tell(x, ev.values, extra=ev.extra)
        spent += ev.cost + strategy.pop_extra_cost()
    return strategy.best_value, spent


def run_random(space, obj, budget: float, seed: int, batch: int = 32) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    best, spent = -np.inf, 0.0
    while spent < budget:
        ev = obj.evaluate(space.sample(batch, rng))
        best = max(best, float(np.nanmax(ev.values)) if np.isfinite(ev.values).any() else best)
        spent += ev.cost
    return best, spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--directions", type=int, default=5)
    ap.add_argument("--budget", type=float, default=600.0)
    ap.add_argument("--n-tokens", type=int, default=8)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, nargs="*", help="run only these direction indices")
    args = ap.parse_args()
    lm = load_model()
    n_layers = lm.model.config.num_hidden_layers
    layer = n_layers // 2 if args.layer is None else args.layer
    space = TokenSpace(lm.tokenizer, n_tokens=args.n_tokens, prefix="<|im_start|>user\n")
    gen = torch.Generator().manual_seed(args.seed)
    dirs = torch.randn(args.directions, lm.model.config.hidden_size, generator=gen)
    # one calibration pass shared by every direction: residuals of random prompts
    rng = np.random.default_rng(args.seed + 1000)
    rand = space.ids_of(space.box.sample(args.calibration, rng))
    probe = ResidualDirectionObjective(lm.model, layer, dirs[0], context=space.context)
    with torch.no_grad():
        h = torch.cat(
            [
                probe.residual(probe.forward(torch.as_tensor(rand[i : i + 32]), hidden=True))
                for i in range(0, len(rand), 32)
            ]
        )  # (R, d)
    print(
        f"layer {layer}/{n_layers}, {args.n_tokens} tokens, budget {args.budget:g} fwd-eq, "
        f"{args.calibration} calibration prompts"
    )
    table = {"EPO": [], "GA+random": [], "random": []}
    for k, d in enumerate(dirs):
        if args.only and k not in args.only:
            continue
        obj = ResidualDirectionObjective(
            lm.model, layer, d, context=space.context, standardise=True
        )
        v = obj.direction
        obj.set_calibration((h @ v / h.norm(dim=-1)).numpy())
        t0 = time.perf_counter()
        epo = EPO(
            space.box,
            seed=args.seed + k,
            population=4,
            children=8,
            topk=64,
            lambda_min=0.01,
            lambda_max=1.0,
            lambda_restart=(0.05, 0.5),
            restart_every=10,
        )
        z_epo, s1 = run_strategy(epo, space, obj, args.budget)
        ga = TokenGA(space.box, seed=args.seed + k, population=16, mutation="random_replace")
        z_ga, s2 = run_strategy(ga, space, obj, args.budget)
        z_rs, s3 = run_random(space, obj, args.budget, seed=args.seed + k)
        for name, z in zip(table, (z_epo, z_ga, z_rs)):
            table[name].append(z)
        best = space.decode(epo.best_x[None])[0].text
        print(
            f"direction {k}: z EPO {z_epo:6.2f} ({s1:.0f})  GA+random {z_ga:6.2f} ({s2:.0f})  "
            f"random {z_rs:6.2f} ({s3:.0f})  [{time.perf_counter() - t0:.0f} s]  EPO best {best!r}",
            flush=True,
        )
    print("\nmethod       mean best z   per direction")
    for name, zs in table.items():
        print(f"{name:12s} {np.mean(zs):10.2f}   " + " ".join(f"{z:6.2f}" for z in zs))


if __name__ == "__main__":
    main()
