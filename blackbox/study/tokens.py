"""Token-sequence studies ("dreaming"): a token space, an internal objective, any strategy.

``prepare_tokens(config)`` builds the model, :class:`~blackbox.search_spaces.tokens.TokenSpace`,
the objective and the strategy (EPO, GCG, the token GA, nevergrad, Optuna, random) and
validates everything before anything is written; ``execute_tokens`` runs or resumes the study
through the same :class:`~blackbox.study.runner.Runner` and records as steering studies, then writes
``result.json`` (best prompt, its fluency, the Pareto front over every evaluation, per-token
attribution of the best prompt), ``pareto.png`` and ``best_so_far.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blackbox.config import ConfigError, StudyConfig
from blackbox.models.layers import hidden_size, num_layers
from blackbox.strategies import make_strategy


@dataclass
class PreparedTokens:
    """Everything a token study needs, built once."""

    config: StudyConfig
    loaded: Any
    space: Any
    objective: Any
    strategy: Any
    seconds: dict[str, float]


def _chat_wrap(tokenizer: Any) -> tuple[str, str]:
    """The chat template's text before and after a user message (for the token slot)."""
    marker = "\x00SLOT\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True
    )
    before, after = text.split(marker)
    return before, after


def _check_layer(field: str, layer: int, n_layers: int) -> None:
    if not 0 <= layer < n_layers:
        raise ConfigError(f"config: objective.{field}: {layer} is outside 0..{n_layers - 1}")


def build_objective(cfg: StudyConfig, model: Any, tokenizer: Any, space: Any) -> Any:
    """The objective named by ``cfg.objective`` (layers checked against the model)."""
    from blackbox.evals.activation import (
        FeatureDirectionObjective,
        NeuronObjective,
        ResidualDirectionObjective,
    )
    from blackbox.evals.logit import LogitObjective
    from blackbox.evals.reference import ReferenceObjective
    from blackbox.search_spaces.steering_vectors import first_token_id

    o = cfg.objective
    assert o is not None
    n_layers = num_layers(model)
    ctx = space.context
    if o.type == "neuron":
        _check_layer("layer", o.layer, n_layers)
        width = int(getattr(model.config, "intermediate_size", 0) or 4 * hidden_size(model))
        if o.index >= width:
            raise ConfigError(f"config: objective.index: {o.index} is outside 0..{width - 1}")
        return NeuronObjective(model, layer=o.layer, index=o.index, context=ctx)
    if o.type == "residual_direction":
        _check_layer("layer", o.layer, n_layers)
        if o.direction_file:
            if not Path(o.direction_file).is_file():
                raise ConfigError(
                    f"config: objective.direction_file: {o.direction_file!r} does not exist"
                )
            direction: Any = o.direction_file
        else:
            g = torch.Generator().manual_seed(int(o.direction_seed or 0))
            direction = torch.randn(hidden_size(model), generator=g)
        obj = ResidualDirectionObjective(
            model, layer=o.layer, direction=direction, context=ctx, standardise=o.standardise
        )
        if o.calibrate:
            rng = np.random.default_rng(cfg.seed + 12345)
            obj.calibrate(space.ids_of(space.box.sample(o.calibrate, rng)))
        return obj
    if o.type == "logit":
        return LogitObjective(model, target_id=first_token_id(tokenizer, o.target), context=ctx)
    if o.type == "reference":
        ids = tokenizer(o.target, add_special_tokens=False)["input_ids"]
        return ReferenceObjective(model, target_ids=ids, context=ctx)
    if o.type == "feature_direction":
        _check_layer("layer", o.layer, n_layers)
        if not Path(o.file).is_file():
            raise ConfigError(f"config: objective.file: {o.file!r} does not exist")
        return FeatureDirectionObjective(
            model, layer=o.layer, source=o.file, row=o.row, context=ctx
        )
    raise ConfigError(f"config: objective.type: {o.type!r} is not supported")  # pragma: no cover


def prepare_tokens(cfg: StudyConfig) -> PreparedTokens:
    """Validate and build model, token space, objective and strategy (writes nothing)."""
    from blackbox.models import load_model
    from blackbox.search_spaces.tokens import TokenSpace

    sc, o = cfg.space, cfg.objective
    assert o is not None
    loaded = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    tok = loaded.tokenizer
    prefix, suffix = sc.prefix, sc.suffix
    if sc.chat_template:
        before, after = _chat_wrap(tok)
        prefix, suffix = before + prefix, suffix + after
    banned = list(sc.banned)
    if o.type == "logit" and o.ban_variants:
        banned.append(o.target.strip())  # the prompt may not simply contain the target word
    try:
        space = TokenSpace(
            tok,
            n_tokens=sc.n_tokens,
            ascii_only=sc.ascii_only,
            banned=banned,
            prefix=prefix,
            suffix=suffix,
        )
    except ValueError as exc:
        raise ConfigError(f"config: space: {exc}") from None
    objective = build_objective(cfg, loaded.model, tok, space)
    strategy = make_strategy(
        cfg.strategy.name,
        space.box,
        seed=cfg.seed,
        population=cfg.strategy.population,
        **cfg.strategy.settings,
    )
    return PreparedTokens(cfg, loaded, space, objective, strategy, {"model": loaded.load_seconds})


def front_from_trials(study: Any) -> list[dict[str, Any]]:
    """The Pareto front (objective up, cross-entropy down) over every recorded evaluation."""
    from blackbox.pareto import non_dominated
    from blackbox.report.run import search_trials

    rows = [
        t
        for t in search_trials(study)
        if t.value is not None and "xentropy" in (t.user_attrs.get("extra") or {})
    ]
    if not rows:
        return []
    values = np.array([t.value for t in rows])
    xent = np.array([t.user_attrs["extra"]["xentropy"] for t in rows], dtype=float)
    mask = non_dominated(values, xent)
    seen, front = set(), []
    for t, keep in sorted(zip(rows, mask), key=lambda p: p[0].user_attrs["extra"]["xentropy"]):
        text = t.user_attrs.get("candidate", {}).get("text")
        if keep and text not in seen:
            seen.add(text)
            front.append(
                {
                    "xentropy": float(t.user_attrs["extra"]["xentropy"]),
                    "value": float(t.value),
                    "text": text,
                }
            )
    return front


def _plot_front(front: list[dict[str, Any]], path: Path, value_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [p["xentropy"] for p in front]
    ys = [p["value"] for p in front]
    ax.plot(xs, ys, "o-")
    for p in front:
        ax.annotate(repr(p["text"])[:40], (p["xentropy"], p["value"]), fontsize=7)
    ax.set_xlabel("prompt cross-entropy (lower = more fluent)")
    ax.set_ylabel(value_name)
    ax.set_title("Pareto front over every evaluated prompt")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def execute_tokens(p: PreparedTokens, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run or resume the token study into ``run_dir``; returns the result (also saved)."""
    from blackbox.finishing.attribution import token_attribution
    from blackbox.report.run import plot_run
    from blackbox.study.pipeline import _atomic_text, run_header, start_run

    cfg = p.config
    study, url, runner = start_run(p, run_dir, progress)
    s = runner.run()
    front = front_from_trials(study)
    result: dict[str, Any] = {
        **run_header(cfg, s, url),
        "objective": cfg.objective.model_dump() if cfg.objective else None,
        "best": None,
        "pareto_front": front,
    }
    if s.best is not None:
        best = p.space.decode(s.best.x[None])[0]
        attributions, _ = token_attribution(p.space, p.objective, s.best.x.astype(np.int64), k=16)
        result["best"] = {
            "value": s.best.value,
            "text": best.text,
            "ids": [int(i) for i in best.ids],
            "metrics": {k: v for k, v in s.best.metrics.items() if k != "cache_hit"},
            "attribution": [
                {
                    "position": a.position,
                    "token": p.loaded.tokenizer.decode([int(p.space.allowed_ids[a.index])]),
                    "best_substitute": p.loaded.tokenizer.decode(
                        [int(p.space.allowed_ids[a.substitute])]
                    ),
                    "drop": float(a.drop),
                }
                for a in attributions
            ],
        }
    _atomic_text(run_dir / "result.json", json.dumps(result, indent=2, default=float))
    plot_run(study, p.space, run_dir)
    if front:
        _plot_front(front, run_dir / "pareto.png", getattr(p.objective, "metric", "objective"))
    return result
