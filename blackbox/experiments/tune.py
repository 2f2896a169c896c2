"""``blackbox tune CONFIG``: an Optuna study whose trials are whole inner runs.

Each outer trial samples strategy settings (for example PSO's ``c1``, ``c2``, ``w`` and swarm
``population``, or nevergrad's ``sigma``) from the ranges in the config, runs the inner study on
the shared space and objective (prepared once) with the inner budget, and returns the inner run's
best search score.  After every generation the best-so-far is reported at the budget checkpoint
it has passed (``tune.checkpoints`` equal parts of the budget, so trials with different
populations report at comparable steps), and the pruner (median, Hyperband, ...) may stop the
trial.  The best settings are written as a ready study config (``tuned.yaml``).

Config (YAML)::

    study: {...}            # a full study config: its strategy (name, fixed settings) and
                            # budget are the inner run's
    tune:
      trials: 16
      sampler: tpe          # tpe, random, cmaes, gp
      pruner: median        # median, hyperband, successive_halving, none
      pruner_settings: {n_startup_trials: 3}
      checkpoints: 6
      params:
        c1: {low: 0.1, high: 2.5}
        population: {low: 4, high: 12, int: true}
        topology: {choices: [global, local]}
    storage: null           # default sqlite:///OUT/tune.db (studies <name> and <name>/trial<k>)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
import yaml
from optuna.trial import TrialState
from pydantic import Field, ValidationError, model_validator

from blackbox.config import (
    ConfigError,
    Strict,
    StudyConfig,
    apply_overrides,
    format_validation_error,
    read_yaml,
)
from blackbox.config.schema import study_schema
from blackbox.experiments.compare import stop_at_cost
from blackbox.masking import masked
from blackbox.sections import StorageURL

if TYPE_CHECKING:  # torch, transformers and the strategies load when a study runs
    from blackbox.study.runner import Budget, Progress

POPULATION = "population"  # the one tunable that is not a strategy setting


class ParamRange(Strict):
    """A searched setting: a float/int range (``low``, ``high``, ``log``, ``int``) or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    int: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either non-empty choices or low and high")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("give low <= high (or choices)")
        elif self.log and self.low <= 0:
            raise ValueError("log ranges need low > 0")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.int:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


class TuneSettings(Strict):
    """How the outer study runs."""

    trials: int = Field(16, ge=1, description="outer trials (whole inner runs) in total")
    sampler: Literal["tpe", "random", "cmaes", "gp"] = "tpe"
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    pruner_settings: dict[str, Any] = Field(default_factory=dict)
    checkpoints: int = Field(6, ge=1, description="intermediate values per inner run")
    seed: int = 0
    record_inner: bool = Field(True, description="store inner evaluations in the storage")
    params: dict[str, ParamRange] = Field(min_length=1)


class TuneConfig(Strict):
    """A tune: the inner study config and the outer study's settings."""

    study: StudyConfig
    tune: TuneSettings
    storage: StorageURL | None = None


def load_tune(path: str | Path, overrides: list[str] | None = None) -> TuneConfig:
    """Read, override and validate a tune config (one-line :class:`ConfigError`)."""
    data = apply_overrides(read_yaml(path), overrides or [])
    try:
        cfg = TuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TuneConfig)) from None
    from blackbox.strategies import get_strategy_class, settings_fields

    try:
        allowed = settings_fields(get_strategy_class(cfg.study.strategy.name))
    except ValueError as exc:
        raise ConfigError(f"config: study.strategy.name: {exc}") from None
    for name in cfg.tune.params:
        if name != POPULATION and name not in allowed:
            raise ConfigError(
                f"config: tune.params.{name}: not a setting of {cfg.study.strategy.name!r}; "
                f"allowed: {', '.join([POPULATION, *sorted(allowed)])}"
            )
    return cfg


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The outer study's sampler by name."""
    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
    }
    return samplers[name]()


def make_pruner(name: str, checkpoints: int, **settings: Any) -> optuna.pruners.BasePruner:
    """The outer study's pruner by name (``settings`` go to its constructor)."""
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**settings)
        if name == "hyperband":
            settings = {"min_resource": 1, "max_resource": checkpoints, **settings}
            return optuna.pruners.HyperbandPruner(**settings)
        if name == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**settings)
        return optuna.pruners.NopPruner()
    except TypeError as exc:
        raise ConfigError(f"config: tune.pruner_settings: {exc}") from None


def checkpoint_reporter(
    trial: optuna.Trial, budget: Budget, checkpoints: int
) -> Callable[[Progress], None]:
    """Report best-so-far at each budget checkpoint passed; raise TrialPruned when told to.

    The budget unit is cost (forward-pass equivalents) if set, else evaluations, else seconds;
    step ``k`` (1..checkpoints) means ``k/checkpoints`` of the budget is spent.
    """
    unit, limit = next(
        (u, v)
        for u, v in (
            ("cost", budget.cost),
            ("evaluations", budget.evaluations),
            ("seconds", budget.seconds),
        )
        if v is not None
    )
    state = {"step": 0}
    stop = stop_at_cost(budget)

    def callback(p: Progress) -> None:
        stop(p)
        spent = float(getattr(p, unit))
        step = min(checkpoints, int(math.floor(spent / limit * checkpoints + 1e-9)))
        if step > state["step"] and math.isfinite(p.best):
            state["step"] = step
            trial.report(p.best, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at checkpoint {step}/{checkpoints}")

    return callback


def _fail_stale(study: optuna.Study) -> None:
    """Mark trials left RUNNING by a killed process as failed (one tune process per study)."""
    from blackbox.optuna_internals import storage_of, trial_id

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage_of(study).set_trial_state_values(trial_id(t), TrialState.FAIL)


def tune_runs(
    space: Any,
    objective: Any,
    strategy: str,
    population: int,
    fixed: dict[str, Any],
    inner_seed: int,
    budget: Budget,
    settings: TuneSettings,
    storage: str | optuna.storages.BaseStorage,
    name: str,
    fingerprint: str = "",
    make: Callable[..., Any] | None = None,
    progress: bool = False,
    baselines: dict[str, Any] | None = None,
) -> optuna.Study:
    """Run (or resume) the outer study until it holds ``settings.trials`` finished trials.

    Args:
        space: the search space shared by every inner run.
        objective: the objective shared by every inner run (its repeat cache is emptied).
        strategy: the inner strategy's registered name.
        population: its population unless ``population`` is tuned.
        fixed: its settings that are not tuned.
        inner_seed: the inner strategy seed (the same for every trial).
        budget: the inner run's budget.
        settings: the outer study's settings.
        storage: storage URL or object for the outer study (and inner runs if recorded).
        name: the outer study's name; inner runs are ``name/trial<k>``.
        fingerprint: the inner study config's fingerprint.
        make: strategy factory (default :func:`~blackbox.strategies.make_strategy`).
        progress: show inner progress bars.
        baselines: reference candidates every inner run scores first (default: the space's).
    """
    from blackbox.experiments.compare import reset_objective
    from blackbox.strategies import make_strategy
    from blackbox.study.runner import Budget, Runner
    from blackbox.study.storage import make_storage, open_study

    make = make or make_strategy

    store = make_storage(storage) if isinstance(storage, str) else storage
    study = optuna.create_study(
        storage=store,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(settings.sampler, settings.seed),
        pruner=make_pruner(settings.pruner, settings.checkpoints, **settings.pruner_settings),
    )
    study.set_user_attr("kind", "tune")
    study.set_user_attr("strategy", strategy)
    _fail_stale(study)

    def run_trial(trial: optuna.Trial) -> float:
        chosen = {k: r.suggest(trial, k) for k, r in settings.params.items()}
        pop = int(chosen.pop(POPULATION, population))
        strat = make(strategy, space.box, seed=inner_seed, population=pop, **fixed, **chosen)
        inner_name = f"{name}/trial{trial.number}"
        if settings.record_inner:
            key = json.dumps(
                [fingerprint, strategy, pop, fixed, chosen, inner_seed], sort_keys=True
            )
            fp = hashlib.sha256(key.encode()).hexdigest()[:16]
            inner = open_study(store, inner_name, space.box, fp)
            for k, v in {
                "compare": f"{name}/inner",
                "label": f"trial{trial.number}",
                "strategy": strategy,
                "seed": inner_seed,
            }.items():
                inner.set_user_attr(k, v)
        else:
            inner = optuna.create_study(direction="maximize")
        run_budget = Budget(budget.evaluations, budget.seconds, budget.cost)
        reset_objective(objective)
        summary = Runner(
            space,
            objective,
            strat,
            inner,
            run_budget,
            heldout_split=None,
            progress=progress,
            on_generation=checkpoint_reporter(trial, run_budget, settings.checkpoints),
            baselines=baselines,
        ).run()
        trial.set_user_attr("evaluations", summary.evaluations)
        trial.set_user_attr("cost", summary.search_cost)
        trial.set_user_attr("inner_study", inner_name if settings.record_inner else None)
        return summary.best.value if summary.best is not None else math.nan

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = settings.trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:
        study.optimize(run_trial, n_trials=remaining, catch=())
    return study


def tuned_config(cfg: StudyConfig, best_params: dict[str, Any]) -> StudyConfig:
    """The study config with the tuned population and settings (a ready ``blackbox run``)."""
    params = dict(best_params)
    population = int(params.pop(POPULATION, cfg.strategy.population))
    strategy = cfg.strategy.model_copy(
        update={"population": population, "settings": {**cfg.strategy.settings, **params}}
    )
    data = cfg.resolved()
    data["name"] = f"{cfg.name}_tuned"
    data["strategy"] = json.loads(strategy.model_dump_json())
    return study_schema().model_validate(data)


def trials_markdown(study: optuna.Study) -> str:
    """A Markdown table of the outer trials (best first)."""
    rows = sorted(
        study.get_trials(deepcopy=False),
        key=lambda t: (t.value is None, -(t.value or 0.0)),
    )
    lines = [
        "| trial | state | best score | last checkpoint | settings |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    for t in rows:
        value = "-" if t.value is None else f"{t.value:.4f}"
        step = max(t.intermediate_values) if t.intermediate_values else "-"
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
        )
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | {step} | {params} |")
    return "\n".join(lines) + "\n"


def run_tune(cfg: TuneConfig, out: Path, progress: bool = True) -> tuple[optuna.Study, Path]:
    """Prepare once, run the outer study into ``out``; write ``tuned.yaml`` and ``tune.md``."""
    from blackbox.study.pipeline import prepare
    from blackbox.study.rundir import lock_dir, seed_everything
    from blackbox.study.runner import Budget

    prepared = prepare(cfg.study, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    lock_dir(out)
    url = cfg.storage or f"sqlite:///{(out / 'tune.db').resolve()}"
    seed_everything(cfg.study.seed)
    s = cfg.study
    study = tune_runs(
        prepared.space,
        prepared.objective,
        s.strategy.name,
        s.strategy.population,
        {k: v for k, v in s.strategy.settings.items() if k not in cfg.tune.params},
        s.seed,
        Budget(s.budget.evaluations, s.budget.seconds, s.budget.cost),
        cfg.tune,
        url,
        f"tune_{s.name}",
        fingerprint=s.fingerprint(ignore=("budget", "storage", "strategy")),
        progress=progress,
        baselines=prepared.baselines,
    )
    best = study.best_trial
    tuned = tuned_config(cfg.study, best.params)
    path = out / "tuned.yaml"
    header = (
        f"# Tuned by `blackbox tune` ({len(study.trials)} trials, best search score "
        f"{best.value:.4f} in trial {best.number}).\n"
    )
    path.write_text(header + yaml.safe_dump(masked(tuned.resolved()), sort_keys=False))
    pruned = sum(t.state == TrialState.PRUNED for t in study.trials)
    (out / "tune.md").write_text(
        f"# tune_{s.name}\n\n{len(study.trials)} trials ({pruned} pruned by the "
        f"{cfg.tune.pruner} pruner); best settings: {best.params} -> `tuned.yaml`.\n\n"
        + trials_markdown(study)
    )
    return study, path


def cmd_tune(args: argparse.Namespace) -> int:
    from blackbox.study.rundir import check_out_dir

    cfg = load_tune(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"tune_{cfg.study.name}"
    check_out_dir(out)
    if cfg.storage:
        from blackbox.study.storage import probe_storage

        probe_storage(cfg.storage)  # before the model loads
    study, path = run_tune(cfg, out, progress=not args.no_progress)
    pruned = sum(t.state == TrialState.PRUNED for t in study.trials)
    print(
        f"{len(study.trials)} trials ({pruned} pruned); best {study.best_value:.4f} with "
        f"{study.best_params}; wrote {path}"
    )
    return 0


def register(sub: Any) -> None:
    """Add ``tune`` to the CLI's subparsers."""
    p = sub.add_parser(
        "tune",
        help="tune a strategy's settings with an Optuna study of whole inner runs",
        description="Each trial is a whole inner run; best-so-far is reported at budget "
        "checkpoints so a pruner can stop bad trials; writes tuned.yaml.",
    )
    from blackbox.arguments import add_config_arguments

    add_config_arguments(
        p, "tune YAML (see studies/tune_*.yaml)", "tune.trials=30", "runs/tune_<study name>"
    )
    p.set_defaults(handler=cmd_tune)
