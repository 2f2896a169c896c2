"""The main job: optimise steering for an lm-eval task, from a validated config to a run dir.

``prepare(config)`` validates everything that can fail (strategy, task, model, layers, vector
files) before anything is written; ``execute(prepared, run_dir)`` runs or resumes the study and
writes ``config.yaml``, ``study.db`` (unless another storage is given), ``result.json``, plots
and the lm-eval ``steered.pt`` export.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from blackbox.config import ConfigError, StudyConfig
from blackbox.evals.lm_eval_task import LMEvalObjective, TaskSplitSpec
from blackbox.finishing.steering import export_steered
from blackbox.models.layers import num_layers
from blackbox.search_spaces.steering import SteeringSpace
from blackbox.search_spaces.steering_vectors import (
    cached_contrastive_vector,
    load_vector_file,
    unembedding_vector,
)
from blackbox.strategies import make_strategy
from blackbox.study.runner import Budget, Runner, RunSummary
from blackbox.study.storage import StorageError, mask_url, open_study

TOKEN_ONLY = ("epo", "gcg", "token_ga")
"""Strategies that need a token space (gradient proposals over a vocabulary)."""
SOFT_ONLY = ("adam",)
"""Strategies that need a soft-prompt space (gradients with respect to embeddings)."""


@dataclass
class Prepared:
    """Everything a run needs, built once."""

    config: StudyConfig
    loaded: Any  # blackbox.models.LoadedModel
    lm: Any  # lm_eval HFLM around the loaded model
    task: Any
    space: SteeringSpace
    objective: LMEvalObjective
    strategy: Any
    seconds: dict[str, float]


def _split_names(task: Any, cfg: StudyConfig) -> tuple[str, str]:
    """Resolve the search and held-out split names of a task."""
    c = task.config
    available = [s for s in (c.training_split, c.validation_split, c.test_split) if s]
    search = cfg.task.search_split or c.training_split or c.test_split or c.validation_split
    heldout = cfg.task.heldout_split or c.test_split or c.validation_split
    for field, split in (("search_split", search), ("heldout_split", heldout)):
        if split not in available:
            raise ConfigError(
                f"config: task.{field}: {split!r} is not a split of this task; allowed: {available}"
            )
    return search, heldout


def _docs_count(task: Any, split: str) -> int:
    return len(task.dataset[split])


def _subsample(
    n_total: int,
    size: int | None,
    seed: int,
    exclude: set[int] | None = None,
    labels: list[Any] | None = None,
) -> list[int]:
    """A seeded subsample of document indices; with ``labels``, equal numbers per label.

    Stratifying the search split matters for classification tasks: on an unbalanced sample a
    constant answer scores the majority share, and the search learns to flip the model's
    default answer instead of making it discriminate.
    """
    pool = [i for i in range(n_total) if not exclude or i not in exclude]
    rng = np.random.default_rng(seed)
    if size is None or size >= len(pool):
        return pool
    if labels is None:
        return sorted(int(i) for i in rng.choice(pool, size=size, replace=False))
    groups: dict[str, list[int]] = {}
    for i in pool:
        groups.setdefault(str(labels[i]), []).append(i)
    keys = sorted(groups)
    chosen: list[int] = []
    for k, key in enumerate(keys):
        want = size // len(keys) + (1 if k < size % len(keys) else 0)
        members = groups[key]
        take = min(want, len(members))
        chosen.extend(int(i) for i in rng.choice(members, size=take, replace=False))
    if len(chosen) < size:  # a small class ran out: top up from the rest
        rest = sorted(set(pool) - set(chosen))
        chosen.extend(int(i) for i in rng.choice(rest, size=size - len(chosen), replace=False))
    return sorted(chosen)


def _labels(task: Any, split: str) -> list[Any] | None:
    """Gold target of every document of ``split`` (``None`` if the task has none)."""
    try:
        return [task.doc_to_target(doc) for doc in task.dataset[split]]
    except Exception:
        return None


def build_lm(loaded: Any) -> Any:
    """An lm-eval ``HFLM`` around an already loaded model (used for its tokenisation)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=16, device=loaded.device
    )


def load_task(cfg: StudyConfig) -> Any:
    """The lm-eval ``Task`` named by ``cfg.task.name`` (one-line :class:`ConfigError` if its
    name is unknown or its data cannot be loaded)."""
    from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval

    try:
        with quiet_lm_eval():
            tasks = load_tasks([cfg.task.name])
    except (ValueError, ConfigError):
        raise
    except Exception as exc:  # e.g. datasets failing on an empty or malformed data file
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(
            f"config: task.name: {cfg.task.name!r}: its data cannot be loaded "
            f"({type(exc).__name__}{': ' + first if first else ''}); is a data file empty or malformed?"
        ) from None
    if not tasks:
        raise ConfigError(f"config: task.name: {cfg.task.name!r} holds no task")
    return next(iter(tasks.values()))


def task_splits(task: Any, cfg: StudyConfig) -> dict[str, TaskSplitSpec]:
    """The seeded ``search`` subsample (stratified by gold answer if ``task.stratify``) and the
    ``heldout`` documents (never search documents when both come from one split)."""
    search_split, heldout_split = _split_names(task, cfg)
    n_search_docs = _docs_count(task, search_split)
    if n_search_docs == 0:
        raise ConfigError(
            f"config: task.search_split: split {search_split!r} of {cfg.task.name!r} is empty"
        )
    labels = _labels(task, search_split) if cfg.task.stratify else None
    search_docs = _subsample(n_search_docs, cfg.task.search_size, cfg.seed, labels=labels)
    exclude = set(search_docs) if heldout_split == search_split else None
    heldout_docs = _subsample(
        _docs_count(task, heldout_split), cfg.task.heldout_size, cfg.seed + 1, exclude
    )
    if not heldout_docs:
        raise ConfigError(f"config: task.heldout_split: no documents left in {heldout_split!r}")
    return {
        "search": TaskSplitSpec(search_split, search_docs),
        "heldout": TaskSplitSpec(heldout_split, heldout_docs),
    }


def prepare(cfg: StudyConfig, progress: bool = True) -> Any:
    """Validate and build model, task, vectors, space, objective and strategy (writes nothing).

    Token studies (``space.type: tokens``) are prepared by :mod:`blackbox.study.tokens`.
    """
    if cfg.space.type == "soft_prompt":
        from blackbox.study.soft import prepare_soft

        return prepare_soft(cfg)
    if cfg.strategy.name in SOFT_ONLY:
        raise ConfigError(
            f"config: strategy.name: {cfg.strategy.name!r} works on soft-prompt spaces only"
        )
    if cfg.space.type == "tokens":
        from blackbox.study.tokens import prepare_tokens

        return prepare_tokens(cfg)
    if cfg.strategy.name in TOKEN_ONLY:
        raise ConfigError(
            f"config: strategy.name: {cfg.strategy.name!r} works on token spaces only; "
            "steering studies take pso, nevergrad, optuna or random"
        )
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval
    from blackbox.models import load_model

    seconds: dict[str, float] = {}
    # Cheap checks first: a bad strategy name must not cost a model load.
    make_strategy(
        cfg.strategy.name,
        _dummy_box(),
        seed=cfg.seed,
        population=cfg.strategy.population,
        **cfg.strategy.settings,
    )
    for v in cfg.space.vectors:
        if v.file is not None and not Path(v.file).is_file():
            raise ConfigError(f"config: space.vectors.{v.name}.file: {v.file!r} does not exist")
    t0 = time.perf_counter()
    task = load_task(cfg)
    seconds["task"] = time.perf_counter() - t0
    loaded = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    seconds["model"] = loaded.load_seconds
    model, tok = loaded.model, loaded.tokenizer
    n_layers = num_layers(model)
    lo, hi = cfg.space.layers
    if not 0 <= lo <= hi < n_layers:
        raise ConfigError(
            f"config: space.layers: [{lo}, {hi}] is outside the model's layers; allowed 0..{n_layers - 1}"
        )
    for name, layer in cfg.space.fixed_layers.items():
        if not 0 <= layer < n_layers:
            raise ConfigError(
                f"config: space.fixed_layers.{name}: {layer} is outside 0..{n_layers - 1}"
            )
    t0 = time.perf_counter()
    vectors = []
    hidden = int(model.config.hidden_size)
    for v in cfg.space.vectors:
        if v.file is not None:
            try:
                vectors.append(load_vector_file(Path(v.file), v.name, n_layers, hidden))
            except ValueError as exc:
                raise ConfigError(f"config: space.vectors.{v.name}.file: {exc}") from None
        elif v.unembed is not None:
            try:
                vectors.append(unembedding_vector(model, tok, v.name, *v.unembed))
            except ValueError as exc:
                raise ConfigError(f"config: space.vectors.{v.name}.{exc}") from None
        else:
            vectors.append(
                cached_contrastive_vector(
                    model,
                    tok,
                    f"{cfg.model.name}|{cfg.model.dtype}",
                    v.name,
                    v.concept or [],
                    v.contrast or [],
                    read=cfg.space.read,
                )
            )
    seconds["vectors"] = time.perf_counter() - t0
    try:
        space = SteeringSpace(vectors, (lo, hi), cfg.space.coeff, cfg.space.fixed_layers)
    except ValueError as exc:
        raise ConfigError(f"config: space: {exc}") from None

    with quiet_lm_eval():
        lm = build_lm(loaded)
    splits = task_splits(task, cfg)
    try:
        objective = LMEvalObjective(
            task=task,
            lm=lm,
            splits=splits,
            apply=space.apply,
            lowest_layer=space.lowest_layer,
            metric=cfg.task.metric,
            max_batch_tokens=cfg.scoring.max_batch_tokens,
            key=lambda c: tuple((e.vector, e.layer, round(e.coeff, 6)) for e in c),
            branch=cfg.scoring.branch,
            trunk_cache_mb=cfg.scoring.trunk_cache_mb,
            pack=cfg.scoring.pack,
        )
    except ValueError as exc:
        raise ConfigError(f"config: task.metric: {exc}".replace("objective.metric: ", "")) from None
    t0 = time.perf_counter()
    with quiet_lm_eval():
        objective.prepared("search")
        objective.prepared("heldout")
    seconds["requests"] = time.perf_counter() - t0
    settings = dict(cfg.strategy.settings)
    if cfg.strategy.name == "nevergrad" and settings.get("budget") is None:
        settings["budget"] = cfg.budget.evaluations  # lets NGOpt pick its method for the budget
    strategy = make_strategy(
        cfg.strategy.name,
        space.box,
        seed=cfg.seed,
        population=cfg.strategy.population,
        **settings,
    )
    return Prepared(cfg, loaded, lm, task, space, objective, strategy, seconds)


def _dummy_box():
    from blackbox.strategies.base import Box

    return Box(np.array([0.0, 0.0]), np.array([1.0, 3.0]), np.array([False, True]), ("a", "b"))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch global RNGs (strategies use their own generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def storage_url(cfg: StudyConfig, run_dir: Path) -> str:
    return cfg.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"


def check_run_dir(cfg: StudyConfig, run_dir: Path) -> None:
    """Refuse a run dir that holds a run of a different config (budget changes are fine)."""
    saved = run_dir / "config.yaml"
    if saved.exists():
        from blackbox.config import validate

        try:
            old = validate(yaml.safe_load(saved.read_text()))
        except Exception:
            raise ConfigError(
                f"run dir {str(run_dir)!r}: its config.yaml is unreadable; use another --out"
            ) from None
        if old.fingerprint() != cfg.fingerprint():
            raise ConfigError(
                f"run dir {str(run_dir)!r} holds a run with another config; use another --out "
                "(only budget and storage may change on resume)"
            )


def open_run_study(cfg: StudyConfig, run_dir: Path, box: Any) -> tuple[Any, str]:
    """Create the run dir and open its study; a failed open leaves no run dir behind."""
    url = storage_url(cfg, run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return open_study(url, cfg.name, box, cfg.fingerprint()), url
    except StorageError:
        if created:  # nothing half-written
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def run_header(cfg: Any, s: Any, url: str) -> dict[str, Any]:
    """The ``result.json`` fields every token or soft-prompt run shares (``s``: the runner's
    summary; the storage URL masked)."""
    return {
        "model": cfg.model.name,
        "strategy": cfg.strategy.name,
        "strategy_settings": cfg.strategy.settings,
        "seed": cfg.seed,
        "evaluations": s.evaluations,
        "resumed_evaluations": s.resumed,
        "cost_forward_passes": s.search_cost,
        "wall_seconds": round(s.wall_seconds, 2),
        "storage": mask_url(url),
        "study_name": cfg.name,
    }


def start_run(
    p: Any, run_dir: Path, progress: bool = True, heldout_split: str | None = None
) -> tuple[Any, str, Runner]:
    """Check ``run_dir``, open its study, save the resolved config, seed everything and build
    the :class:`Runner` of a prepared study (any kind: ``p`` has ``config``, ``space``,
    ``objective`` and ``strategy``).  Returns the study, its storage URL and the runner."""
    cfg = p.config
    check_run_dir(cfg, run_dir)
    study, url = open_run_study(cfg, run_dir, p.space.box)
    _atomic_text(run_dir / "config.yaml", yaml.safe_dump(_masked(cfg.resolved()), sort_keys=False))
    seed_everything(cfg.seed)
    runner = Runner(
        p.space,
        p.objective,
        p.strategy,
        study,
        Budget(cfg.budget.evaluations, cfg.budget.seconds, cfg.budget.cost),
        search_split="search",
        heldout_split=heldout_split,
        progress=progress,
    )
    return study, url, runner


def execute(p: Any, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run or resume the study into ``run_dir``; returns the result dict (also saved)."""
    from blackbox.study.soft import PreparedSoft, execute_soft

    if isinstance(p, PreparedSoft):
        return execute_soft(p, run_dir, progress=progress)
    if not isinstance(p, Prepared):
        from blackbox.study.tokens import execute_tokens

        return execute_tokens(p, run_dir, progress=progress)
    study, url, runner = start_run(p, run_dir, progress, heldout_split="heldout")
    summary = runner.run()
    result = result_dict(p, summary, url)
    _atomic_text(run_dir / "result.json", json.dumps(result, indent=2))
    if summary.best is not None:
        export_steered(p.space, summary.best.candidate, p.loaded.model, run_dir / "steered.pt")
    from blackbox.report.run import plot_run

    plot_run(study, p.space, run_dir)
    return result


def _masked(resolved: dict[str, Any]) -> dict[str, Any]:
    if resolved.get("storage"):
        resolved["storage"] = mask_url(resolved["storage"])
    return resolved


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _scored(s: Any) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"score": s.value, "metrics": {k: v for k, v in s.metrics.items() if k != "cache_hit"}}


def result_dict(p: Prepared, s: RunSummary, url: str) -> dict[str, Any]:
    cfg = p.config
    best = s.best
    return {
        "model": cfg.model.name,
        "dtype": cfg.model.dtype,
        "task": cfg.task.name,
        "metric": cfg.task.metric,
        "strategy": cfg.strategy.name,
        "strategy_settings": cfg.strategy.settings,
        "seed": cfg.seed,
        "search_docs": p.objective.n_examples("search"),
        "heldout_docs": p.objective.n_examples("heldout"),
        "baseline": {"search": _scored(s.baseline), "heldout": _scored(s.heldout_baseline)},
        "best": {"search": _scored(best), "heldout": _scored(s.heldout_best)},
        "best_candidate": None if best is None else p.space.describe(best.candidate),
        "evaluations": s.evaluations,
        "resumed_evaluations": s.resumed,
        "cache_hits": s.cache_hits,
        "cost_sequences": s.cost,
        "wall_seconds": round(s.wall_seconds, 2),
        "setup_seconds": {k: round(v, 2) for k, v in p.seconds.items()},
        "storage": mask_url(url),
        "study_name": cfg.name,
    }


def run_config(cfg: StudyConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Prepare and execute (the CLI's ``run``)."""
    return execute(prepare(cfg, progress=progress), run_dir, progress=progress)
