"""The pipeline's side-effect steps: checks before the model loads, wrapping the objective,
and after the search the Pareto front, its held-out re-scores, the chosen member and the plot.

The chosen member follows the selection rule of :func:`blackbox.multiobjective.choose` over
every search evaluation: the best primary score among those within every selection bound
(``select_max``, else the search bound), else the least violation.  It is re-scored on the
held-out split with the front, and it is the candidate the finishing step exports.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import TrialState

from blackbox.multiobjective import ObjectiveSpec, choose, pareto_mask
from blackbox.sections import ConfigError

MAX_FRONT = 16
"""Front members re-scored on the held-out split (the highest primary values first)."""


def check_side_effects(cfg: Any) -> None:
    """One-line :class:`ConfigError` for a side-effect config that cannot run (no model)."""
    from blackbox.evals.side_effects import config_spec
    from blackbox.strategies import make_strategy

    if not cfg.side_effects:
        return
    for i, s in enumerate(cfg.side_effects):
        where = f"config: side_effects.{i}"
        if s.type == "fluency" and cfg.space.type != "tokens":
            raise ConfigError(
                f"{where}.type: 'fluency' is a token prompt's self cross-entropy; the "
                f"{cfg.space.type} space has no token ids (use kl or guard)"
            )
        if s.type == "kl" and s.texts_file and not Path(s.texts_file).is_file():
            raise ConfigError(f"{where}.texts_file: {s.texts_file!r} does not exist")
        if s.type == "kl" and s.texts == "task" and cfg.task is None and not s.texts_file:
            has_docs = getattr(cfg.objective, "has_documents", lambda: False)()
            if not has_docs:
                raise ConfigError(
                    f"{where}.texts: 'task' needs a task: or objective.prompts; use "
                    "guardian_headlines or texts_file"
                )
        if s.type == "guard" and s.max_drop is not None and s.max_drop < 0:
            raise ConfigError(f"{where}.max_drop: must be >= 0 points, got {s.max_drop}")
    from blackbox.strategies.base import dummy_box

    strategy = make_strategy(
        cfg.strategy.name,
        dummy_box(),
        seed=cfg.seed,
        population=cfg.strategy.population,
        **cfg.strategy.settings,
    )
    try:
        strategy.set_objectives(config_spec(cfg))
    except ValueError as exc:
        raise ConfigError(f"config: strategy.settings.{str(exc).split('.', 1)[-1]}") from None


def load_guard_tasks(cfg: Any) -> dict[str, Any]:
    """The guard tasks by name (loaded before the model: a bad name costs no model load)."""
    from blackbox.evals.lm_eval_splits import load_task

    out: dict[str, Any] = {}
    for i, s in enumerate(cfg.side_effects or []):
        if s.type != "guard" or s.task in out:
            continue
        try:
            out[s.task] = load_task(s.task)
        except ValueError as exc:  # ConfigError too: name the side effect's field
            msg = str(exc).removeprefix("config: ").removeprefix("task.name: ")
            raise ConfigError(f"config: side_effects.{i}.task: {msg}") from None
    return out


# -- after the search ------------------------------------------------------------------------
def _rows(trials: list[Any], spec: ObjectiveSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` primary values and ``(n, k)`` side columns (NaN where missing) of trials."""
    values = np.array([t.values[0] if t.values else np.nan for t in trials], dtype=float)
    extra = np.array(
        [
            [(t.user_attrs.get("extra") or {}).get(c.name, np.nan) for c in spec.columns]
            for t in trials
        ],
        dtype=float,
    ).reshape(len(trials), len(spec.columns))
    return values, extra


def _entry(value: float, extra: np.ndarray, spec: ObjectiveSpec) -> dict[str, Any]:
    return {"score": float(value), **{c.name: float(extra[c.index]) for c in spec.columns}}


def front_section(p: Any, summary: Any, study: Any, run_dir: Path) -> tuple[dict[str, Any], Any]:
    """``result.json``'s ``side_effects`` section (front, chosen member, baseline, held-out
    re-scores) and the summary the finishing step exports from (its ``best`` the chosen)."""
    from blackbox.evals.side_effects import config_spec
    from blackbox.study.runner import Scored
    from blackbox.study.storage import records, trial_x

    spec = dataclasses.replace(config_spec(p.config), primary=p.objective.metric)
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("kind") == "search"
    ]
    section: dict[str, Any] = {
        "columns": [dataclasses.asdict(c) for c in spec.columns],
        "directions": dict(zip(spec.names, spec.directions)),
        "reference_cost_forward_passes": float(getattr(p.objective, "reference_cost", 0.0)),
        "rule": "best score among evaluations with every column <= its select_max (else its "
        "max); none: the least total violation in bound units",
    }
    base = [
        t
        for t in records(study, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("kind") == "baseline"
    ]
    if base:
        bv, be = _rows(base[:1], spec)
        section["baseline"] = {
            "label": base[0].user_attrs.get("label"),
            "search": _entry(bv[0], be[0], spec),
        }
    if not trials:
        return section, summary
    values, extra = _rows(trials, spec)
    objectives = spec.objectives(values, extra)
    on_front = np.flatnonzero(pareto_mask(objectives, spec.directions))
    on_front = on_front[np.argsort(-values[on_front], kind="stable")]
    picked = choose(values, extra, spec)
    # unique candidates, the chosen one always re-scored
    members: list[int] = []
    seen: set[str] = set()
    for i in ([picked] if picked is not None else []) + list(on_front):
        key = json.dumps(trials[i].user_attrs.get("candidate"), sort_keys=True, default=str)
        if key not in seen and len(members) < MAX_FRONT + 1:
            seen.add(key)
            members.append(int(i))
    xs = [trial_x(trials[i], p.space.box.names) for i in members]
    cands = [p.space.decode(x[None])[0] for x in xs]  # type: ignore[index]
    held: dict[int, dict[str, Any]] = {}
    if "heldout" in p.objective.splits and cands:
        labels = list(p.baselines)
        refs = [p.baselines[k] for k in labels[:1]]
        ev = p.problem.evaluate(refs + cands, split="heldout")
        he = np.asarray(ev.extra, dtype=float)
        names = list(p.objective.extra_names)
        cols = [names.index(c.name) for c in spec.columns]
        if refs and "baseline" in section:
            section["baseline"]["heldout"] = _entry(ev.values[0], he[0, cols], spec)
        for j, i in enumerate(members):
            held[i] = _entry(ev.values[len(refs) + j], he[len(refs) + j, cols], spec)
        section["heldout_cost_forward_passes"] = float(ev.cost)
    viol = spec.violation(extra, select=True)

    def member(i: int) -> dict[str, Any]:
        return {
            "trial": trials[i].number,
            "candidate": trials[i].user_attrs.get("candidate"),
            "search": _entry(values[i], extra[i], spec),
            "heldout": held.get(i),
            "feasible": bool(viol[i] <= 0),
        }

    section["front"] = [member(i) for i in on_front if i in held or not held]
    section["front_size"] = int(len(on_front))
    if picked is None:
        return section, summary
    section["chosen"] = member(picked)
    section["exported"] = "chosen"
    t = trials[picked]
    chosen = Scored(
        xs[0],
        cands[0],
        float(values[picked]),
        dict(t.user_attrs.get("metrics", {})),
        float(t.user_attrs.get("cost") or 0.0),
        tuple(float(v) for v in (t.user_attrs.get("extra") or {}).values()) or None,
    )
    held_chosen = None
    if picked in held:
        held_chosen = Scored(None, cands[0], held[picked]["score"], dict(held[picked]))
    plot_front(values, extra, on_front, picked, spec, section.get("baseline"), run_dir)
    section["plot"] = "pareto.png"
    return section, dataclasses.replace(summary, best=chosen, heldout_best=held_chosen)


def plot_front(
    values: np.ndarray,
    extra: np.ndarray,
    front: np.ndarray,
    picked: int,
    spec: ObjectiveSpec,
    baseline: dict[str, Any] | None,
    run_dir: Path,
) -> Path:
    """``pareto.png``: the primary score against each side column (every search evaluation,
    the front, the chosen member, the baseline and the bounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(spec.columns)
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 4), squeeze=False)
    for ax, c in zip(axes[0], cols):
        x = extra[:, c.index]
        ax.scatter(x, values, s=10, color="0.7", label="evaluations")
        order = front[np.argsort(x[front])]
        ax.plot(x[order], values[order], "o-", color="C0", ms=5, label="Pareto front")
        ax.scatter([x[picked]], [values[picked]], marker="*", s=220, color="C3", label="chosen")
        if baseline is not None:
            b = baseline["search"]
            ax.scatter(
                [b[c.name]],
                [b["score"]],
                marker="s",
                s=60,
                color="k",
                label=baseline.get("label") or "baseline",
            )
        bound = c.select_bound if c.select_bound is not None else c.bound
        if bound is not None:
            ax.axvline(bound, color="C3", linestyle="--", linewidth=1, label=f"bound {bound:g}")
        ax.set_xlabel(f"{c.name} (lower is better)")
        ax.set_ylabel(f"{spec.primary} (search split)")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(run_dir) / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
