"""``blackbox report RUN_DIR_OR_STORAGE``: a Markdown report with plots, from a storage alone.

Reads every study of an Optuna storage written by ``blackbox compare`` (or ``blackbox run``),
turns each into a :class:`~blackbox.report.aggregate.RunCurve` and writes into the output directory:

- ``best_vs_cost.png`` / ``best_vs_seconds.png``: best-so-far against forward-pass equivalents
  and against evaluation wall seconds, one curve per strategy: the median across seeds and the
  interquartile band;
- ``landscape.png`` (steering candidates): every evaluated (layer, coefficient) per vector,
  coloured by score;
- ``pareto.png`` when trials carry a secondary objective (user attribute ``extra``);
- ``report.md``: the table (median best, IQR, range, held-out score of each run's best, budget
  to reach a threshold and how many runs never reached it) and the figures.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from blackbox import stats
from blackbox.masking import mask_url
from blackbox.multiobjective import SIDE_DIRECTION, pareto_mask
from blackbox.report import aggregate as agg
from blackbox.report.aggregate import RunCurve
from blackbox.study.storage import StorageError, make_storage, records

DB_NAMES = ("compare.db", "study.db", "tune.db")


def resolve_storage(target: str, storage: str | None = None) -> tuple[str, Path]:
    """A storage URL and the default output directory for a run dir, a .db file or a URL.

    A directory whose runs live on a server (its ``compare.yaml`` / ``config.yaml`` names the
    storage) is read from that URL; ``storage`` (``--storage``) overrides it, and is needed
    when the saved URL's password is masked.
    """
    from blackbox.study.storage import checked_option

    path = Path(target)
    if storage:
        return checked_option(storage), path if path.is_dir() else Path("report")
    if "://" in target:
        return checked_option(target, "report"), Path("report")
    if path.is_dir():
        for name in DB_NAMES:
            if (path / name).is_file():
                return f"sqlite:///{(path / name).resolve()}", path
        saved = _saved_storage(path)
        if saved is not None:
            return saved, path
        raise StorageError(
            f"report: {target!r} holds none of {', '.join(DB_NAMES)} and names no storage; "
            "pass --storage URL"
        )
    if path.is_file():
        return f"sqlite:///{path.resolve()}", path.parent
    raise StorageError(f"report: {target!r} is neither a directory, a file nor a storage URL")


def _saved_storage(run_dir: Path) -> str | None:
    """The storage URL saved in a run or compare directory's config (``None`` if none)."""
    for name in ("compare.yaml", "config.yaml"):
        f = run_dir / name
        if not f.is_file():
            continue
        try:
            data = yaml.safe_load(f.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            raise StorageError(f"report: {str(f)!r} cannot be read as YAML") from None
        url = data.get("storage") if isinstance(data, dict) else None
        if not url:
            continue
        if "***" in str(url):
            raise StorageError(
                f"report: the storage password is masked in {str(f)!r}; pass --storage URL"
            )
        return str(url)
    return None


def _value(t: optuna.trial.FrozenTrial) -> float:
    return float(t.value) if t.state == TrialState.COMPLETE and t.value is not None else math.nan


def curve_from_trials(
    name: str, attrs: dict[str, Any], trials: list[optuna.trial.FrozenTrial]
) -> RunCurve | None:
    """A run's curve from its trials (``None`` if it has no search evaluations yet)."""
    by_kind: dict[str, list[optuna.trial.FrozenTrial]] = defaultdict(list)
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED):
            by_kind[t.user_attrs.get("kind", "")].append(t)  # raced (PRUNED): cost, no value
    search = sorted(
        by_kind["search"],
        key=lambda t: (t.user_attrs.get("generation", 0), t.user_attrs.get("index", 0)),
    )
    if not search:
        return None
    values = np.array([_value(t) for t in search])
    cost = np.cumsum([float(t.user_attrs.get("cost") or 0.0) for t in search])
    seconds = np.cumsum([float(t.user_attrs.get("seconds") or 0.0) for t in search])
    extras = [t.user_attrs.get("extra") for t in search]
    bases = sorted(by_kind["baseline"], key=lambda t: t.number)
    baseline = [_value(t) for t in bases]
    first_label = bases[0].user_attrs.get("label") if bases else None
    held_base, held_best, held_docs = None, None, None
    best_i = int(np.nanargmax(values)) if np.isfinite(values).any() else None
    for t in sorted(by_kind["heldout"], key=lambda t: t.number):
        label = t.user_attrs.get("label")
        if label is not None:  # labelled records: the baselines' labels and "best"
            if label == "best":
                held_best, held_docs = _value(t), t.user_attrs.get("per_doc")
            elif label == first_label:
                held_base = _value(t)
        elif bases and t.user_attrs.get("index") == 0:
            held_base = _value(t)
        elif best_i is None or t.params == search[best_i].params:
            held_best, held_docs = _value(t), t.user_attrs.get("per_doc")
    return RunCurve(
        name=name,
        label=str(attrs.get("label") or name),
        space=attrs.get("space"),
        seed=attrs.get("seed"),
        values=values,
        cost=cost,
        seconds=seconds,
        heldout_best=held_best,
        baseline=baseline[0] if baseline else None,
        heldout_baseline=held_base,
        heldout_ci=None if not held_docs else tuple(stats.mean_interval(np.asarray(held_docs))),
        candidates=[dict(t.user_attrs.get("candidate") or {}) for t in search],
        extra=extras if any(e for e in extras) else None,
    )


def load_runs(storage: str, name: str | None = None) -> tuple[list[RunCurve], dict[str, Any]]:
    """Every run of ``storage`` (of compare ``name`` only, when given) and shared attributes."""
    store = make_storage(storage)
    runs, meta = [], {}
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        attrs = s.user_attrs
        if attrs.get("kind") in ("tune", "eval"):  # tune: runs, not evaluations; eval: read
            continue  # with its search study (records)
        if name is not None and attrs.get("compare", s.study_name) != name:
            continue
        study = optuna.load_study(study_name=s.study_name, storage=store)
        run = curve_from_trials(s.study_name, attrs, records(study))
        if run is not None:
            runs.append(run)
            meta.setdefault("budget", attrs.get("budget"))
            meta.setdefault("compare", attrs.get("compare"))
            if attrs.get("threshold") is not None:
                meta.setdefault("threshold", attrs["threshold"])
    return runs, meta


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _plot_curves(runs: list[RunCurve], axis: str, limit: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = agg.common_grid([getattr(r, axis) for r in runs], limit)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (med, q25, q75) in agg.curves_on_grid(runs, axis, grid).items():
        n = sum(r.label == label for r in runs)
        (line,) = ax.step(grid, med, where="post", label=f"{label} (n={n})")
        ax.fill_between(grid, q25, q75, step="post", alpha=0.2, color=line.get_color())
    base = [r.baseline for r in runs if r.baseline is not None and math.isfinite(r.baseline)]
    if base:
        ax.axhline(float(np.median(base)), color="gray", linestyle="--", label="baseline")
    ax.set_xlabel("forward-pass equivalents" if axis == "cost" else "evaluation wall seconds")
    ax.set_ylabel("best search score so far")
    ax.set_title("median and interquartile band across seeds")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _landscape(runs: list[RunCurve], path: Path) -> Path | None:
    """Layer x coefficient scatter of every evaluated steering candidate (per vector)."""
    keys = {k for r in runs for c in r.candidates for k in c}
    vectors = sorted(k[: -len(".layer")] for k in keys if k.endswith(".layer"))
    vectors = [v for v in vectors if f"{v}.coeff" in keys]
    if not vectors:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = [c for r in runs for c in r.candidates]
    values = np.concatenate([r.values for r in runs])
    order = np.argsort(np.nan_to_num(values, nan=-np.inf))  # best drawn last, on top
    fig, axes = plt.subplots(1, len(vectors), figsize=(5 * len(vectors), 4), squeeze=False)
    for ax, v in zip(axes[0], vectors):
        lay = np.array([c.get(f"{v}.layer", np.nan) for c in cands], dtype=float)[order]
        coe = np.array([c.get(f"{v}.coeff", np.nan) for c in cands], dtype=float)[order]
        sc = ax.scatter(lay, coe, c=values[order], cmap="viridis", s=18, alpha=0.85)
        ax.set_xlabel(f"{v}: layer")
        ax.set_ylabel(f"{v}: coefficient")
        fig.colorbar(sc, ax=ax, label="search score")
    fig.suptitle(f"all {len(cands)} evaluated candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pareto(runs: list[RunCurve], path: Path) -> tuple[Path, str] | None:
    """Primary score (maximised) against the first secondary objective, front per strategy.

    A secondary objective is a side column (an evaluation's ``extra``), minimised by
    declaration (:data:`~blackbox.multiobjective.SIDE_DIRECTION`), whatever its name.
    """
    with_extra = [r for r in runs if r.extra]
    if not with_extra:
        return None
    name = next(iter(next(e for r in with_extra for e in r.extra if e)))
    directions = ("maximize", SIDE_DIRECTION)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, rs in agg.group(with_extra).items():
        v = np.concatenate([r.values for r in rs])
        s = np.array([(e or {}).get(name, np.nan) for r in rs for e in r.extra], dtype=float)
        mask = pareto_mask(np.column_stack([v, s]), directions)
        (pts,) = ax.plot(s, v, ".", alpha=0.25)
        order = np.argsort(s[mask])
        ax.plot(s[mask][order], v[mask][order], "o-", ms=4, color=pts.get_color(), label=label)
    ax.set_xlabel(f"{name} ({'lower' if directions[1] == 'minimize' else 'higher'} is better)")
    ax.set_ylabel("search score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, name


def render_markdown(
    runs: list[RunCurve], meta: dict[str, Any], threshold: float, figures: dict[str, str]
) -> str:
    """The report's Markdown text (pure: figures are given as ``{key: file name}``)."""
    budget = meta.get("budget") or {}
    limit = budget.get("cost")
    rows = agg.summary_rows(runs, threshold, "cost", limit)
    title = meta.get("compare") or "comparison"
    lines = [f"# {title}", ""]
    spent = ", ".join(f"{k} {v:g}" for k, v in budget.items() if v is not None)
    base = [r.baseline for r in runs if r.baseline is not None]
    hbase = [r.heldout_baseline for r in runs if r.heldout_baseline is not None]
    lines += [
        f"{len(runs)} runs of {len(rows)} strategies; budget per run: {spent or 'unknown'} "
        "(cost = forward-pass equivalents). Scores are maximised.",
        "",
    ]
    if base:
        lines += [
            f"Baseline (no intervention): search {_fmt(float(np.median(base)))}, "
            f"held-out {_fmt(float(np.median(hbase))) if hbase else '-'}.",
            "",
        ]
    lines += [
        f"Threshold for 'cost to reach': {_fmt(threshold)} (search score).",
        "",
        "| strategy | runs | median best | IQR | min - max | median held-out, IQR across seeds "
        "(per seed) | median cost to reach | never reached |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        held = ", ".join(_fmt(h, 3) for h in r["heldout"])
        lines.append(
            f"| {r['label']} | {r['runs']} | {_fmt(r['median_best'])} | {_fmt(r['iqr_best'])} "
            f"| {_fmt(r['min_best'])} - {_fmt(r['max_best'])} "
            f"| {_fmt(r['median_heldout'])}, IQR {_fmt(agg.iqr(r['heldout']))} ({held}) "
            f"| {_fmt(r['median_to_threshold'], 0)} | {r['never_reached']}/{r['runs']} |"
        )
    lines.append("")
    captions = {
        "cost": "Best-so-far against forward-pass equivalents (the fair budget): median across "
        "seeds, band = interquartile range.",
        "seconds": "Best-so-far against evaluation wall seconds (objective time only; "
        "strategy overhead excluded).",
        "landscape": "Every evaluated steering candidate, layer x coefficient per vector, "
        "coloured by search score.",
        "pareto": "Search score against the secondary objective; lines join each strategy's "
        "non-dominated points.",
    }
    for key, file in figures.items():
        lines += [f"![{key}]({file})", "", captions.get(key, ""), ""]
    lines += [
        "## Runs",
        "",
        "| study | seed | evaluations | cost | best | held-out [95% interval over documents] |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(runs, key=lambda r: r.name):
        ci = "" if r.heldout_ci is None else f" [{r.heldout_ci[0]:.3f}, {r.heldout_ci[1]:.3f}]"
        lines.append(
            f"| {r.name} | {_fmt(r.seed)} | {len(r.values)} | {_fmt(float(r.cost[-1]), 0)} "
            f"| {_fmt(r.final)} | {_fmt(r.heldout_best)}{ci} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    storage: str, out: Path, threshold: float | None = None, name: str | None = None
) -> Path:
    """Write ``report.md`` and its PNGs into ``out`` from ``storage`` alone; returns the path."""
    runs, meta = load_runs(storage, name)
    if not runs:
        raise StorageError(f"report: no runs with search evaluations in {mask_url(storage)!r}")
    out.mkdir(parents=True, exist_ok=True)
    if threshold is None:
        threshold = meta.get("threshold")
    if threshold is None:
        threshold = agg.default_threshold(runs)
    limit = (meta.get("budget") or {}).get("cost")
    figures = {
        "cost": _plot_curves(runs, "cost", limit, out / "best_vs_cost.png").name,
        "seconds": _plot_curves(runs, "seconds", None, out / "best_vs_seconds.png").name,
    }
    land = _landscape(runs, out / "landscape.png")
    if land is not None:
        figures["landscape"] = land.name
    par = _pareto(runs, out / "pareto.png")
    if par is not None:
        figures["pareto"] = par[0].name
    path = out / "report.md"
    path.write_text(render_markdown(runs, meta, threshold, figures))
    return path


def cmd_report(args: argparse.Namespace) -> int:
    url, default_out = resolve_storage(args.target, args.storage)
    path = write_report(url, Path(args.out) if args.out else default_out, args.threshold, args.name)
    print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    """Add ``report`` to the CLI's subparsers."""
    p = sub.add_parser(
        "report",
        help="rebuild report.md and plots of a comparison from its storage alone",
        description="Read every run of an Optuna storage (a compare or run directory, a .db "
        "file or a storage URL) and write report.md with best-so-far, landscape and Pareto plots.",
    )
    p.add_argument("target", metavar="RUN_DIR_OR_STORAGE")
    p.add_argument("--out", help="output directory (default: the run directory)")
    p.add_argument("--threshold", type=float, help="score for 'cost to reach' (default: median)")
    p.add_argument("--name", help="only the comparison of this name (storage shared by several)")
    p.add_argument(
        "--storage", help="storage URL (when the directory's saved one has a masked password)"
    )
    p.set_defaults(handler=cmd_report)


def write_index(out: Path, name: str, tasks: list[str]) -> Path:
    """``report.md`` of a comparison over several tasks: per task, its summary table, its
    best-so-far plot and a link to its full report (``<task>/report.md``)."""
    lines = [f"# {name}", "", f"One comparison per task: {', '.join(tasks)}.", ""]
    for task in tasks:
        part = (out / task / "report.md").read_text().splitlines()
        start = next((i for i, ln in enumerate(part) if ln.startswith("|")), len(part))
        end = next((i for i in range(start, len(part)) if not part[i].startswith("|")), len(part))
        lines += [f"## {task}", "", f"Full report: [{task}/report.md]({task}/report.md)", ""]
        lines += part[start:end] + ["", f"![{task}: best so far]({task}/best_vs_cost.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
