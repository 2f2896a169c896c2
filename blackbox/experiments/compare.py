"""Compare fairly: a matrix of (space, strategy) entries x seeds on one objective and budget.

``blackbox compare CONFIG [--set ...] [--out DIR]`` loads the model once, prepares each
search space with the shared objective once (:func:`blackbox.study.pipeline.prepare`), then
runs every (entry, seed) pair with a fresh strategy and an empty repeat cache, each against the
same budget in forward-pass equivalents, so gradient and gradient-free search, and steering,
token and soft prompts, meet on one scale.  Every evaluation of every run is an Optuna trial in
one storage (default ``DIR/compare.db``), one study per run named ``<name>/<label>/seed<k>``
(``<name>/<task>/<label>/seed<k>`` with several tasks) and tagged with the user attributes
``compare``, ``label``, ``space``, ``strategy``, ``settings``, ``population`` and ``seed``.

Resuming: a run whose study holds its held-out records for the same budget is finished and
skipped; an unfinished run resumes by deterministic replay.  Adding seeds or entries to the
config and re-running the same command runs only the new pairs.  ``blackbox report DIR``
(:mod:`blackbox.report.compare`) then rebuilds ``report.md`` and its plots from the storage.

Config (YAML)::

    study: {...}            # a study config (blackbox run's schema) without strategy/budget;
                            # its seed fixes the data subsample shared by every run; its space
                            # is the default space of every entry
    spaces:                 # optional: more spaces by name, for entries that set `space:`
      tokens: {type: tokens, n_tokens: 8, placement: after_input}
    tasks: [bb_rotten_tomatoes, rte]           # optional: the whole matrix once per task
    strategies:             # one entry per curve
      - {label: pso, name: pso, population: 8, settings: {c1: 0.5}}
      - {label: tokens-epo, space: tokens, name: epo, population: 4}
    seeds: [0, 1, 2]        # strategy seeds; every entry runs once per seed
    budget: {cost: 1536}    # forward-pass equivalents per run (optionally evaluations, seconds)
    threshold: 0.8          # report: budget to reach this search score (default: a median)
    storage: null           # Optuna storage URL (default sqlite:///DIR/compare.db)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from blackbox.experiments.compare_config import CompareConfig, RunStrategy, load_compare

if TYPE_CHECKING:  # torch, transformers and the strategies load when a comparison runs
    from blackbox.study.runner import Budget, Progress

STORAGE_FILE = "compare.db"


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix."""

    label: str
    strategy: str
    population: int
    settings: dict[str, Any]
    seed: int
    space: str | None = None

    def study_name(self, prefix: str) -> str:
        return f"{prefix}/{self.label}/seed{self.seed}"

    def attrs(self, prefix: str) -> dict[str, Any]:
        return {
            "compare": prefix,
            "label": self.label,
            "space": self.space,
            "strategy": self.strategy,
            "population": self.population,
            "settings": self.settings,
            "seed": self.seed,
        }


def run_specs(strategies: list[RunStrategy], seeds: list[int]) -> list[RunSpec]:
    """Every (entry, seed) pair, seeds outermost so a partial matrix is balanced."""
    return [
        RunSpec(s.key, s.name, s.population, dict(s.settings), seed, s.space)
        for seed in seeds
        for s in strategies
    ]


def run_fingerprint(base: str, spec: RunSpec) -> str:
    """Fingerprint of one run: the shared study's plus the strategy and its seed."""
    data = json.dumps(
        [base, spec.strategy, spec.population, spec.settings, spec.seed], sort_keys=True
    )
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def budget_attr(budget: Budget) -> dict[str, Any]:
    return {"evaluations": budget.evaluations, "seconds": budget.seconds, "cost": budget.cost}


def is_finished(study: Any, budget: Budget) -> bool:
    """True when the run has its held-out records and was finished under this budget."""
    if study.user_attrs.get("finished_budget") != budget_attr(budget):
        return False
    from blackbox.study.storage import records

    return any(t.user_attrs.get("kind") == "heldout" for t in records(study))


def recorded_cost(study: Any, generations: int) -> float:
    """Forward-pass equivalents recorded by the first ``generations`` search generations."""
    return sum(
        float(t.user_attrs.get("cost") or 0.0)
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("kind") == "search"
        and int(t.user_attrs.get("generation", 0)) < generations
    )


def stop_at_cost(budget: Budget, study: Any = None) -> Callable[[Progress], None]:
    """A generation callback that ends the search once ``budget.cost`` is spent.

    The runner checks evaluations and seconds between generations; this sets the budget's
    seconds to 0 when the search cost reaches ``budget.cost``, so the run stops after the
    current generation and still re-scores its best on the held-out split.  With ``study``,
    the cost is read from the recorded trials, so generations replayed on resume count at
    their recorded cost (``Progress.cost`` counts them as free).
    """

    def callback(p: Progress) -> None:
        if budget.cost is None:
            return
        spent = p.cost if study is None else max(p.cost, recorded_cost(study, p.generation))
        if spent >= budget.cost:
            budget.seconds = 0.0

    return callback


def reset_objective(objective: Any, keep: Any = ()) -> None:
    """Empty an objective's repeat cache so the next run pays for its own evaluations.

    Entries of the candidate keys ``keep`` (the space's baselines, which every run scores and
    no run's search budget counts) are kept, so a shared baseline is scored once.
    """
    reset = getattr(objective, "reset_cache", None)
    if reset is not None:
        reset(keep=list(keep))


def run_matrix(
    space: Any,
    objective: Any,
    specs: list[RunSpec],
    budget: Budget,
    storage: str,
    prefix: str,
    fingerprint: str,
    progress: bool = False,
    log: Callable[[str], None] = print,
    make: Callable[..., Any] | None = None,
    attrs: dict[str, Any] | None = None,
    baselines: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Run every spec not yet finished; returns ``{study name: "done" | "skipped"}``.

    Args:
        space: the search space shared by every run.
        objective: the objective shared by every run (its repeat cache is emptied per run).
        specs: the runs.
        budget: one budget for every run (copied per run).
        storage: Optuna storage URL holding one study per run.
        prefix: the comparison's name (study names are ``prefix/label/seed<k>``).
        fingerprint: the shared study config's fingerprint.
        progress: show each run's progress bar.
        log: where to print one line per run.
        make: strategy factory (default :func:`~blackbox.strategies.make_strategy`).
        attrs: more study user attributes for every run (for example the report threshold).
        baselines: reference candidates every run scores first (default: the space's).
    """
    from blackbox.strategies import make_strategy
    from blackbox.study.runner import Budget, Runner
    from blackbox.study.storage import make_storage, open_study

    make = make or make_strategy

    store = make_storage(storage) if isinstance(storage, str) else storage
    status: dict[str, str] = {}
    for spec in specs:
        name = spec.study_name(prefix)
        study = open_study(
            store,
            name,
            space.box,
            run_fingerprint(fingerprint, spec),
            label=storage if isinstance(storage, str) else None,
        )
        if is_finished(study, budget):
            status[name] = "skipped"
            log(f"{name}: finished, skipped")
            continue
        for k, v in {**spec.attrs(prefix), **(attrs or {})}.items():
            study.set_user_attr(k, v)
        study.set_user_attr("budget", budget_attr(budget))
        run_budget = Budget(budget.evaluations, budget.seconds, budget.cost)
        strategy = make(
            spec.strategy, space.box, seed=spec.seed, population=spec.population, **spec.settings
        )
        if baselines is None:
            baselines = space.baselines() if hasattr(space, "baselines") else {}
        keep = space.intervention(list(baselines.values())).keys if baselines else []
        reset_objective(objective, keep=keep)
        summary = Runner(
            space,
            objective,
            strategy,
            study,
            run_budget,
            progress=progress,
            on_generation=stop_at_cost(run_budget, study),
            baselines=baselines,
        ).run()
        study.set_user_attr("finished_budget", budget_attr(budget))
        study.set_user_attr("wall_seconds", round(summary.wall_seconds, 3))
        best = summary.best.value if summary.best is not None else math.nan
        held = summary.heldout_best.value if summary.heldout_best is not None else math.nan
        log(
            f"{name}: best {best:.4f} (held-out {held:.4f}), {summary.evaluations} evaluations, "
            f"cost {summary.search_cost:g}, {summary.resumed} read back, "
            f"{summary.wall_seconds:.1f} s"
        )
        status[name] = "done"
    return status


def run_compare(cfg: CompareConfig, out: Path, progress: bool = True) -> dict[str, str]:
    """Load the model once; per task and space, prepare the objective and the space once and
    run that space's entries x seeds into ``out``; write ``report.md`` (one per task)."""
    from blackbox.masking import masked
    from blackbox.models import load_model
    from blackbox.report.compare import write_index, write_report
    from blackbox.study.pipeline import prepare
    from blackbox.study.rundir import lock_dir, seed_everything
    from blackbox.study.runner import Budget

    m = cfg.study.model
    saved = out / "compare.yaml"
    if m.dtype == "auto" and saved.is_file():  # resume in the precision the runs started in
        stored = ((yaml.safe_load(saved.read_text()) or {}).get("study") or {}).get("model") or {}
        if stored.get("dtype") not in (None, "auto"):
            m.adopt(str(stored["dtype"]), f"resumed: {str(saved)!r} names {stored['dtype']}")
    loaded = load_model(m.name, device=m.device, dtype=m.dtype)  # a bad model writes nothing
    if m.dtype == "auto":
        m.dtype = loaded.dtype  # type: ignore[assignment]  # saved below: resumes keep it
    out.mkdir(parents=True, exist_ok=True)
    lock_dir(out)
    url = cfg.storage or f"sqlite:///{(out / STORAGE_FILE).resolve()}"
    text = yaml.safe_dump(masked(json.loads(cfg.model_dump_json())), sort_keys=False)
    (out / "compare.yaml").write_text(text)
    budget = Budget(cfg.budget.evaluations, cfg.budget.seconds, cfg.budget.cost)
    status: dict[str, str] = {}
    tasks: list[str | None] = list(cfg.tasks) if cfg.tasks else [None]
    for task in tasks:
        prefix = cfg.name if len(tasks) == 1 else f"{cfg.name}/{task}"
        groups: dict[str | None, list[RunStrategy]] = {}
        for s in cfg.strategies:
            groups.setdefault(s.space, []).append(s)
        for entries in groups.values():
            study_cfg = cfg.study_for(entries[0], task)
            prepared = prepare(study_cfg, progress=progress, loaded=loaded)
            seed_everything(cfg.study.seed)
            status.update(
                run_matrix(
                    prepared.space,
                    prepared.objective,
                    run_specs(entries, cfg.seeds),
                    budget,
                    url,
                    prefix,
                    study_cfg.fingerprint(ignore=("budget", "storage", "scoring", "strategy")),
                    progress=progress,
                    attrs={"threshold": cfg.threshold, "task": task},
                    baselines=prepared.baselines,
                )
            )
        where = out if len(tasks) == 1 else out / str(task)
        write_report(url, where, threshold=cfg.threshold, name=prefix)
    if len(tasks) > 1:
        write_index(out, cfg.name, [str(t) for t in tasks])
    return status


def cmd_compare(args: argparse.Namespace) -> int:
    from blackbox.study.rundir import check_out_dir

    cfg = load_compare(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    check_out_dir(out)
    if cfg.storage:
        from blackbox.study.storage import probe_storage

        probe_storage(cfg.storage)  # before the model loads
    try:
        status = run_compare(cfg, out, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            f"\nblackbox: interrupted; finished batches are stored in {out}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    done = sum(v == "done" for v in status.values())
    print(f"{done} run(s) done, {len(status) - done} skipped; report: {out / 'report.md'}")
    return 0


def register(sub: Any) -> None:
    """Add ``compare`` to the CLI's subparsers."""
    p = sub.add_parser(
        "compare",
        help="run a strategies x seeds comparison on one budget, then write report.md",
        description="Run every (strategy, seed) pair of a compare config against one budget "
        "(forward-pass equivalents) into one Optuna storage; resumes and extends.",
    )
    from blackbox.arguments import add_config_arguments

    add_config_arguments(
        p, "compare YAML (see studies/compare_*.yaml)", "seeds=[0,1,2,3]", "runs/<study name>"
    )
    p.set_defaults(handler=cmd_compare)
