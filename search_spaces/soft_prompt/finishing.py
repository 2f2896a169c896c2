"""Soft-prompt runs end with tokens: the best soft prompt is projected to its nearest tokens,
a beam of each position's nearest tokens is scored, the beam's best is repaired with HotFlip
swaps, and every stage is scored on every split:

========== ==========================================================================
stage      candidate
========== ==========================================================================
baselines  the space's baselines: a hand-written text in the prompt's place, no prompt
soft       the best soft prompt found
projected  each vector's nearest token (cosine)
beam       the best combination of each position's ``beam_k`` nearest tokens
repaired   the beam's tokens after HotFlip repair on the search split
========== ==========================================================================

Files: ``soft_prompt.safetensors`` (the best soft prompt ``(n, d)``, its ``z``, ``p0``, the
resolved config in the metadata) and ``tokens.json`` (projected, beam and repaired prompts as
ids and text).  Projection needs an objective with gradients (every one but a closed form).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blackbox.search_spaces.finishing import Finisher


def stage_row(p: Any, label: str, cand: Any) -> dict[str, Any]:
    """One stage: its tokens (if any) and every metric on every split of the objective."""
    row: dict[str, Any] = {"stage": label, "n_tokens": cand.n}
    if cand.ids is not None:
        row["ids"] = [int(i) for i in cand.ids]
        row["text"] = p.loaded.tokenizer.decode(list(cand.ids))
    for split in p.objective.splits:
        ev = p.problem.evaluate([cand], split=split)
        row[split] = {
            k: round(float(v), 6) for k, v in ev.metrics[0].items() if k not in ("cache_hit",)
        }
    return row


def token_stages(p: Any, best: Any, progress: bool = True) -> list[Any]:
    """Projected, beam and repaired token prompts of the soft prompt ``best``."""
    from blackbox.search_spaces.soft_prompt.projection import (
        beam_projection,
        hotflip_repair,
        nearest_tokens,
        objective_fns,
    )
    from blackbox.search_spaces.soft_prompt.space import SoftPrompt

    pc = p.config.space.projection
    tok, emb = p.loaded.tokenizer, p.objective.embedder
    banned = set(getattr(tok, "all_special_ids", []) or [])
    banned |= set(range(len(tok), emb.embedding.shape[0]))  # rows past the tokenizer's vocabulary

    def ids(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []

    for text in pc.ban:
        banned |= set(ids(text)) | set(ids(" " + text))
    reference = getattr(p.objective, "reference_text", "")
    banned |= set(ids(reference))  # behaviour matching: never the reference prompt's own tokens
    banned_l = sorted(banned)

    def cand(ids_t: torch.Tensor, label: str, **extra: Any) -> Any:
        ids_t = ids_t.cpu().long()
        return SoftPrompt(
            emb.embed(ids_t).detach().float().cpu(), tuple(int(i) for i in ids_t), label, extra
        )

    top, _ = nearest_tokens(best.embeddings, emb.embedding, k=pc.beam_k, banned=banned_l)
    out = [cand(top[:, 0], "projected")]
    if not getattr(p.objective, "gradients_ok", True):  # generative / perplexity task
        if progress:
            print("projection: nearest tokens only (no smooth loss for beam or repair)")
        return out
    loss_of_ids, grad_of_ids = objective_fns(p.objective, "search")
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


class SoftFinisher(Finisher):
    """Stages from baselines to repaired tokens; safetensors and ``tokens.json``."""

    @classmethod
    def finish(
        cls, p: Any, summary: Any, study: Any, run_dir: Path, progress: bool = True
    ) -> dict[str, Any]:
        stages: list[Any] = []
        for label, c in p.baselines.items():
            c.label = label
            stages.append(c)
        files: list[str] = []
        best = summary.best
        if best is not None:
            soft = best.candidate
            soft.label = "soft"
            stages.append(soft)
            if p.config.space.projection.enabled and hasattr(p.objective, "loss"):
                stages.extend(token_stages(p, soft, progress))
            files += [f.name for f in cls.export(p, soft, run_dir, z=best.x)]
        rows = []
        for c in stages:
            row = stage_row(p, c.label, c)
            row.update({k: v for k, v in c.extra.items() if k != "history"})
            rows.append(row)
        tokens = {r["stage"]: {"ids": r["ids"], "text": r["text"]} for r in rows if "ids" in r}
        (Path(run_dir) / "tokens.json").write_text(json.dumps(tokens, indent=2))
        files.append("tokens.json")
        return {"stages": rows, "files": files}

    formats = {
        "safetensors": "soft_prompt.safetensors: the soft prompt, its z and p0",
        "peft": "peft_adapter/: a PEFT prompt-tuning adapter (PeftModel, lm_eval peft=DIR); "
        "placements PEFT cannot express: embeddings + template.json",
    }

    @classmethod
    def export(
        cls,
        p: Any,
        candidate: Any,
        run_dir: Path,
        out: Path | None = None,
        fmt: str | None = None,
        z: np.ndarray | None = None,
    ) -> list[Path]:
        from safetensors.torch import save_file

        if cls.check_format(fmt, "soft_prompt") == "peft":
            return export_peft(p, candidate, Path(out) if out else Path(run_dir) / "peft_adapter")

        from blackbox.masking import masked

        target = Path(out) if out is not None else Path(run_dir) / "soft_prompt.safetensors"
        z_t = p.space.encode([candidate])[0] if z is None else z
        save_file(
            {
                "embeddings": candidate.embeddings.contiguous(),
                "z": torch.as_tensor(np.asarray(z_t), dtype=torch.float32),
                "p0": p.space.p0.contiguous(),
            },
            str(target),
            metadata={"config": json.dumps(masked(p.config.resolved()))},
        )
        return [target]


def export_peft(p: Any, candidate: Any, out_dir: Path) -> list[Path]:
    """The soft prompt as a PEFT prompt-tuning adapter (plus ``samples.json``, the held-out
    documents, for an lm-eval task), or embeddings + template where PEFT cannot express the
    placement (:mod:`.peft_export`)."""
    from blackbox.search_spaces.soft_prompt.peft_export import (
        prompt_comes_first,
        write_peft_adapter,
        write_soft_template,
    )

    cfg, tok = p.config, p.loaded.tokenizer
    if not prompt_comes_first(cfg, tok):
        return write_soft_template(candidate.embeddings, cfg, tok, out_dir)
    paths = write_peft_adapter(candidate.embeddings, str(p.loaded.path), out_dir)
    if cfg.objective.type == "lm_eval_task":
        from blackbox.finishing.lm_eval_variant import heldout_documents

        task, split, docs = heldout_documents(cfg)
        if split != (task.config.test_split or task.config.validation_split):
            print(
                f"blackbox: note: the held-out split {split!r} is not the one lm-eval evaluates; "
                "samples.json indexes it",
                file=sys.stderr,
            )
        paths.append(Path(out_dir) / "samples.json")
        paths[-1].write_text(json.dumps({task.config.task: docs}))
    return paths


def stage_table(result: dict[str, Any]) -> str:
    """A Markdown table of the stages: the value and metrics on every split."""
    stages = result.get("stages") or []
    if not stages:
        return ""
    splits = [s for s in result.get("splits", {}) if s in stages[0]]
    metrics = list(stages[0].get(splits[0], {})) if splits else []
    head = ["stage", "text"] + [f"{s} {m}" for s in splits for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in stages:
        text = repr(r.get("text", "(soft)"))[:40]
        cells = [r["stage"], text] + [
            f"{r[s].get(m, float('nan')):.4f}" for s in splits for m in metrics
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
