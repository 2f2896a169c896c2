"""A soft prompt as a PEFT prompt-tuning adapter, where PEFT can express it.

PEFT prompt tuning (``PromptTuningConfig``) prepends ``num_virtual_tokens`` learned embeddings
to the whole input.  That is the search's placement exactly when the prompt comes first in
every sequence: ``before_input`` for an lm-eval task without lm-eval's chat-template mode
(before the whole context, as the search scored it; in chat-template mode the prompt sat inside
the user turn), or ``before_input`` of a document objective without chat template (nothing is
rendered before the prompt).  Then :func:`write_peft_adapter` writes ``adapter_config.json``
and ``adapter_model.safetensors`` (``prompt_embeddings`` ``(n, d)``) that
``PeftModel.from_pretrained(model, DIR)`` and ``lm_eval --model hf --model_args
pretrained=MODEL,peft=DIR`` load.

Any other placement (after the input, the system turn, a template marker, inside a chat
template) cannot be expressed as a PEFT adapter: :func:`write_soft_template` writes the
embeddings and where they go (``template.json``) instead, and says so in one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

NOT_PEFT = (
    "PEFT prompt tuning puts its virtual tokens before the whole input; placement {where} "
    "cannot be expressed as a PEFT adapter, so {out} holds the embeddings and a template instead"
)


def prompt_comes_first(cfg: Any, tokenizer: Any) -> bool:
    """True when the run's prompt is the first thing of every sequence it scored."""
    from blackbox.evals.documents import layout

    placement = cfg.space.placement
    if cfg.objective.type == "lm_eval_task":  # chat mode: inside the user turn
        return placement == "before_input" and not getattr(cfg.task, "chat_template", False)
    o = cfg.objective
    try:
        items, _ = layout(
            tokenizer, ["x"], o.template, placement, o.system, o.chat
        )  # one stand-in document: what comes before the prompt does not depend on it
    except ValueError:
        return False
    return len(items.pre[0]) == 0


def write_peft_adapter(embeddings: torch.Tensor, base_model: str, out_dir: Path) -> list[Path]:
    """Write a PEFT prompt-tuning adapter holding ``embeddings`` ``(n, d)``; returns the paths.

    Args:
        embeddings: the soft prompt, ``(n, d)``.
        base_model: ``base_model_name_or_path`` (a directory ``from_pretrained`` loads).
        out_dir: the adapter directory.
    """
    from peft import PromptTuningConfig, TaskType
    from safetensors.torch import save_file

    n, d = (int(s) for s in embeddings.shape)
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=n,
        token_dim=d,
        num_transformer_submodules=1,
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    weights = out_dir / "adapter_model.safetensors"
    # the state dict PEFT's own save_pretrained writes for prompt learning
    save_file({"prompt_embeddings": embeddings.detach().float().cpu().contiguous()}, str(weights))
    return [out_dir / "adapter_config.json", weights]


def soft_template(cfg: Any, tokenizer: Any) -> dict[str, Any]:
    """Where the soft prompt goes: the placement and the text rendered around it for a
    document ``{query}`` (lm-eval tasks: around the task's context and continuation)."""
    from blackbox.evals.documents import QUERY, layout

    placement = cfg.space.placement
    if cfg.objective.type == "lm_eval_task":
        order = {"before_input": "{prompt}{context}{continuation}"}
        sequence = order.get(placement, "{context}{prompt}{continuation}")
        if getattr(cfg.task, "chat_template", False):  # lm-eval's chat-template mode
            at = "start" if placement == "before_input" else "end"
            sequence = (
                f"{{chat-rendered context, the prompt at the {at} of its last user turn's "
                "text}{continuation}"
            )
            return {
                "placement": placement,
                "task": cfg.task.name,
                "sequence": sequence,
                "chat_template": True,
                "system_instruction": cfg.task.system_instruction,
                "fewshot_as_multiturn": cfg.task.multiturn,
            }
        return {"placement": placement, "task": cfg.task.name, "sequence": sequence}
    o = cfg.objective
    _, texts = layout(tokenizer, [QUERY], o.template, placement, o.system, o.chat)
    before, after = texts[0]
    return {
        "placement": placement,
        "template": o.template,
        "system": o.system,
        "chat": o.chat,
        "before_prompt": before,
        "after_prompt": after,
    }


def write_soft_template(
    embeddings: torch.Tensor, cfg: Any, tokenizer: Any, out_dir: Path
) -> list[Path]:
    """``embeddings.safetensors`` (``prompt_embeddings`` ``(n, d)``) and ``template.json`` for a
    placement PEFT cannot express; prints the one-line reason."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note = NOT_PEFT.format(where=repr(cfg.space.placement), out=str(out_dir))
    paths = [out_dir / "embeddings.safetensors", out_dir / "template.json"]
    save_file({"prompt_embeddings": embeddings.detach().float().cpu().contiguous()}, str(paths[0]))
    paths[1].write_text(json.dumps({**soft_template(cfg, tokenizer), "note": note}, indent=2))
    print(f"blackbox: note: {note}", file=sys.stderr)
    return paths
