"""Compare strategies fairly: a matrix of strategies x seeds on one space, objective and budget.

``blackbox compare CONFIG [--set ...] [--out DIR]`` prepares the model, task, vectors and
requests once (:func:`blackbox.study.prepare`), then runs every (strategy, seed) pair with a
fresh strategy and an empty repeat cache, each against the same budget in forward-pass
equivalents.  Every evaluation of every run is an Optuna trial in one storage (default
``DIR/compare.db``), one study per run named ``<name>/<label>/seed<k>`` and tagged with the
user attributes ``compare``, ``label``, ``strategy``, ``settings``, ``population`` and ``seed``.

Resuming: a run whose study holds its held-out records for the same budget is finished and
skipped; an unfinished run resumes by deterministic replay.  Adding seeds or strategies to the
config and re-running the same command runs only the new pairs.  ``blackbox report DIR``
(:mod:`blackbox.report.compare`) then rebuilds ``report.md`` and its plots from the storage.

Config (YAML)::

    study: {...}            # a study config (blackbox run's schema) without strategy/budget;
                            # its seed fixes the data subsample shared by every run
    strategies:             # one entry per curve
      - {label: pso, name: pso, population: 8, settings: {c1: 0.5}}
      - {label: cma, name: nevergrad, settings: {optimizer: CMA}}
    seeds: [0, 1, 2]        # strategy seeds; every strategy runs once per seed
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
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from blackbox.config import (
    BudgetConfig,
    ConfigError,
    StudyConfig,
    _Strict,
    apply_overrides,
    format_validation_error,
    read_yaml,
)
from blackbox.strategies import make_strategy
from blackbox.study.runner import Budget, Progress, Runner
from blackbox.study.storage import open_study

STORAGE_FILE = "compare.db"


class RunStrategy(_Strict):
    """One strategy of the matrix (a curve in the report)."""

    name: str = Field(description="registered strategy name (pso, nevergrad, optuna, random)")
    label: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.+-]+$", description="curve name; default the strategy name"
    )
    population: int = Field(8, ge=1)
    settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class CompareBudget(BudgetConfig):
    """One budget for every run; ``cost`` (forward-pass equivalents) is the fair unit."""

    evaluations: int | None = Field(None, ge=1)


class CompareConfig(_Strict):
    """A comparison: a study config, strategies, seeds and one budget."""

    study: StudyConfig
    strategies: list[RunStrategy] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    budget: CompareBudget
    threshold: float | None = Field(None, description="report: score to reach")
    storage: str | None = Field(None, description="Optuna storage URL")

    @model_validator(mode="after")
    def _unique(self) -> CompareConfig:
        labels = [s.key for s in self.strategies]
        if len(set(labels)) != len(labels):
            raise ValueError(f"strategies: labels must be unique, got {labels} (set label:)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: must be unique, got {self.seeds}")
        return self

    @property
    def name(self) -> str:
        return self.study.name


def _check_raw(data: dict[str, Any]) -> None:
    study = data.get("study")
    if isinstance(study, dict):
        for key in ("strategy", "budget"):
            if key in study:
                raise ConfigError(
                    f"config: study.{key}: not used by compare; set the top-level "
                    f"{'strategies' if key == 'strategy' else 'budget'} instead"
                )


def validate_compare(data: dict[str, Any]) -> CompareConfig:
    """Validate a compare mapping (one-line :class:`ConfigError`)."""
    _check_raw(data)
    try:
        return CompareConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, CompareConfig)) from None


def load_compare(path: str | Path, overrides: list[str] | None = None) -> CompareConfig:
    """Read, override (``--set study.task.search_size=16``) and validate a compare config."""
    cfg = validate_compare(apply_overrides(read_yaml(path), overrides or []))
    for s in cfg.strategies:  # bad names/settings fail before any model is loaded
        try:
            make_strategy(s.name, _tiny_box(), seed=0, population=s.population, **s.settings)
        except ValueError as exc:
            raise ConfigError(f"config: strategies.{s.key}: {exc}") from None
    return cfg


def _tiny_box() -> Any:
    import numpy as np

    from blackbox.strategies.base import Box

    return Box(np.array([0.0, 0.0]), np.array([1.0, 3.0]), np.array([False, True]), ("a", "b"))


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix."""

    label: str
    strategy: str
    population: int
    settings: dict[str, Any]
    seed: int

    def study_name(self, prefix: str) -> str:
        return f"{prefix}/{self.label}/seed{self.seed}"

    def attrs(self, prefix: str) -> dict[str, Any]:
        return {
            "compare": prefix,
            "label": self.label,
            "strategy": self.strategy,
            "population": self.population,
            "settings": self.settings,
            "seed": self.seed,
        }


def run_specs(strategies: list[RunStrategy], seeds: list[int]) -> list[RunSpec]:
    """Every (strategy, seed) pair, seeds outermost so a partial matrix is balanced."""
    return [
        RunSpec(s.key, s.name, s.population, dict(s.settings), seed)
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
    return any(t.user_attrs.get("kind") == "heldout" for t in study.get_trials(deepcopy=False))


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


def reset_objective(objective: Any, keep: Any = None) -> None:
    """Empty an objective's repeat cache so the next run pays for its own evaluations.

    Entries of the candidate ``keep`` (the space's baseline, which every run scores and no
    run's search budget counts) are kept, so the shared baseline is scored once.
    """
    cache = getattr(objective, "_cache", None)
    if isinstance(cache, dict):
        key = getattr(objective, "key", None)
        kept = key(keep) if keep is not None and callable(key) else object()
        for k in list(cache):
            if not (isinstance(k, tuple) and k and k[-1] == kept):
                del cache[k]
    if hasattr(objective, "cache_hits"):
        objective.cache_hits = 0


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
    make: Callable[..., Any] = make_strategy,
    attrs: dict[str, Any] | None = None,
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
        make: strategy factory (``make_strategy``'s signature).
        attrs: more study user attributes for every run (for example the report threshold).
    """
    from blackbox.study.storage import make_storage

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
        baseline = space.baseline() if hasattr(space, "baseline") else None
        reset_objective(objective, keep=baseline)
        summary = Runner(
            space,
            objective,
            strategy,
            study,
            run_budget,
            progress=progress,
            on_generation=stop_at_cost(run_budget, study),
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
    """Prepare the shared model/task/space/objective once and run the matrix into ``out``."""
    from blackbox.study.pipeline import prepare, seed_everything

    first = cfg.strategies[0]
    study_cfg = cfg.study.model_copy(
        update={
            "strategy": cfg.study.strategy.model_copy(
                update={
                    "name": first.name,
                    "population": first.population,
                    "settings": dict(first.settings),
                }
            )
        }
    )
    prepared = prepare(study_cfg, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    url = cfg.storage or f"sqlite:///{(out / STORAGE_FILE).resolve()}"
    text = yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)
    (out / "compare.yaml").write_text(text)
    seed_everything(cfg.study.seed)
    budget = Budget(cfg.budget.evaluations, cfg.budget.seconds, cfg.budget.cost)
    status = run_matrix(
        prepared.space,
        prepared.objective,
        run_specs(cfg.strategies, cfg.seeds),
        budget,
        url,
        cfg.name,
        cfg.study.fingerprint(ignore=("budget", "storage", "scoring", "strategy")),
        progress=progress,
        attrs={"threshold": cfg.threshold},
    )
    from blackbox.report.compare import write_report

    write_report(url, out, threshold=cfg.threshold, name=cfg.name)
    return status


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = load_compare(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
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
    from blackbox.cli import add_config_arguments

    add_config_arguments(
        p, "compare YAML (see studies/compare_*.yaml)", "seeds=[0,1,2,3]", "runs/<study name>"
    )
    p.set_defaults(handler=cmd_compare)
