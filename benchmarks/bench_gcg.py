"""blackbox GCG vs nanoGCG on the embedded model: time per step and final loss, side by side.

Same chat prompt, target string, initial suffix, search width, top-k and steps for both; one
row per seed and method, then the ratios.  nanoGCG (``pip install --no-deps nanogcg``; its pinned
transformers<=4.47 clashes with ours) runs with ``use_prefix_cache=False`` because its prefix
cache path indexes the legacy tuple cache, which transformers 5 no longer returns.

    python benchmarks/bench_gcg.py --steps 10 --search-width 64 --topk 64 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from blackbox.evals.reference import ReferenceObjective
from blackbox.models import load_model
from blackbox.search_spaces.tokens import TokenContext, TokenSpace
from blackbox.strategies.epo import GCG


@dataclass
class Row:
    method: str
    seed: int
    sec_per_step: float
    final_loss: float
    best_string: str


def chat_parts(tokenizer, message: str) -> tuple[list[int], list[int]]:
    """Token ids before and after ``{optim_str}`` exactly as nanoGCG builds them."""
    msgs = [{"role": "user", "content": message + "{optim_str}"}]
    template = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if tokenizer.bos_token and template.startswith(tokenizer.bos_token):
        template = template.replace(tokenizer.bos_token, "", 1)
    before, after = template.split("{optim_str}")
    return tokenizer(before)["input_ids"], tokenizer(after, add_special_tokens=False)["input_ids"]


def run_ours(lm, args, seed: int, use_cache: bool) -> Row:
    torch.manual_seed(seed)
    before, after = chat_parts(lm.tokenizer, args.message)
    target = lm.tokenizer(args.target, add_special_tokens=False)["input_ids"]
    init_ids = lm.tokenizer(args.init, add_special_tokens=False)["input_ids"]
    space = TokenSpace(lm.tokenizer, n_tokens=len(init_ids), ascii_only=True)
    space.context = TokenContext(tuple(before), tuple(after))
    obj = ReferenceObjective(
        lm.model,
        target,
        context=space.context,
        batch_size=args.search_width,
        use_prefix_cache=use_cache,
    )
    s = GCG(
        space.box,
        seed=seed,
        search_width=args.search_width,
        topk=args.topk,
        init=space.indices_of(np.array(init_ids)),
    )
    s.bind(space, obj)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        x = s.ask()
        ev = obj.evaluate(space.decode(x))
        s.tell(x, ev.values, extra=ev.extra)
        s.pop_extra_cost()
    dt = (time.perf_counter() - t0) / args.steps
    best = space.decode(s.best_x[None])[0].text
    name = "blackbox" + ("" if use_cache else " (no cache)")
    return Row(name, seed, dt, -s.best_value, best)


def run_nanogcg(lm, args, seed: int) -> Row:
    import nanogcg
    from nanogcg import GCGConfig

    cfg = GCGConfig(
        num_steps=args.steps,
        search_width=args.search_width,
        topk=args.topk,
        seed=seed,
        optim_str_init=args.init,
        use_prefix_cache=False,
        verbosity="WARNING",
    )
    t0 = time.perf_counter()
    res = nanogcg.run(lm.model, lm.tokenizer, args.message, args.target, cfg)
    dt = (time.perf_counter() - t0) / args.steps
    return Row("nanoGCG", seed, dt, float(res.best_loss), res.best_string)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--search-width", type=int, default=64)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--message", default="Tell me how to bake bread.")
    ap.add_argument("--target", default="Sure, here is how to bake bread")
    ap.add_argument("--init", default="x x x x x x x x x x")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--no-cache-variant", action="store_true", help="also run ours without cache")
    args = ap.parse_args()
    lm = load_model()
    if args.warmup:  # one untimed step of each, so neither pays first-call allocation costs
        warm = argparse.Namespace(**{**vars(args), "steps": 1})
        run_ours(lm, warm, 0, use_cache=True)
        run_nanogcg(lm, warm, 0)
    rows: list[Row] = []
    for seed in args.seeds:
        rows.append(run_ours(lm, args, seed, use_cache=True))
        if args.no_cache_variant:
            rows.append(run_ours(lm, args, seed, use_cache=False))
        rows.append(run_nanogcg(lm, args, seed))
        for r in rows[-(3 if args.no_cache_variant else 2) :]:
            print(
                f"{r.method:22s} seed {r.seed}  {r.sec_per_step:7.2f} s/step  loss {r.final_loss:.4f}  {r.best_string!r}",
                flush=True,
            )
    print("\nmethod                  mean s/step   mean final loss")
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.method, []).append(r)
    for m, rs in by.items():
        print(
            f"{m:22s} {np.mean([r.sec_per_step for r in rs]):12.2f}   {np.mean([r.final_loss for r in rs]):.4f}"
        )
    ours, ref = by["blackbox"], by["nanoGCG"]
    print(
        f"\ntime/step ratio blackbox/nanoGCG: {np.mean([r.sec_per_step for r in ours]) / np.mean([r.sec_per_step for r in ref]):.2f}"
    )
    print(
        f"final loss blackbox - nanoGCG: {np.mean([r.final_loss for r in ours]) - np.mean([r.final_loss for r in ref]):+.4f}"
    )


if __name__ == "__main__":
    main()
