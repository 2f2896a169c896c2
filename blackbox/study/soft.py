"""Soft-prompt studies: a soft-prompt space, a classification or behaviour objective, any
box strategy (Adam on the full space; CMA-ES, PSO, random on a subspace), then tokens.

``prepare_soft(config)`` validates and builds everything (writes nothing);
``execute_soft`` runs or resumes the search through the shared
:class:`~blackbox.study.runner.Runner` and records, then turns the best soft prompt into tokens
(nearest-token beam, HotFlip repair) and scores every stage on the search and held-out splits:

========== ==========================================================================
stage      candidate
========== ==========================================================================
baseline   the hand-written text in the soft prompt's place (classification) or the
           reference prompt itself (behaviour; the ceiling), and ``none`` (no prompt)
soft       the best soft prompt found
projected  each vector's nearest token (cosine)
beam       the best combination of each position's ``beam_k`` nearest tokens
repaired   the beam's tokens after HotFlip repair on the search split
========== ==========================================================================

Writes ``result.json`` (the stage table and provenance), ``soft_prompt.safetensors`` (the
best soft prompt ``(n, d)``, its ``z``, ``p0``, with the resolved config in the metadata),
``tokens.json`` (projected, beam and repaired prompts as ids and text) and
``best_so_far.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blackbox.config import ConfigError, StudyConfig
from blackbox.strategies import make_strategy

TOKEN_ONLY = ("epo", "gcg", "token_ga")


@dataclass
class PreparedSoft:
    """Everything a soft-prompt study needs, built once."""

    config: StudyConfig
    loaded: Any
    space: Any
    objective: Any
    strategy: Any
    baselines: dict[str, list[int]]
    references: dict[str, list[str]]
    seconds: dict[str, float]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _classification(cfg: StudyConfig, loaded: Any) -> tuple[Any, dict[str, list[int]]]:
    from blackbox.evals.data import DataError, fetch, is_ready, read_split
    from blackbox.evals.soft_prompt import SoftClassification, place
    from blackbox.study.pipeline import _subsample

    o, sc = cfg.objective, cfg.space
    try:
        user, system = place(o.template, sc.placement)
    except ValueError as exc:
        raise ConfigError(f"config: space.placement: {exc}") from None
    if o.system is not None:
        if system is not None:
            raise ConfigError("config: objective.system: placement 'system' fills the system turn")
        system = o.system
    if system is not None and not o.chat:
        raise ConfigError("config: objective.chat: a system turn needs chat: true")
    name = o.data
    try:
        if not is_ready(name):
            fetch(name)
        rows = {s: read_split(name, s) for s in {o.search_split, o.heldout_split}}
    except (DataError, FileNotFoundError, KeyError) as exc:
        raise ConfigError(f"config: objective.data: {name!r}: {exc}") from None
    search_rows = rows[o.search_split]
    pick = _subsample(
        len(search_rows), o.search_size, cfg.seed, labels=[r["gold"] for r in search_rows]
    )
    held_rows = rows[o.heldout_split]
    held = _subsample(len(held_rows), o.heldout_size, 1234)  # one held-out set for every seed
    data = {"search": [search_rows[i] for i in pick], "heldout": [held_rows[i] for i in held]}
    try:
        obj = SoftClassification.from_rows(
            loaded.model,
            loaded.tokenizer,
            data,
            user,
            o.labels,
            system=system,
            chat=o.chat,
            cache_mb=cfg.scoring.trunk_cache_mb,
        )
    except ValueError as exc:
        raise ConfigError(f"config: objective: {exc}") from None
    return obj, {"baseline": _ids(loaded.tokenizer, o.baseline)}


def _behaviour(cfg: StudyConfig, loaded: Any) -> tuple[Any, dict[str, list[int]], dict]:
    from blackbox.evals.soft_prompt import BehaviourMatching

    o = cfg.objective
    if cfg.space.placement == "template":
        raise ConfigError(
            "config: space.placement: behaviour studies take before_input, after_input or system"
        )
    prompts = {"search": list(o.prompts)}
    if o.heldout_prompts:
        prompts["heldout"] = list(o.heldout_prompts)
    obj, texts = BehaviourMatching.from_prompts(
        loaded.model,
        loaded.tokenizer,
        o.reference,
        prompts,
        placement=cfg.space.placement,
        max_new_tokens=o.max_new_tokens,
        k=o.k,
        weight=o.weight,
    )
    return obj, {"reference": _ids(loaded.tokenizer, o.reference), "none": []}, texts


def _lm_eval(cfg: StudyConfig, loaded: Any) -> tuple[Any, dict[str, list[int]]]:
    from blackbox.evals.lm_eval_task import prepare_split
    from blackbox.evals.lm_eval_tasks import quiet_lm_eval
    from blackbox.evals.soft_lm_eval import SoftLMEvalTask
    from blackbox.study.pipeline import build_lm, load_task, task_splits

    if cfg.space.placement not in ("before_input", "after_input"):
        raise ConfigError(
            "config: space.placement: an lm-eval task takes before_input or after_input"
        )
    task = load_task(cfg)
    with quiet_lm_eval():
        lm = build_lm(loaded)
        prepared = {
            name: prepare_split(task, lm, spec.split, spec.samples)
            for name, spec in task_splits(task, cfg).items()
        }
    try:
        obj = SoftLMEvalTask(
            loaded.model,
            task,
            prepared,
            placement=cfg.space.placement,
            metric=cfg.task.metric,
            cache_mb=cfg.scoring.trunk_cache_mb,
        )
    except ValueError as exc:
        raise ConfigError(f"config: task.metric: {exc}".replace("objective.metric: ", "")) from None
    return obj, {"none": []}  # the task's own prompt, unchanged


def prepare_soft(cfg: StudyConfig) -> PreparedSoft:
    """Validate and build model, objective, soft-prompt space and strategy (writes nothing)."""
    from blackbox.models import load_model
    from blackbox.search_spaces.soft_prompt import SoftPromptSpace, init_embeddings
    from blackbox.study.pipeline import _dummy_box

    if cfg.strategy.name in TOKEN_ONLY:
        raise ConfigError(
            f"config: strategy.name: {cfg.strategy.name!r} works on token spaces only; "
            "soft-prompt studies take adam, nevergrad, optuna, pso or random"
        )
    make_strategy(  # a bad strategy name or setting must not cost a model load
        cfg.strategy.name,
        _dummy_box(),
        seed=cfg.seed,
        population=cfg.strategy.population,
        **cfg.strategy.settings,
    )
    sc = cfg.space
    loaded = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    tok = loaded.tokenizer
    references: dict[str, list[str]] = {}
    if cfg.objective.type == "classification":
        objective, baselines = _classification(cfg, loaded)
    elif cfg.objective.type == "lm_eval_task":
        objective, baselines = _lm_eval(cfg, loaded)
    else:
        objective, baselines, references = _behaviour(cfg, loaded)
    emb = objective.forward.embedding
    special = set(getattr(tok, "all_special_ids", []) or [])
    allowed = [i for i in range(min(len(tok), emb.shape[0])) if i not in special]
    text_ids = _ids(tok, sc.init_text) if sc.init_text else None
    _, ids = init_embeddings(emb, sc.n_tokens, sc.init, cfg.seed, text_ids, allowed)
    p0 = objective.forward.embed(torch.tensor(ids)).detach().float().cpu()
    sigma = float(objective.forward.embed(torch.tensor(allowed)).float().std())
    space = SoftPromptSpace(p0, sigma, sc.subspace_dim, sc.bound, cfg.seed, init_ids=ids)
    strategy = make_strategy(
        cfg.strategy.name,
        space.box,
        seed=cfg.seed,
        population=cfg.strategy.population,
        **cfg.strategy.settings,
    )
    return PreparedSoft(
        cfg,
        loaded,
        space,
        objective,
        strategy,
        baselines,
        references,
        {"model": loaded.load_seconds},
    )


def _stage_row(p: PreparedSoft, label: str, cand: Any) -> dict[str, Any]:
    tok = p.loaded.tokenizer
    row: dict[str, Any] = {"stage": label, "n_tokens": cand.n}
    if cand.ids is not None:
        row["ids"] = [int(i) for i in cand.ids]
        row["text"] = tok.decode(list(cand.ids))
    for split in p.objective.splits:
        ev = p.objective.evaluate([cand], split=split)
        row[split] = {k: round(float(v), 6) for k, v in ev.metrics[0].items()}
    return row


def token_stages(p: PreparedSoft, best: Any, progress: bool = True) -> list[Any]:
    """Projected, beam and repaired token prompts of the soft prompt ``best``."""
    from blackbox.finishing.projection import (
        beam_projection,
        hotflip_repair,
        nearest_tokens,
        objective_fns,
    )
    from blackbox.search_spaces.soft_prompt import SoftPrompt

    pc = p.config.objective.projection
    tok, fwd = p.loaded.tokenizer, p.objective.forward
    banned = set(getattr(tok, "all_special_ids", []) or [])
    vocab = fwd.embedding.shape[0]
    banned |= set(range(len(tok), vocab))  # rows past the tokenizer's vocabulary
    for text in pc.ban:
        banned |= set(_ids(tok, text)) | set(_ids(tok, " " + text))
    if p.config.objective.type == "behaviour":
        banned |= set(p.baselines["reference"])  # not the reference prompt's own tokens
    banned_l = sorted(banned)
    loss_of_ids, grad_of_ids = objective_fns(p.objective, "search")

    def cand(ids: torch.Tensor, label: str, **extra: Any) -> Any:
        ids = ids.cpu().long()
        return SoftPrompt(
            fwd.embed(ids).detach().float().cpu(), tuple(int(i) for i in ids), label, extra
        )

    top, _ = nearest_tokens(best.embeddings, fwd.embedding, k=pc.beam_k, banned=banned_l)
    out = [cand(top[:, 0], "projected")]
    beam_ids, _, scored = beam_projection(top, loss_of_ids, pc.beam_max, seed=p.config.seed)
    out.append(cand(beam_ids, "beam", scored=scored))
    if progress:
        print(f"projection: {scored} beam combinations scored; HotFlip repair", flush=True)
    rep = hotflip_repair(
        beam_ids, loss_of_ids, grad_of_ids, pc.repair_steps, pc.repair_topk, banned_l
    )
    out.append(
        cand(rep.ids, "repaired", swaps=rep.swaps, history=rep.history, evaluated=rep.evaluated)
    )
    return out


def execute_soft(p: PreparedSoft, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run or resume the soft-prompt study into ``run_dir``; returns the result (also saved)."""
    from safetensors.torch import save_file

    from blackbox.report.run import plot_run
    from blackbox.search_spaces.soft_prompt import SoftPrompt
    from blackbox.study.pipeline import _atomic_text, _masked, run_header, start_run

    cfg = p.config
    study, url, runner = start_run(p, run_dir, progress)
    resolved = _masked(cfg.resolved())
    s = runner.run()
    result: dict[str, Any] = {
        **run_header(cfg, s, url),
        "objective": cfg.objective.type,
        "subspace_dim": cfg.space.subspace_dim,
        "n_tokens": cfg.space.n_tokens,
        "splits": {k: len(v) for k, v in p.objective.splits.items()},
        "stages": [],
    }
    if p.references:
        result["reference_completions"] = p.references
    emb = p.objective.forward
    stages: list[Any] = [
        SoftPrompt(
            emb.embed(torch.tensor(ids, dtype=torch.long)).detach().float().cpu()
            if ids
            else torch.zeros(0, p.space.d),
            tuple(ids),
            label,
        )
        for label, ids in p.baselines.items()
    ]
    if s.best is not None:
        best = p.space.decode(s.best.x[None])[0]
        stages.append(best)
        if cfg.objective.projection.enabled:
            stages.extend(token_stages(p, best, progress))
        save_file(
            {
                "embeddings": best.embeddings.contiguous(),
                "z": torch.as_tensor(s.best.x, dtype=torch.float32),
                "p0": p.space.p0.contiguous(),
            },
            str(run_dir / "soft_prompt.safetensors"),
            metadata={"config": json.dumps(resolved), "value": str(s.best.value)},
        )
    for c in stages:
        row = _stage_row(p, c.label, c)
        row.update({k: v for k, v in c.extra.items() if k != "history"})
        result["stages"].append(row)
    tokens = {
        r["stage"]: {"ids": r["ids"], "text": r["text"]} for r in result["stages"] if "ids" in r
    }
    _atomic_text(run_dir / "tokens.json", json.dumps(tokens, indent=2))
    _atomic_text(run_dir / "result.json", json.dumps(result, indent=2, default=float))
    plot_run(study, p.space, run_dir)
    return result


def stage_table(result: dict[str, Any]) -> str:
    """A Markdown table of the stages: the value and metrics on every split."""
    splits = [k for k in result["splits"]]
    first = result["stages"][0] if result["stages"] else {}
    metrics = list(first.get(splits[0], {})) if splits else []
    head = ["stage", "text"] + [f"{s} {m}" for s in splits for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["stages"]:
        text = repr(r.get("text", "(soft)"))[:40]
        cells = [r["stage"], text] + [f"{r[s][m]:.4f}" for s in splits for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
