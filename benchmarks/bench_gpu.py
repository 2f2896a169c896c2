"""GPU throughput in one command (``make bench-gpu``): what a user with one GPU should expect.

Measured side by side in one process, on one device:

  (a) candidate evaluations per second on the embedded model (``studies/steer_rotten_tomatoes
      .yaml``): the seed loop (steering hooks + ``lm_eval.simple_evaluate`` per candidate,
      HFLM batch 16) vs the fast path (population-batched, branched, packed) in fp32 and bf16;
  (b) tokens per second of the log-likelihood scorer (:class:`LoglikScorer`, full forwards, no
      branching) on randomly initialised Llama-architecture models of about 1B (Llama 3.2 1B
      shape) and 8B (Llama 3.1 8B shape) parameters in bf16 -- random weights are enough for
      throughput, nothing is downloaded -- at several ``scoring.max_batch_tokens`` budgets;

each with its peak memory (CUDA: ``max_memory_allocated``; CPU: resident set).  It writes a
JSON (``--json``, default ``runs/bench_gpu.json``) and prints a table.  Without CUDA it prints
one line and exits 0, unless ``--device cpu`` is given: the test suite runs exactly this code on
CPU with ``--tiny`` (a tiny study config, a tiny Llama, small sizes) so it cannot rot.

    python benchmarks/bench_gpu.py                       # CUDA: about 3-6 min on one modern GPU
    python benchmarks/bench_gpu.py --device cpu --tiny --config tiny.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Llama shapes (random weights): ~1.2B and ~8.0B parameters; "tiny" for the CPU test.
SHAPES: dict[str, dict[str, int]] = {
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    ),
}


class Peak:
    """Peak memory of a block in MiB: CUDA allocations, or this process's resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib = device, 0.0

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_fitness import PeakRSS

            self._rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._rss.__exit__(*exc)
            self.mib = self._rss.peak


def param_count(shape: dict[str, int]) -> int:
    """Parameters of a Llama of ``shape`` (untied embeddings), without building it."""
    d, f, n, v = (
        shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
    )
    kv = d * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
    return n * per_layer + 2 * v * d + d


def random_llama(shape: dict[str, int], device: torch.device, dtype: torch.dtype) -> Any:
    """A randomly initialised Llama built directly on ``device`` in ``dtype``."""
    import transformers

    cfg = transformers.LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            cfg, dtype=dtype, attn_implementation="sdpa"
        )
    return model.eval().requires_grad_(False)


def scorer_rates(
    size: str, device: torch.device, budgets: list[int], rows: int, length: int, candidates: int
) -> list[dict[str, Any]]:
    """Tokens/s of :class:`LoglikScorer` on a random Llama of ``size``: ``candidates`` x
    ``rows`` rows of ``length`` random tokens, one query per row, each ``max_batch_tokens``
    budget in ``budgets`` (a warm-up call first)."""
    from blackbox.forward.loglik import LoglikScorer
    from blackbox.forward.rows import Rows

    shape = SHAPES[size]
    dtype = torch.bfloat16
    t0 = time.perf_counter()
    model = random_llama(shape, device, dtype)
    built = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    toks = rng.integers(3, shape["vocab_size"], size=(rows, length))
    r = Rows(
        tokens=[list(map(int, t)) for t in toks],
        q_row=np.arange(rows),
        q_pos=np.full(rows, length - 1),
        q_tok=rng.integers(3, shape["vocab_size"], size=rows),
    )

    def no_intervention(*_: Any) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    out = []
    cands = list(range(candidates))
    for budget in budgets:
        scorer = LoglikScorer(model, pad_id=0, max_batch_tokens=budget, branch=False)
        scorer.score(r, cands[:1], no_intervention)  # warm-up (kernels, allocator)
        with Peak(device) as mem:
            t0 = time.perf_counter()
            scores = scorer.score(r, cands, no_intervention)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
        assert np.isfinite(scores.logprob).all()
        out.append(
            {
                "model": f"random Llama {size}",
                "params": param_count(shape),
                "build_seconds": round(built, 2),
                "max_batch_tokens": budget,
                "effective_batch_tokens": scorer.max_batch_tokens,  # halved on OOM
                "tokens": candidates * rows * length,
                "tokens_per_s": candidates * rows * length / seconds,
                "peak_mib": mem.mib,
            }
        )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def fitness_rates(
    config: str, overrides: list[str], device: torch.device, candidates: int, seed_candidates: int
) -> list[dict[str, Any]]:
    """Candidate evaluations/s: the seed loop vs the fast path in fp32 and bf16."""
    from lm_eval.models.huggingface import HFLM

    from blackbox.config import load_config
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval
    from blackbox.evals.parity import reference_scores
    from blackbox.study.pipeline import prepare

    out: list[dict[str, Any]] = []
    cands: list[Any] = []
    base = [*overrides, f"model.device={device}"]
    for dtype in ("float32", "bfloat16"):
        p = prepare(load_config(config, [*base, f"model.dtype={dtype}"]), progress=False)
        if not cands:
            rng = np.random.default_rng(0)
            cands = [p.space.baseline()] + p.space.sample(candidates - 1, rng)
        if dtype == "float32":  # the seed loop, once (fp32, lm-eval's own path)
            spec = p.objective.spec("search")
            with quiet_lm_eval():
                lm = HFLM(
                    pretrained=p.loaded.model,
                    tokenizer=p.loaded.tokenizer,
                    batch_size=16,
                    device=str(device),
                )
            k = min(seed_candidates, len(cands))
            with Peak(device) as mem:
                t0 = time.perf_counter()
                for c in cands[:k]:
                    reference_scores(
                        lm,
                        p.task,
                        spec.split,
                        spec.samples,
                        lambda c=c, p=p: p.space.apply(p.loaded.model, [c]),
                    )
                seconds = time.perf_counter() - t0
            out.append(
                {
                    "path": "seed loop (simple_evaluate, batch 16)",
                    "dtype": dtype,
                    "candidates": k,
                    "evals_per_s": k / seconds,
                    "peak_mib": mem.mib,
                }
            )
        p.problem.evaluate(cands[:2], limit=4)  # warm-up
        p.objective.reset_cache()
        with Peak(device) as mem:
            t0 = time.perf_counter()
            ev = p.problem.evaluate(cands)
            seconds = time.perf_counter() - t0
        assert np.all(np.isfinite(ev.values))
        out.append(
            {
                "path": "fast path",
                "dtype": dtype,
                "candidates": len(cands),
                "evals_per_s": len(cands) / seconds,
                "peak_mib": mem.mib,
                "documents": p.objective.n_examples("search"),
            }
        )
    return out


def table(result: dict[str, Any]) -> str:
    """The printed table."""
    lines = [f"device {result['device']} ({result['device_name']}), torch {result['torch']}"]
    seed = next((r["evals_per_s"] for r in result["fitness"] if r["path"].startswith("seed")), None)
    lines.append(
        f"{'candidate evaluations':44s} {'evals/s':>10s} {'x seed loop':>12s} {'peak MiB':>10s}"
    )
    for r in result["fitness"]:
        ratio = r["evals_per_s"] / seed if seed else float("nan")
        lines.append(
            f"{r['path'] + ' ' + r['dtype']:44s} {r['evals_per_s']:10.2f} {ratio:12.1f} {r['peak_mib']:10.0f}"
        )
    lines.append(
        f"{'scorer (bf16, full forwards)':30s} {'params':>8s} {'batch tok':>10s} {'tokens/s':>12s} {'peak MiB':>10s}"
    )
    for r in result["scorer"]:
        if "skipped" in r:
            lines.append(f"{r['model']:30s} skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['model']:30s} {r['params'] / 1e9:7.2f}B {r['effective_batch_tokens']:10d} "
            f"{r['tokens_per_s']:12.0f} {r['peak_mib']:10.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda if present, else exit)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU test)")
    ap.add_argument("--config", default="studies/steer_rotten_tomatoes.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sizes", help="scorer models, comma-separated (default 1b,8b; --tiny: tiny)")
    ap.add_argument("--json", default="runs/bench_gpu.json")
    args = ap.parse_args(argv)
    if args.device is None:
        if not torch.cuda.is_available():
            print(
                f"bench-gpu: no CUDA device (torch {torch.__version__}); nothing measured. "
                "The same code runs tiny sizes on CPU in tests/benchmarks/test_bench_gpu.py."
            )
            return 0
        args.device = "cuda"
    device = torch.device(args.device)
    tiny = args.tiny
    sizes = (args.sizes or ("tiny" if tiny else "1b,8b")).split(",")
    overrides = list(args.overrides) + (["task.search_size=8"] if tiny else ["task.search_size=64"])
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "fitness": fitness_rates(
            args.config, overrides, device, 4 if tiny else 32, 2 if tiny else 4
        ),
        "scorer": [],
    }
    budgets = [512, 2048] if tiny else [4096, 16384, 65536]
    for size in sizes:
        need = param_count(SHAPES[size]) * 2 * 1.25 / 2**30  # bf16 weights + activations
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0] / 2**30
            if free < need:
                result["scorer"].append(
                    {
                        "model": f"random Llama {size}",
                        "skipped": f"needs ~{need:.0f} GiB, {free:.0f} GiB free",
                    }
                )
                continue
        rows, length = (8, 64) if tiny else (64, 512)
        result["scorer"] += scorer_rates(size, device, budgets, rows, length, 2 if tiny else 8)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
