"""One pipeline for every study: config -> model -> objective -> space -> strategy -> runner ->
finishing step -> result.

``prepare(config)`` checks everything that needs no model first (the combination of space,
objective and strategy, strategy settings, files), then loads the model and builds the
objective, the space and the strategy from their registries (writes nothing);
``execute(prepared, run_dir)`` runs or resumes the study into ``run_dir``, re-scores the best
and the baselines on the held-out split, runs the space's finishing step and writes
``result.json`` and plots.

    blackbox run studies/steer_rotten_tomatoes.yaml     # prepare + execute
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from blackbox.api import Problem
from blackbox.config.rules import settings_field
from blackbox.config.schema import StudyConfig
from blackbox.errors import UserError
from blackbox.finishing.provenance import provenance, statistics
from blackbox.masking import mask_url
from blackbox.sections import ConfigError
from blackbox.staging import atomic_write
from blackbox.strategies import make_strategy
from blackbox.strategies.base import dummy_box
from blackbox.study.context import BuildContext
from blackbox.study.racing import Racing
from blackbox.study.rundir import (
    check_run_dir,
    open_run_study,
    save_config,
    seed_everything,
)
from blackbox.study.runner import Budget, Runner, RunSummary, first_cost


@dataclass
class Prepared:
    """Everything a run needs, built once.

    Attributes:
        config: the validated config.
        loaded: the :class:`~blackbox.models.LoadedModel`.
        space, objective, strategy: built from their registries.
        problem: the space bound to the objective.
        baselines: reference candidates scored before the search, by label.
        seconds: set-up time per stage.
        calibration: the standardisation of an internal objective (``None``: raw values).
        context: the build context (the lm-eval task and ``HFLM``, when there is a task).
    """

    config: StudyConfig
    loaded: Any
    space: Any
    objective: Any
    strategy: Any
    problem: Problem
    baselines: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, float] | None = None
    context: BuildContext | None = None

    @property
    def task(self) -> Any:
        return None if self.context is None else self.context._task

    @property
    def lm(self) -> Any:
        return None if self.context is None else self.context._lm


def strategy_settings(cfg: StudyConfig) -> dict[str, Any]:
    """The strategy's settings, with nevergrad's budget hint defaulting to the evaluations."""
    settings = dict(cfg.strategy.settings)
    if cfg.strategy.name == "nevergrad" and settings.get("budget") is None:
        settings["budget"] = cfg.budget.evaluations  # lets NGOpt pick its method for the budget
    return settings


def check(cfg: StudyConfig) -> None:
    """Every check that needs no model: combination rules, strategy settings, files."""
    from blackbox.config.rules import check_study

    check_study(cfg)
    try:
        make_strategy(
            cfg.strategy.name,
            dummy_box(),
            seed=cfg.seed,
            population=cfg.strategy.population,
            **cfg.strategy.settings,
        )
    except ValueError as exc:
        raise ConfigError(f"config: {settings_field(cfg.strategy.name, str(exc))}") from None
    if cfg.space.type == "steering":
        for v in cfg.space.vectors:
            if v.file is not None and not Path(v.file).is_file():
                raise ConfigError(f"config: space.vectors.{v.name}.file: {v.file!r} does not exist")
    o = cfg.objective
    for name in ("file", "direction_file", "prompts_file", "heldout_prompts_file"):
        path = getattr(o, name, None)
        if name == "file" and path and Path(path).is_dir():  # a sae-lens SAE directory
            from blackbox.evals.sae import load_sae_decoder

            try:
                load_sae_decoder(Path(path))
            except ValueError as exc:
                raise ConfigError(f"config: objective.file: {exc}") from None
        elif path and not Path(path).is_file():
            raise ConfigError(f"config: objective.{name}: {path!r} does not exist")
    sc = cfg.space
    from blackbox.models.loading import peek_config

    mc = peek_config(cfg.model.name)  # the saved config.json only: no weight is loaded
    if mc is not None:
        check_layers(cfg, mc)
    if getattr(sc, "subspace_dim", None) is not None:
        width = getattr(mc, "hidden_size", None) if mc is not None else None
        if width:
            from blackbox.search_spaces.soft_prompt.space import check_subspace

            check_subspace(sc, int(width))
    if cfg.storage:
        from blackbox.study.storage import probe_storage

        probe_storage(cfg.storage)
    from blackbox.study.side_effects import check_side_effects

    check_side_effects(cfg)


def config_layers(model_config: Any) -> int | None:
    """The number of decoder blocks a ``transformers`` config declares (``None``: unknown)."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else None
    for source in (text, model_config):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(source, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_layers(cfg: StudyConfig, model_config: Any) -> None:
    """``space.layers``, ``space.fixed_layers`` and ``objective.layer`` against the layers the
    model's saved config declares, before the model loads (the same messages as after it)."""
    n = config_layers(model_config)
    if n is None:
        return
    sc = cfg.space
    if sc.type == "steering":
        sc.check_layers(n)
    layer = getattr(cfg.objective, "layer", None)
    if isinstance(layer, int) and not 0 <= layer < n:
        raise ConfigError(f"config: objective.layer: {layer} is outside 0..{n - 1}")


def _baselines(space: Any, objective: Any) -> dict[str, Any]:
    """The space's baselines the objective can score (no empty prompt on empty documents)."""
    out = dict(space.baselines()) if hasattr(space, "baselines") else {}
    items = getattr(objective, "_splits", {})
    empty = any(
        not p and not q for v in items.values() if hasattr(v, "pre") for p, q in zip(v.pre, v.post)
    )
    if empty:
        out.pop("no prompt", None)
    return out


def _check_chat_before_load(cfg: StudyConfig, task: Any) -> None:
    """``task.chat_template: true``: a perplexity task, or a model whose tokenizer (read from
    disk without the weights, when it is there) has no chat template, is refused now."""
    from blackbox.evals.lm_eval_chat import check_chat
    from blackbox.models.loading import peek_tokenizer

    try:
        check_chat(task, SimpleNamespace(tokenizer=peek_tokenizer(cfg.model.name) or _ANY_CHAT))
    except UserError as exc:
        raise ConfigError(f"config: task.chat_template: {exc}") from None


_ANY_CHAT = SimpleNamespace(chat_template="unknown until the model loads")
"""A stand-in tokenizer when the model is not on disk yet: the check waits for the model."""


def check_with_task(cfg: StudyConfig, task: Any) -> None:
    """What the loaded lm-eval task and the objective's class can refuse before the model
    loads: a metric the task does not have, a cost budget below one candidate's search
    documents (:func:`check_budget`), racing an objective with no value per document."""
    from blackbox.evals.registry import OBJECTIVES

    cls = OBJECTIVES.get(cfg.objective.type)
    races, metric = cls.traits.per_document, cls.metric
    if cls.traits.needs_task and task is not None:
        from blackbox.evals.lm_eval_metrics import check_metric, metric_per_document

        metric = cfg.task.metric
        try:
            check_metric(task, metric)
        except ValueError as exc:
            raise ConfigError(f"config: task.metric: {str(exc).split(': ', 1)[-1]}") from None
        races = metric_per_document(task, metric)
        kind = task.config.output_type
        if cfg.task.max_gen_toks is not None and kind != "generate_until":
            raise ConfigError(
                f"config: task.max_gen_toks: task {cfg.task.name!r} does not generate "
                f"({kind}); allowed: null, or a generative (generate_until) task"
            )
        if cfg.task.chat_template:
            _check_chat_before_load(cfg, task)
        gen_kwargs = task.config.generation_kwargs or {}
        if kind == "generate_until" and gen_kwargs.get("do_sample"):
            raise ConfigError(
                f"config: task.name: task {cfg.task.name!r} samples its generations "
                "(do_sample: true), so its scores are not reproducible; allowed: tasks with "
                "greedy generation"
            )
        if kind in ("generate_until", "loglikelihood_rolling"):
            from blackbox.strategies import STRATEGIES

            needs = STRATEGIES.get(cfg.strategy.name).traits.needs_gradients
            if needs:
                raise ConfigError(
                    f"config: strategy.name: {cfg.strategy.name!r} follows the gold choice's "
                    f"gradient, and task {cfg.task.name!r} has no choices ({kind}); allowed: "
                    "a gradient-free strategy (pso, nevergrad, optuna, random, token_ga)"
                )
    if cls.traits.needs_task and task is not None and cfg.task is not None:
        from blackbox.evals.lm_eval_splits import split_names

        split = split_names(task, cfg.task.search_split, cfg.task.heldout_split)[0]
        n = min(cfg.task.search_size, len(task.dataset[split]))
        racing = racing_of(cfg)
        check_budget(cfg, n if racing is None else racing.stops(n)[0], n, at_least=True)
    if cfg.scoring.racing is not None and not races:
        raise ConfigError(
            f"config: scoring.racing: objective {cfg.objective.type!r} (metric {metric!r}) has "
            "no value per document to race on; racing works for metrics that are means over "
            "documents (lm-eval accuracies and gold_logprob, classification, behaviour, "
            "reference, activation objectives)"
        )


def check_budget(cfg: StudyConfig, one: float, n_docs: int, at_least: bool = False) -> None:
    """Refuse a cost budget that pays for no candidate: a new candidate costs ``one``
    forward-pass equivalents (``at_least``: a lower bound, known before the model loads) on
    ``n_docs`` search documents."""
    cost = cfg.budget.cost
    if cost is None or cost >= one:
        return
    how = f"{one:g}" if not at_least else f"at least {one:g}"
    first = " (racing's first slice)" if cfg.scoring.racing is not None else ""
    raise ConfigError(
        f"config: budget.cost: {cost:g} forward-pass equivalents pay for no candidate; one "
        f"costs {how}{first} on the {n_docs} search documents; allowed: budget.cost >= {one:g}"
    )


def prepare(
    cfg: StudyConfig, progress: bool = True, loaded: Any = None, run_dir: Path | None = None
) -> Prepared:
    """Validate and build model, objective, space and strategy (writes nothing).

    ``loaded``: a model already loaded for this config (comparisons share one).
    ``run_dir``: where the run will be stored; with ``model.dtype: auto`` a run stored there
    resumes in the precision it started in (nothing is timed).  Otherwise ``auto`` is resolved
    at load and ``cfg.model.dtype`` names the precision that ran (the saved config and the
    fingerprint say it).
    """
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval
    from blackbox.evals.registry import OBJECTIVES
    from blackbox.models import load_model
    from blackbox.search_spaces.registry import SPACES

    check(cfg)
    task = None
    t0 = time.perf_counter()
    if cfg.task is not None:  # a bad task name or data must not cost a model load
        from blackbox.evals.lm_eval_generate import cap_generation
        from blackbox.evals.lm_eval_splits import load_task

        task = load_task(cfg.task.name)
        cap_generation(task, cfg.task.max_gen_toks)
    from blackbox.study.side_effects import load_guard_tasks

    guard_tasks = load_guard_tasks(cfg)  # before the model, as the task
    task_seconds = time.perf_counter() - t0
    check_with_task(cfg, task)
    if run_dir is not None:
        from blackbox.study.rundir import adopt_saved_dtype

        adopt_saved_dtype(cfg, run_dir)
    if loaded is None:
        loaded = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    if cfg.model.dtype == "auto":
        cfg.model.dtype = loaded.dtype  # type: ignore[assignment]
    ctx = BuildContext(
        cfg, loaded, {"task": task_seconds, "model": loaded.load_seconds}, _task=task
    )
    choice = getattr(loaded, "precision", None)
    if choice is not None and choice.check is not None and not choice.check["passed"]:
        ctx.warn(f"model.dtype auto: {choice.reason}")  # a faster path refused: loud
    t0 = time.perf_counter()
    with quiet_lm_eval():
        objective = OBJECTIVES.get(cfg.objective.type).from_config(cfg.objective, ctx)
    ctx.seconds["objective"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    space = SPACES.get(cfg.space.type).from_config(cfg.space, ctx)
    ctx.seconds["space"] = time.perf_counter() - t0
    if space.traits.vocabulary and hasattr(objective, "enable_fluency"):
        objective.enable_fluency()
    racing = racing_of(cfg)
    if racing is not None and len(racing.stops(n := objective.n_examples("search"))) == 1:
        ctx.warn(
            f"scoring.racing.schedule {list(racing.schedule)} has no look below the {n} search "
            "documents, so every candidate is scored on all of them (racing stops nothing)"
        )
    if cfg.side_effects:  # KL, guard tasks, fluency as side columns (blackbox.evals.side_effects)
        from blackbox.evals.side_effects import build as with_side_effects

        t0 = time.perf_counter()
        objective = with_side_effects(cfg, ctx, objective, space, guard_tasks)
        ctx.seconds["side_effects"] = time.perf_counter() - t0
    check_budget(cfg, first_cost(objective, "search", racing), objective.n_examples("search"))
    problem = Problem(space, objective)
    calibration = None
    o = cfg.objective
    if getattr(o, "standardise", False) and getattr(o, "calibrate", 0):
        t0 = time.perf_counter()
        try:
            calibration = objective.calibrate(problem, o.calibrate, cfg.seed + 12345)
        except ValueError as exc:
            raise ConfigError(f"config: objective.calibrate: {exc}") from None
        ctx.seconds["calibration"] = time.perf_counter() - t0
    strategy = make_strategy(
        cfg.strategy.name,
        space.box,
        seed=cfg.seed,
        population=cfg.strategy.population,
        **strategy_settings(cfg),
    )
    if cfg.side_effects:
        strategy.set_objectives(objective.objective_spec)
    return Prepared(
        cfg,
        loaded,
        space,
        objective,
        strategy,
        problem,
        _baselines(space, objective),
        ctx.seconds,
        calibration,
        ctx,
    )


def start_run(p: Prepared, run_dir: Path, progress: bool = True) -> tuple[Any, str, Runner]:
    """Check ``run_dir``, open its study, save the resolved config, seed everything and build
    the :class:`Runner`.  Returns the study, its storage URL and the runner."""
    cfg = p.config
    check_run_dir(cfg, run_dir)
    study, url = open_run_study(cfg, run_dir, p.space.box)
    save_config(cfg, run_dir)
    seed_everything(cfg.seed)
    runner = Runner(
        p.space,
        p.objective,
        p.strategy,
        study,
        Budget(cfg.budget.evaluations, cfg.budget.seconds, cfg.budget.cost),
        search_split="search",
        heldout_split="heldout",
        progress=progress,
        baselines=p.baselines,
        racing=racing_of(cfg),
    )
    return study, url, runner


def racing_of(cfg: StudyConfig) -> Racing | None:
    """The config's racing settings (``None``: off)."""
    r = cfg.scoring.racing
    return None if r is None else Racing(tuple(r.schedule), r.confidence)


def scored(s: Any) -> dict[str, Any] | None:
    """A recorded evaluation for ``result.json``: its score and metrics."""
    if s is None:
        return None
    return {"score": s.value, "metrics": {k: v for k, v in s.metrics.items() if k != "cache_hit"}}


def _warnings(p: Prepared, s: Any) -> list[str]:
    """The run's warnings, with one for a budget spent before a proposal strategy's first
    step (EPO/GCG's random start took it all: the run was random search)."""
    if p.context is None:
        return []
    if getattr(p.strategy, "proposal_steps", None) == 0 and s.evaluations:
        p.context.warn(
            f"budget: the run ended before {p.config.strategy.name}'s first proposal step; its "
            f"random start ({s.evaluations} evaluations, {s.search_cost:g} forward-pass "
            "equivalents) took the whole budget, so this was a random search; raise the budget"
        )
    return list(p.context.warnings)


def scoring_status(objective: Any) -> dict[str, Any]:
    """Which fast paths ran (a failed self-check that switched one off is reported here)."""
    scorer = getattr(objective, "scorer", None)
    splice = getattr(objective, "splice", None)
    out: dict[str, Any] = {}
    fallbacks: dict[str, str] = {}
    if scorer is not None:
        out = {
            "packed_rows": scorer.packing,
            "trunk_resume": scorer.resume_ok,
            "branch": getattr(scorer, "branch_ok", None),
        }
        fallbacks.update(getattr(scorer, "fallbacks", {}) or {})
    if splice is not None:  # prompts: the cached document prefix (None: never needed)
        out["pre_cache"] = getattr(splice, "cache_ok", None)
        fallbacks.update(getattr(splice, "fallbacks", {}) or {})
    if fallbacks:  # a fast path switched off by its self-check, and why: loud, kept
        out["fallbacks"] = dict(fallbacks)
    if scorer is None:
        return out
    gen = getattr(objective, "gen_stats", None)
    if gen is not None and gen.rows:  # a generative task: what decoding did
        out["generation"] = {
            "shared_prefill": gen.shared,
            "rows_per_call": getattr(objective, "gen_rows", None),
            "rows": gen.rows,
            "generated_tokens": gen.generated_tokens,
            "prefill_tokens": gen.prefill_tokens,
            "padded_prefill_tokens": gen.padded_prefill_tokens,
            "model_calls": gen.calls,
            "prefill_seconds": round(gen.prefill_s, 3),
            "decode_seconds": round(gen.decode_s, 3),
        }
    return out


def precision_record(p: Prepared) -> dict[str, Any]:
    """``result.json -> precision``: which dtype ran and why (``model.dtype: auto`` measured it,
    took it from the stored run, or the config named it)."""
    chosen = getattr(p.loaded, "precision", None)
    if chosen is not None:
        return dict(chosen.to_dict())
    adopted = p.config.model._adopted
    requested = "auto" if adopted else p.config.model.dtype
    why = adopted or "named in the config"
    return {"requested": requested, "chosen": p.config.model.dtype, "reason": why}


def result_dict(p: Prepared, s: RunSummary, url: str) -> dict[str, Any]:
    """The sections of ``result.json`` every space shares."""
    cfg = p.config
    best = s.best
    splits = {k: p.objective.n_examples(k) for k in p.objective.splits}
    out: dict[str, Any] = {
        "study_name": cfg.name,
        "model": cfg.model.name,
        "dtype": cfg.model.dtype,
        "precision": precision_record(p),
        "space": cfg.space.type,
        "objective": cfg.objective.type,
        "task": cfg.task.name if cfg.task else None,
        "chat_template": cfg.task.chat_template if cfg.task else None,  # lm-eval's chat mode
        "metric": p.objective.metric,
        "strategy": cfg.strategy.name,
        "strategy_settings": cfg.strategy.settings,
        "seed": cfg.seed,
        "splits": splits,
        "baselines": {
            k: {"search": scored(v), "heldout": scored(s.heldout_baselines.get(k))}
            for k, v in s.baselines.items()
        },
        "baseline": {"search": scored(s.baseline), "heldout": scored(s.heldout_baseline)},
        "best": {
            "search": scored(best),
            "heldout": scored(s.heldout_best),
            "candidate": None if best is None else p.space.describe(best.candidate),
        },
        "evaluations": s.evaluations,
        "resumed_evaluations": s.resumed,
        "cache_hits": s.cache_hits,
        "cost_forward_passes": s.search_cost,
        "wall_seconds": round(s.wall_seconds, 2),
        "setup_seconds": {k: round(v, 2) for k, v in p.seconds.items()},
        "calibration": p.calibration,
        "scoring": scoring_status(p.objective),
        "storage": mask_url(url),
        "warnings": _warnings(p, s),
        "statistics": statistics(s, cfg.seed),
    }
    if s.stalled:
        out["stopped"] = (
            "the strategy asked only candidates it had already scored for "
            "50 generations (they cost nothing), so the cost budget could not be spent"
        )
    r = cfg.scoring.racing
    if r is not None:
        out["racing"] = {
            "schedule": list(r.schedule),
            "confidence": r.confidence,
            "stopped_candidates": s.raced_stops,
            "cut_by_budget": s.budget_cuts,
            "what_strategies_are_told": "a stopped candidate's mean on the documents it saw "
            "(Optuna trial PRUNED, intermediate value at that many documents); so is a "
            "candidate of the last generation cut when the cost budget ran out (raced.by = "
            "budget); the best is always scored on every search document",
        }
    spec = getattr(p.objective, "spec", None)
    if cfg.task is not None and callable(spec) and {"search", "heldout"} <= set(p.objective.splits):
        from blackbox.evals.lm_eval_splits import describe_documents

        specs = {k: spec(k) for k in ("search", "heldout")}
        out["documents"] = describe_documents(specs, cfg.task, cfg.seed)
    completions = getattr(p.objective, "reference_completions", None)
    if completions:
        out["reference_completions"] = completions
    return out


def execute(p: Prepared, run_dir: Path, progress: bool = True, wrap: Any = None) -> dict[str, Any]:
    """Run or resume the study into ``run_dir``; returns the result dict (also saved).

    ``wrap``: a function turning the built :class:`Runner` into another one (``--remote``:
    :func:`blackbox.distributed.remote.remote_wrapper`, generations scored by workers)."""
    from blackbox.finishing.plots import plot_run
    from blackbox.search_spaces.registry import SPACES

    study, url, runner = start_run(p, run_dir, progress)
    if wrap is not None:
        runner = wrap(runner)
    summary = runner.run()
    result = result_dict(p, summary, url)
    if p.config.side_effects:  # the front; the chosen member is the one exported
        from blackbox.study.side_effects import front_section

        result["side_effects"], summary = front_section(p, summary, study, run_dir)
    finisher = SPACES.get(p.config.space.type).finisher
    result.update(finisher.finish(p, summary, study, run_dir, progress))
    exported = "chosen" if (result.get("side_effects") or {}).get("chosen") else "best"
    prov = provenance(p, run_dir, list(result.get("files") or []), exported)
    if prov is not None:
        result["provenance"] = prov
    atomic_write(run_dir / "result.json", json.dumps(result, indent=2, default=float))
    baseline = summary.baseline.value if summary.baseline is not None else None
    plot_run(study, p.space, run_dir, baseline)
    return result


def run_config(cfg: StudyConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Prepare and execute (the CLI's ``run``)."""
    return execute(prepare(cfg, progress=progress, run_dir=run_dir), run_dir, progress=progress)
