"""Which soft-prompt placements a PEFT prompt-tuning adapter can express, and what is written
for the others."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from blackbox.search_spaces.soft_prompt.peft_export import (
    prompt_comes_first,
    write_peft_adapter,
    write_soft_template,
)


def _cfg(objective: str, placement: str, chat: bool = False, system: str | None = None):
    o = SimpleNamespace(
        type=objective, template="Review: {query}\nAnswer:", system=system, chat=chat
    )
    return SimpleNamespace(
        objective=o,
        space=SimpleNamespace(placement=placement),
        task=SimpleNamespace(name="bb_rotten_tomatoes"),
    )


@pytest.mark.parametrize(
    ("objective", "placement", "chat", "first"),
    [
        ("lm_eval_task", "before_input", False, True),
        ("lm_eval_task", "after_input", False, False),
        ("neuron", "before_input", False, True),  # nothing rendered before the prompt
        ("neuron", "before_input", True, False),  # the chat template's header comes first
        ("neuron", "after_input", False, False),
        ("neuron", "system", True, False),
    ],
)
def test_prompt_comes_first_only_where_peft_puts_virtual_tokens(
    tokenizer, objective, placement, chat, first
) -> None:
    assert prompt_comes_first(_cfg(objective, placement, chat), tokenizer) is first


def test_adapter_files_and_template_for_other_placements(tokenizer, tmp_path, capsys) -> None:
    emb = torch.randn(3, 64)
    paths = write_peft_adapter(emb, "some/model", tmp_path / "a")
    conf = json.loads(paths[0].read_text())
    assert conf["peft_type"] == "PROMPT_TUNING" and conf["num_virtual_tokens"] == 3
    assert conf["token_dim"] == 64 and conf["base_model_name_or_path"] == "some/model"
    torch.testing.assert_close(load_file(str(paths[1]))["prompt_embeddings"], emb)

    paths = write_soft_template(emb, _cfg("neuron", "after_input"), tokenizer, tmp_path / "t")
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "placement 'after_input' cannot be expressed" in err
    template = json.loads(paths[1].read_text())
    assert template["before_prompt"] == "Review: {query}\n" and template["after_prompt"] == (
        "\nAnswer:"
    )
    torch.testing.assert_close(load_file(str(paths[0]))["prompt_embeddings"], emb)
