"""The baseline table of docs/standard-benchmarks.md: the embedded model's unsteered score on
the standard lm-eval tasks, scored twice on the same documents.

Run on demand (``python benchmarks/bench_baselines.py [--tasks copa rte] [--docs 500]``).  For
each task, on a seeded random sample of its evaluation split (``test_split`` or else
``validation_split``: validation for all but MMLU, test for MMLU):

  (1) the fast path: the ``lm_eval_task`` objective (:class:`~blackbox.evals.lm_eval_task.
      LMEvalTask`, built with the study pipeline's defaults) scores the steering space's
      unsteered baseline candidate;
  (2) lm-eval's own ``simple_evaluate`` (``HFLM``) through
      :func:`blackbox.evals.parity.reference_scores`.

Both must give the same metrics (to 1e-9); a difference is printed as ``MISMATCH`` and the
script exits with status 1.  The 95% interval is Wilson's over documents for accuracy-type
metrics (a document is right or wrong) and a percentile bootstrap over documents for
corpus-level metrics (CB's F1).  MMLU is scored as lm-eval scores its group: ``acc`` of each
subject averaged with weights = the subject's (sampled) size, i.e. the mean over all sampled
documents.

Prints a markdown table on stdout (progress bars on stderr) and, with ``--json``, writes every
number, the document indices and the seconds each path took per task.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TASKS = (
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "piqa",
    "boolq",
    "winogrande",
    "openbookqa",
    "commonsense_qa",
    "social_iqa",
    "copa",
    "rte",
    "cb",
    "sciq",
    "mmlu",
)
GROUPS = ("mmlu",)
"""Tasks scored as lm-eval scores a group: every subtask, ``acc`` weighted by size."""

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
TOLERANCE = 1e-9

# HF model card of HuggingFaceTB/SmolLM2-135M-Instruct ("Instruction model" table): zero-shot,
# lighteval, with the card's own prompts and normalisation, full-precision weights (ours is the
# Q4_1 GGUF), so a different harness: for orientation only, never for equality.  task ->
# (figure as a fraction, note).  Figures we cannot vouch for are left out, not guessed.
# SmolLM2-135M-Instruct's model card ("Instruction model" table; lighteval, not lm-eval: other
# prompts and normalisation, bf16 weights against our Q4_1 GGUF). Recalled, NOT checked against
# the card on this offline machine: verify before quoting.
MODEL_CARD: dict[str, tuple[float, str]] = {
    "hellaswag": (0.409, ""),
    "piqa": (0.663, ""),
    "arc_easy": (0.373, "ARC avg of easy+challenge"),
    "arc_challenge": (0.373, "ARC avg of easy+challenge"),
    "mmlu": (0.293, "cloze formulation"),
}


# ----------------------------------------------------------------------------- pure helpers


def sample_docs(n_total: int, k: int, seed: int) -> list[int]:
    """``min(k, n_total)`` document indices of a split of ``n_total``, drawn without
    replacement by ``numpy.random.default_rng(seed)`` and sorted; the whole split when
    ``k >= n_total``."""
    if n_total < 0 or k < 0:
        raise ValueError(f"sample_docs: n_total={n_total}, k={k} must be >= 0")
    if k >= n_total:
        return list(range(n_total))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_total, size=k, replace=False))


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (95% by default)."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes out of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    items: Sequence[Any],
    aggregate: Callable[[list[Any]], float],
    iters: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``aggregate(items)``, resampling documents."""
    n = len(items)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(iters):
        pick = rng.integers(0, n, size=n)
        with contextlib.suppress(Exception):  # a resample may be degenerate (one class only)
            stats.append(float(aggregate([items[i] for i in pick])))
    stats = [s for s in stats if math.isfinite(s)]
    if not stats:
        return (math.nan, math.nan)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def is_binary(values: Iterable[Any]) -> bool:
    """Every value is a number equal to 0 or 1 (an accuracy-type metric per document)."""
    vals = list(values)
    return bool(vals) and all(
        isinstance(v, int | float | np.integer | np.floating) and float(v) in (0.0, 1.0)
        for v in vals
    )


def interval(
    values: Sequence[Any], aggregate: Callable[[list[Any]], float] | None = None, seed: int = 0
) -> tuple[float, float]:
    """95% interval over documents: Wilson's for 0/1 values, else a bootstrap of
    ``aggregate`` (a corpus-level metric such as F1)."""
    if is_binary(values):
        return wilson_interval(float(sum(float(v) for v in values)), len(values))
    if aggregate is None:
        return (math.nan, math.nan)
    return bootstrap_interval(list(values), aggregate, seed=seed)


def weighted_by_size(values: Sequence[float], sizes: Sequence[int]) -> float:
    """lm-eval's group aggregation with ``weight_by_size: true`` (MMLU's ``acc``)."""
    if len(values) != len(sizes) or not sizes or sum(sizes) <= 0:
        raise ValueError(f"weighted_by_size: {len(values)} values, sizes {list(sizes)}")
    return float(sum(v * s for v, s in zip(values, sizes)) / sum(sizes))


def equal(a: float | None, b: float | None, tol: float = TOLERANCE) -> bool:
    """Both present, finite and within ``tol``."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= tol


def card_cell(task: str, card: dict[str, tuple[float, str]] = MODEL_CARD) -> str:
    """The model card's figure for ``task`` (empty when the card has none)."""
    if task not in card:
        return ""
    value, note = card[task]
    return f"{value:.3f}" + (f" ({note})" if note else "")


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The table's rows of one task's result (one per metric; one error row on failure)."""
    task = result["task"]
    docs = f"{result.get('n_docs', '?')} of {result.get('n_split', '?')}"
    split = result.get("split") or "?"
    if result.get("error") and not result.get("metrics"):
        return [
            {
                "task": task,
                "split": split,
                "docs": docs if "n_docs" in result else "",
                "metric": "",
                "fast": f"**ERROR**: {result['error']}",
                "ref": "",
                "equal": "**ERROR**",
                "card": card_cell(task),
            }
        ]
    rows = []
    for i, (metric, m) in enumerate(result["metrics"].items()):
        lo, hi = m.get("ci") or (math.nan, math.nan)
        fast = f"{fmt(m.get('fast'))} [{fmt(lo, 3)}, {fmt(hi, 3)}]"
        if m.get("fast") is None:
            fast = "**ERROR**"
        if m.get("equal"):
            same = "yes"
        elif m.get("fast") is None or m.get("ref") is None:
            same = "**ERROR**"
        else:
            same = f"**MISMATCH** (diff {m['fast'] - m['ref']:+.2e})"
        rows.append(
            {
                "task": task,
                "split": split,
                "docs": docs,
                "metric": metric,
                "fast": fast,
                "ref": fmt(m.get("ref")) if m.get("ref") is not None else "**ERROR**",
                "equal": same,
                "card": card_cell(task) if i == 0 else "",
            }
        )
    if result.get("error"):  # some subtasks failed: the aggregate leaves them out
        rows.append(
            {
                "task": task,
                "split": split,
                "docs": "",
                "metric": "",
                "fast": f"**ERROR**: {result['error']}",
                "ref": "",
                "equal": "**ERROR**",
                "card": "",
            }
        )
    return rows


COLUMNS = (
    ("task", "task"),
    ("split", "split"),
    ("docs", "docs"),
    ("metric", "metric"),
    ("fast", "fast path [95% CI]"),
    ("ref", "simple_evaluate"),
    ("equal", "equal"),
    ("card", "model card (different harness)"),
)


def markdown_table(
    rows: Sequence[dict[str, str]], columns: Sequence[tuple[str, str]] = COLUMNS
) -> str:
    """A markdown table (cells' ``|`` escaped)."""

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(key, "")) for key, _ in columns) + " |")
    return "\n".join(lines)


def timing_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Seconds per task for both paths (and their ratio)."""
    rows = []
    for r in results:
        s = r.get("seconds", {})
        fast = s.get("fast_prepare", 0.0) + s.get("fast_score", 0.0)
        ref = s.get("simple_evaluate")
        rows.append(
            {
                "task": r["task"],
                "docs": str(r.get("n_docs", "")),
                "prep": f"{s.get('fast_prepare', math.nan):.1f}",
                "score": f"{s.get('fast_score', math.nan):.1f}",
                "ref": f"{ref:.1f}" if ref is not None else "n/a",
                "ratio": f"{ref / fast:.1f}x" if ref and fast > 0 else "n/a",
            }
        )
    return rows


TIMING_COLUMNS = (
    ("task", "task"),
    ("docs", "docs"),
    ("prep", "fast path: requests s"),
    ("score", "fast path: scoring s"),
    ("ref", "simple_evaluate s"),
    ("ratio", "simple_evaluate / fast"),
)


def eval_split(task: Any) -> str:
    """The split lm-eval evaluates a task on."""
    split = task.config.test_split or task.config.validation_split
    if not split:
        raise ValueError(f"task {task.config.task!r} has neither a test nor a validation split")
    return str(split)


def per_doc_values(
    task: Any, docs: Sequence[Any], lls: Sequence[Sequence[float]], greedy: Any = None
) -> dict[str, list[Any]]:
    """Per document, each metric's value through ``task.process_results`` (what lm-eval's
    aggregations consume); ``greedy``: per document, its requests' greedy flags (False when
    not given: multiple-choice accuracies never read them)."""
    if len(docs) != len(lls):
        raise ValueError(f"{len(docs)} documents but log-likelihoods of {len(lls)}")
    out: dict[str, list[Any]] = {}
    for d, (doc, ll) in enumerate(zip(docs, lls)):
        flags = greedy[d] if greedy is not None else [False] * len(ll)
        res = task.process_results(doc, [(float(x), bool(g)) for x, g in zip(ll, flags)])
        for metric, value in res.items():
            out.setdefault(metric, []).append(value)
    return out


# ----------------------------------------------------------------------------- scoring


def unsteered(model: Any) -> tuple[Any, Any]:
    """A steering space (one placeholder vector) and its unsteered baseline as an
    intervention: what a study scores as its ``unsteered`` baseline."""
    import torch

    from blackbox.models.layers import hidden_size, num_layers
    from blackbox.search_spaces.steering.space import SteeringSpace
    from blackbox.search_spaces.steering.vectors import SteeringVector

    n, d = num_layers(model), hidden_size(model)
    vec = SteeringVector("none", torch.zeros(n, d), torch.ones(n))
    space = SteeringSpace([vec], layer_range=(0, n - 1))
    return space, space.intervention([space.baseline()])


def score_task(task: Any, lm: Any, iv: Any, split: str, samples: list[int]) -> dict[str, Any]:
    """One (sub)task on documents ``samples`` of ``split``, by both paths."""
    from blackbox.evals.lm_eval_requests import TaskSplitSpec
    from blackbox.evals.lm_eval_task import LMEvalTask
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval
    from blackbox.evals.parity import reference_scores

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    obj = LMEvalTask(task, lm, {"eval": TaskSplitSpec(split, list(samples))})
    with quiet_lm_eval():
        prep = obj.prepared("eval")
    seconds["fast_prepare"] = time.perf_counter() - t0

    captured: dict[str, Any] = {}
    hook_scores = obj._hook_scores

    def keep(iv_: Any, prep_: Any) -> Any:  # the per-request scores, for per-document values
        captured["scores"] = hook_scores(iv_, prep_)
        return captured["scores"]

    obj._hook_scores = keep  # type: ignore[method-assign]
    t0 = time.perf_counter()
    ev = obj.evaluate(iv, "eval")
    seconds["fast_score"] = time.perf_counter() - t0
    lls, greedy = captured["scores"]
    fast_lls = [[float(lls[0][r]) for r in reqs] for reqs in prep.requests_of_doc]
    fast_greedy = [[bool(greedy[0][r]) for r in reqs] for reqs in prep.requests_of_doc]
    agg = task.aggregation()
    fast = {k: float(v) for k, v in ev.metrics[0].items() if k in agg}
    fast_docs = per_doc_values(task, prep.docs, fast_lls, fast_greedy)
    primary = fast_docs.get(obj.metric)
    if ev.per_doc[0] is not None and not np.array_equal(ev.per_doc[0], primary):
        raise AssertionError("the objective's per-document acc differs from process_results'")

    t0 = time.perf_counter()
    ref, ref_lls = reference_scores(lm, task, split, samples, None)
    seconds["simple_evaluate"] = time.perf_counter() - t0
    ref = {k: v for k, v in ref.items() if k in agg}
    if len(ref_lls) != len(fast_lls) or [len(x) for x in ref_lls] != [len(x) for x in fast_lls]:
        raise AssertionError(
            f"simple_evaluate scored {len(ref_lls)} documents, the fast path {len(fast_lls)}"
        )
    ref_docs = per_doc_values(task, prep.docs, ref_lls)
    diff = np.abs(np.concatenate(fast_lls) - np.concatenate(ref_lls)) if fast_lls else [0.0]
    flipped = {
        m: int(sum(a != b for a, b in zip(fast_docs[m], ref_docs.get(m, []))))
        for m in fast_docs
        if is_binary(fast_docs[m])
    }
    return {
        "split": split,
        "n_docs": len(samples),
        "n_split": len(task.dataset[split]),
        "doc_indices": list(samples),
        "fast": fast,
        "ref": ref,
        "fast_docs": fast_docs,
        "max_abs_loglik_diff": float(np.max(diff)),
        "docs_flipped": flipped,
        "seconds": seconds,
    }


def metric_entry(
    fast: float | None, ref: float | None, values: Sequence[Any], agg: Any, seed: int
) -> dict[str, Any]:
    lo, hi = interval(values, agg, seed)
    return {"fast": fast, "ref": ref, "ci": [lo, hi], "equal": equal(fast, ref)}


def run_single(name: str, task: Any, lm: Any, iv: Any, docs: int, seed: int) -> dict[str, Any]:
    split = eval_split(task)
    samples = sample_docs(len(task.dataset[split]), docs, seed)
    s = score_task(task, lm, iv, split, samples)
    agg = task.aggregation()
    metrics = {
        m: metric_entry(s["fast"].get(m), s["ref"].get(m), s["fast_docs"].get(m, []), agg[m], seed)
        for m in agg
    }
    out = {"task": name, **{k: v for k, v in s.items() if k not in ("fast", "ref", "fast_docs")}}
    # the fast path's value of each document (doc_indices order), for paired comparisons
    per_doc = {m: [jsonable(v) for v in vals] for m, vals in s["fast_docs"].items()}
    return {**out, "metrics": metrics, "per_doc": per_doc}


def run_group(
    name: str, tasks: dict[str, Any], lm: Any, iv: Any, docs: int, seed: int, bar: Any
) -> dict[str, Any]:
    """A group (MMLU): every subtask on its own sample; ``acc`` weighted by sampled size."""
    from tqdm import tqdm

    subtasks: dict[str, Any] = {}
    errors = []
    for sub in tqdm(sorted(tasks), desc=f"{name} subjects", leave=False, file=sys.stderr):
        bar.set_postfix_str(f"{name}: {sub}")
        try:
            subtasks[sub] = run_single(sub, tasks[sub], lm, iv, docs, seed)
        except Exception as exc:  # one failing subject is reported, the rest go on
            errors.append(f"{sub}: {one_line(exc)}")
            subtasks[sub] = {"task": sub, "error": one_line(exc), "trace": traceback.format_exc()}
    ok = [r for r in subtasks.values() if "metrics" in r]
    seconds = {
        k: float(sum(r["seconds"][k] for r in ok))
        for k in ("fast_prepare", "fast_score", "simple_evaluate")
    }
    out: dict[str, Any] = {
        "task": name,
        "split": ",".join(sorted({r["split"] for r in ok})) if ok else None,
        "n_docs": sum(r["n_docs"] for r in ok),
        "n_split": sum(r["n_split"] for r in ok),
        "subtasks": subtasks,
        "seconds": seconds,
    }
    if errors:
        out["error"] = f"{len(errors)} of {len(subtasks)} subtasks failed: " + "; ".join(errors[:3])
    if not ok:
        return out
    sizes = [r["n_docs"] for r in ok]
    metrics = {}
    for m in ("acc",):
        fast = weighted_by_size([r["metrics"][m]["fast"] for r in ok], sizes)
        refs = [r["metrics"][m]["ref"] for r in ok]
        ref = weighted_by_size(refs, sizes) if all(v is not None for v in refs) else None
        right = sum(r["metrics"][m]["fast"] * r["n_docs"] for r in ok)
        lo, hi = wilson_interval(round(right), out["n_docs"])  # the mean over sampled docs
        every = all(r["metrics"][m]["equal"] for r in ok)
        metrics[m] = {"fast": fast, "ref": ref, "ci": [lo, hi], "equal": every and equal(fast, ref)}
    out["metrics"] = metrics
    # the whole split's weighting (each subject by its full size), for orientation
    out["acc_weighted_by_full_split_size"] = weighted_by_size(
        [r["metrics"]["acc"]["fast"] for r in ok], [r["n_split"] for r in ok]
    )
    out["max_abs_loglik_diff"] = max(r["max_abs_loglik_diff"] for r in ok)
    out["docs_flipped"] = {"acc": sum(r["docs_flipped"].get("acc", 0) for r in ok)}
    return out


def jsonable(value: Any) -> Any:
    """A per-document value as JSON: numbers as floats, tuples (``(gold, pred)``) as lists."""
    if isinstance(value, tuple | list | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    return str(value)


def one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_task(name: str, lm: Any, iv: Any, args: argparse.Namespace, bar: Any) -> dict[str, Any]:
    from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval

    t0 = time.perf_counter()
    try:
        bar.set_postfix_str(f"{name}: loading")
        with quiet_lm_eval():
            tasks = load_tasks(name)
        load_s = time.perf_counter() - t0
        if name in GROUPS or len(tasks) > 1:
            out = run_group(name, tasks, lm, iv, args.mmlu_docs, args.seed, bar)
        else:
            bar.set_postfix_str(f"{name}: scoring")
            out = run_single(name, next(iter(tasks.values())), lm, iv, args.docs, args.seed)
        out["seconds"]["load_task"] = load_s
    except Exception as exc:  # one failing task is reported in the table, the rest go on
        return {
            "task": name,
            "error": one_line(exc),
            "trace": traceback.format_exc(),
            "seconds": {"load_task": time.perf_counter() - t0},
        }
    out["seconds"]["total"] = time.perf_counter() - t0
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("lm_eval", "torch", "transformers", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="default: all 14")
    ap.add_argument("--docs", type=int, default=500, help="documents per task (at most)")
    ap.add_argument("--mmlu-docs", type=int, default=20, help="documents per MMLU subject")
    ap.add_argument("--seed", type=int, default=0, help="seed of the document samples")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", type=Path, default=None, help="e.g. runs/bench_baselines.json")
    args = ap.parse_args(argv)
    if args.docs < 1 or args.mmlu_docs < 1:
        ap.error("--docs and --mmlu-docs must be >= 1")

    from tqdm import tqdm

    from blackbox.evals.lm_eval_splits import build_lm
    from blackbox.models import load_model

    t_start = time.perf_counter()
    loaded = load_model(device=args.device, dtype=args.dtype)
    lm = build_lm(loaded)
    _, iv = unsteered(loaded.model)
    print(
        f"model {loaded.name} ({loaded.device}, {loaded.dtype}, loaded in "
        f"{loaded.load_seconds:.1f} s); seed {args.seed}; at most {args.docs} documents per "
        f"task, {args.mmlu_docs} per MMLU subject",
        flush=True,
    )
    results = []
    bar = tqdm(args.tasks, desc="tasks", file=sys.stderr)
    for name in bar:
        results.append(run_task(name, lm, iv, args, bar))
    bar.close()

    rows = [row for r in results for row in table_rows(r)]
    print()
    print(markdown_table(rows))
    print()
    print(markdown_table(timing_rows(results), TIMING_COLUMNS))
    for r in results:
        if "acc_weighted_by_full_split_size" in r:
            print(
                f"\n{r['task']}: acc with subjects weighted by their full test size (as on the "
                f"whole split) {r['acc_weighted_by_full_split_size']:.4f}; the table weights by "
                "the sampled size, as simple_evaluate does on these documents"
            )
    for r in results:
        if "max_abs_loglik_diff" in r:
            flips = r.get("docs_flipped", {})
            print(
                f"{r['task']}: max |loglik fast - simple_evaluate| "
                f"{r['max_abs_loglik_diff']:.2e}; documents scored differently: "
                + (", ".join(f"{m} {n}" for m, n in flips.items()) or "none")
            )
    bad = [
        r["task"]
        for r in results
        if r.get("error") or not all(m["equal"] for m in r.get("metrics", {}).values())
    ]
    total = time.perf_counter() - t_start
    print(
        f"\n{'ALL EQUAL' if not bad else 'MISMATCH OR ERROR in: ' + ', '.join(bad)}; "
        f"{total:.0f} s in all"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seed": args.seed,
            "model": {
                "name": loaded.name,
                "device": loaded.device,
                "dtype": loaded.dtype,
                "load_seconds": loaded.load_seconds,
            },
            "versions": versions(),
            "interval": "95%: Wilson over documents for 0/1 metrics, percentile bootstrap "
            "(1000 resamples) for corpus-level metrics",
            "model_card": {
                "source": "HF model card, HuggingFaceTB/SmolLM2-135M-Instruct (lighteval: a "
                "different harness)",
                "figures": {k: {"value": v, "note": n} for k, (v, n) in MODEL_CARD.items()},
            },
            "tasks": results,
            "all_equal": not bad,
            "seconds": total,
        }
        args.json.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
