"""Token-prompt runs end with the best prompt's text, its per-token attribution and the
fluency Pareto front over every evaluated prompt (``tokens.json``, ``pareto.png``).

``blackbox export --format lm_eval`` writes the prompt as an lm-eval task variant
(:mod:`.lm_eval_variant`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from blackbox.search_spaces.finishing import Finisher


def front_from_trials(study: Any) -> list[dict[str, Any]]:
    """The Pareto front (objective up, cross-entropy down) over every recorded evaluation."""
    from blackbox.finishing.plots import search_trials
    from blackbox.multiobjective import pareto_mask
    from blackbox.pareto import FLUENCY

    rows = [
        t
        for t in search_trials(study)
        if t.values and "xentropy" in (t.user_attrs.get("extra") or {})
    ]
    if not rows:
        return []
    values = np.array([t.values[0] for t in rows])
    xent = np.array([t.user_attrs["extra"]["xentropy"] for t in rows], dtype=float)
    mask = pareto_mask(np.column_stack([values.astype(float), xent]), FLUENCY)
    seen, front = set(), []
    for t, keep in sorted(zip(rows, mask), key=lambda p: p[0].user_attrs["extra"]["xentropy"]):
        text = t.user_attrs.get("candidate", {}).get("text")
        if keep and text not in seen:
            seen.add(text)
            front.append(
                {
                    "xentropy": float(t.user_attrs["extra"]["xentropy"]),
                    "value": float(t.values[0]),
                    "text": text,
                }
            )
    return front


def plot_front(front: list[dict[str, Any]], path: Path, value_name: str) -> None:
    """``pareto.png``: the front, each point labelled with its prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p["xentropy"] for p in front], [p["value"] for p in front], "o-")
    for p in front:
        ax.annotate(repr(p["text"])[:40], (p["xentropy"], p["value"]), fontsize=7)
    ax.set_xlabel("prompt cross-entropy (lower = more fluent)")
    ax.set_ylabel(value_name)
    ax.set_title("Pareto front over every evaluated prompt")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class TokensFinisher(Finisher):
    """Best prompt, attribution, Pareto front; ``tokens.json`` holds the prompt's ids and text."""

    @classmethod
    def finish(
        cls, p: Any, summary: Any, study: Any, run_dir: Path, progress: bool = True
    ) -> dict[str, Any]:
        from blackbox.search_spaces.tokens.attribution import token_attribution

        out: dict[str, Any] = {"pareto_front": front_from_trials(study), "files": []}
        best = summary.best
        if best is not None:
            tok = p.loaded.tokenizer
            allowed = p.space.allowed_ids
            section: dict[str, Any] = {"text": best.candidate.text, "ids": list(best.candidate.ids)}
            if hasattr(p.objective, "token_gradients") and getattr(
                p.objective, "gradients_ok", True
            ):
                rows, cost = token_attribution(p.problem, best.x.astype(np.int64), k=16)
                section["attribution"] = [
                    {
                        "position": a.position,
                        "token": tok.decode([int(allowed[a.index])]),
                        "best_substitute": tok.decode([int(allowed[a.substitute])]),
                        "drop": float(a.drop),
                    }
                    for a in rows
                ]
                section["attribution_cost"] = cost
            out["prompt"] = section
            out["files"] = [f.name for f in cls.export(p, best.candidate, run_dir)]
        if out["pareto_front"]:
            plot_front(out["pareto_front"], Path(run_dir) / "pareto.png", p.objective.metric)
            out["files"].append("pareto.png")
        return out

    formats = {
        "json": "tokens.json: the prompt's ids and text",
        "lm_eval": "lm_eval_task/: prompt.txt and an lm-eval task variant (--include_path)",
    }

    @classmethod
    def export(
        cls, p: Any, candidate: Any, run_dir: Path, out: Path | None = None, fmt: str | None = None
    ) -> list[Path]:
        if cls.check_format(fmt, "tokens") == "lm_eval":
            from blackbox.finishing.lm_eval_variant import write_task_variant

            target = Path(out) if out is not None else Path(run_dir) / "lm_eval_task"
            return write_task_variant(
                p.config, candidate.text, target, p.loaded, list(candidate.ids)
            )
        target = Path(out) if out is not None else Path(run_dir) / "tokens.json"
        data = {"best": {"ids": [int(i) for i in candidate.ids], "text": candidate.text}}
        target.write_text(json.dumps(data, indent=2))
        return [target]
