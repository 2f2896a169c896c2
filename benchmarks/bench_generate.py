"""Generative fitness throughput: lm-eval's simple_evaluate per candidate vs batched decoding.

Run on demand (``make bench`` or ``python benchmarks/bench_generate.py``).  In one process, on
the embedded model, lm-eval's own ``triviaqa`` (offline), ``--docs`` seeded validation
questions and ``--candidates`` random steering candidates of ``studies/steer_triviaqa.yaml``
(the first is the unsteered model):

  (a) the seed loop: steering hooks + ``lm_eval.simple_evaluate`` (lm-eval's HF model, greedy
      ``generate`` with its stop-sequence criteria) once per candidate, at batch 1 (lm-eval's
      default) and batch 16, on every candidate (``--loop-candidates`` scores only the first
      few, a quicker but biased sample: candidates differ several-fold in what they generate);
  (b) the fast path: every candidate x question row in one batched decoding loop with a
      key/value cache, rows leaving the batch at their stop.

Prints candidate-evaluations per second and the ratios, whether every generated string and
exact match agrees with simple_evaluate, where the fast path's time goes (prefill vs decoding)
and how far decoding is from this machine's memory-bandwidth and matmul limits; writes the
figures to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from blackbox.config import apply_overrides, validate


def copy_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Best-of-``repeats`` read+write bandwidth of a large tensor copy, GB/s."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` fp32 matmul rate, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def seed_loop(p, cands, spec, batch: int) -> tuple[float, list[float], list[list[str]]]:
    """Seconds, exact match and strings of ``simple_evaluate`` per candidate (hooks on)."""
    from lm_eval.models.huggingface import HFLM

    from blackbox.evals.lm_eval_tasks import quiet_lm_eval
    from blackbox.evals.parity import evaluate_samples

    with quiet_lm_eval():
        lm = HFLM(
            pretrained=p.loaded.model,
            tokenizer=p.loaded.tokenizer,
            batch_size=batch,
            device=p.loaded.device,
        )
    name = p.task.config.task
    scores, strings = [], []
    t0 = time.perf_counter()
    for c in cands:
        out = evaluate_samples(
            lm, p.task, spec.split, spec.samples, lambda c=c: p.space.apply(p.loaded.model, [c])
        )
        scores.append(float(out["results"][name]["exact_match,remove_whitespace"]))
        per_doc = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        strings.append([s["resps"][0][0] for s in per_doc])
    return time.perf_counter() - t0, scores, strings


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument(
        "--loop-candidates", type=int, default=None, help="the slow loops score this many (all)"
    )
    ap.add_argument("--loop-batch", type=int, nargs="*", default=[1, 16], help="none: fast only")
    ap.add_argument("--gen-rows", type=int, default=64, help="fast path: rows decoded together")
    ap.add_argument("--json", default="runs/bench_generate.json")
    args = ap.parse_args()

    from blackbox.study.pipeline import prepare

    base = yaml.safe_load(open("studies/steer_triviaqa.yaml"))
    over = [f"task.search_size={args.docs}", "task.heldout_size=8"]
    p = prepare(validate(apply_overrides(base, over)), progress=False)
    p.objective.gen_rows = args.gen_rows
    rng = np.random.default_rng(0)
    cands = [p.space.baseline()] + p.space.sample(args.candidates - 1, rng)
    spec = p.objective.spec("search")
    k = len(cands) if args.loop_candidates is None else min(args.loop_candidates, len(cands))

    rows: dict[str, float] = {}
    agree: dict[str, bool] = {}
    p.problem.evaluate(cands[:2], limit=4)  # warm-up
    p.objective.reset_cache()
    p.objective.gen_stats = type(p.objective.gen_stats)()
    t0 = time.perf_counter()
    ev = p.problem.evaluate(cands)
    fast_s = time.perf_counter() - t0
    stats = p.objective.gen_stats
    p.objective.gen_stats = type(stats)()  # the strings below are not timed
    shared = "shared prefill" if stats.shared else "SHARED PREFILL OFF"
    rows[f"fast path (fp32, {shared})"] = len(cands) / fast_s
    fast_texts, _ = p.objective.generate(
        p.space.intervention(cands[:k]), p.objective.prepared("search")
    )

    for batch in args.loop_batch:
        seconds, scores, strings = seed_loop(p, cands[:k], spec, batch)
        rows[f"seed loop (simple_evaluate, batch {batch})"] = k / seconds
        agree[f"batch {batch}"] = scores == list(ev.values[:k]) and strings == fast_texts

    loop1 = rows.get("seed loop (simple_evaluate, batch 1)", min(rows.values()))
    loops = [v for n, v in rows.items() if n.startswith("seed loop")]
    best_loop = max(loops) if loops else next(iter(rows.values()))
    params = sum(x.numel() * x.element_size() for x in p.loaded.model.parameters())
    n_params = sum(x.numel() for x in p.loaded.model.parameters())
    bw, gf = copy_bandwidth_gbs(), matmul_gflops()
    decode_calls = stats.calls - -(-stats.rows // args.gen_rows)  # minus one prefill per chunk
    decode_tokens = stats.generated_tokens - stats.rows  # the prefill yields each row's first
    weight_gbs = decode_calls * params / max(stats.decode_s, 1e-9) / 1e9
    decode_gflops = 2 * n_params * decode_tokens / max(stats.decode_s, 1e-9) / 1e9
    print(
        f"\ntriviaqa: {args.docs} questions x {len(cands)} candidates = {stats.rows} rows; "
        f"{stats.generated_tokens} tokens generated ({stats.generated_tokens / stats.rows:.1f} per "
        f"row, max_gen_toks {p.objective.prepared('search').gen[0].max_new}); seed loops on the "
        f"first {k} candidates; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    if stats.shared is not True:
        print(f"!!! SHARED PREFILL OFF ({stats.shared}): every row ran the whole model !!!")
    print(f"{'path':40s} {'cand-evals/s':>12s} {'x batch-1 loop':>15s} {'x best loop':>12s}")
    for name, rate in rows.items():
        print(f"{name:40s} {rate:12.3f} {rate / loop1:15.1f} {rate / best_loop:12.1f}")
    for name, ok in agree.items():
        print(f"fast path vs simple_evaluate ({name}): strings and exact match identical: {ok}")
    print(
        f"\nfast path time: prefill {stats.prefill_s:.1f} s ({stats.prefill_tokens} prompt tokens, "
        f"{stats.padded_prefill_tokens} with padding), decoding {stats.decode_s:.1f} s "
        f"({decode_calls} calls, {decode_tokens} row-tokens, "
        f"{decode_tokens / max(decode_calls, 1):.1f} rows per call); rest (metrics) "
        f"{fast_s - stats.prefill_s - stats.decode_s:.1f} s"
    )
    print(
        f"decoding: weights ({params / 1e6:.0f} MB) read {weight_gbs:.1f} GB/s vs copy bandwidth "
        f"{bw:.1f} GB/s ({100 * weight_gbs / bw:.0f}%); {decode_gflops:.1f} GFLOP/s vs fp32 "
        f"matmul {gf:.1f} GFLOP/s ({100 * decode_gflops / gf:.0f}%)"
    )
    out = {
        "task": "triviaqa",
        "docs": args.docs,
        "candidates": len(cands),
        "loop_candidates": k,
        "rates": rows,
        "agree": agree,
        "values": [float(v) for v in ev.values],
        "gen_stats": vars(stats),
        "shared_prefill": stats.shared,
        "fast_seconds": fast_s,
        "copy_bandwidth_gbs": bw,
        "matmul_gflops": gf,
        "decode_weight_gbs": weight_gbs,
        "decode_gflops": decode_gflops,
        "host": platform.processor() or platform.machine(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
