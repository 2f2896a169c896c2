"""A study in lm-eval's chat-template mode (``task.chat_template: true``): result.json says so,
its ``lm_eval`` commands carry ``--apply_chat_template`` and, run through lm-eval's own
``simple_evaluate`` with the chat template, reproduce the held-out numbers; the exports of a
steering run and of a token prompt carry it too."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from blackbox.cli import main
from blackbox.evals.lm_eval_chat import ChatFormat
from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval

TASK = "bb_rotten_tomatoes"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    root = tmp_path_factory.mktemp("chat_study")
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 4, root / "v.pt")
    cfg = {
        "name": "chat",
        "model": {"name": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
        "task": {
            "name": TASK,
            "search_size": 8,
            "heldout_size": 8,
            "chat_template": True,
            "system_instruction": "Answer with one word.",
        },
        "space": {
            "layers": [0, 3],
            "coeff": [-2.0, 2.0],
            "vectors": [{"name": "v", "file": str(root / "v.pt")}],
        },
        "strategy": {"name": "random", "population": 4},
        "budget": {"evaluations": 4},
    }
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "run"
    assert main(["run", str(root / "c.yaml"), "--out", str(out), "--no-progress"]) == 0
    return tiny_model_dir, out, json.loads((out / "result.json").read_text())


def _lm_eval(model: str, args: dict[str, Any], prov: dict[str, Any]) -> float:
    import lm_eval
    from lm_eval.tasks import TaskManager

    spec = prov["lm_eval"]
    name = spec["task"]
    samples = json.loads(Path(spec["samples"]).read_text())
    with quiet_lm_eval():
        out = lm_eval.simple_evaluate(
            model=model,
            model_args=args,
            tasks=[name],
            samples=samples,
            task_manager=TaskManager(include_defaults=False, include_path=spec["include_path"]),
            bootstrap_iters=0,
            apply_chat_template=True,
            system_instruction="Answer with one word.",
            fewshot_as_multiturn=True,
        )
    return float(out["results"][name]["acc,none"])


def test_the_result_says_the_chat_template_was_applied(run) -> None:
    _, _, result = run
    assert result["chat_template"] is True
    prov = result["provenance"]
    assert prov["chat_template"] == {
        "system_instruction": "Answer with one word.",
        "fewshot_as_multiturn": True,
    }
    flags = " --apply_chat_template '--system_instruction=Answer with one word.' "
    for command in prov["lm_eval"]["commands"].values():
        assert command.endswith(flags + "--fewshot_as_multiturn")


def test_the_chat_commands_reproduce_the_heldout_numbers(run) -> None:
    model_dir, out, result = run
    prov = result["provenance"]
    model = str(model_dir.resolve())
    base = _lm_eval("hf", {"pretrained": model, "device": "cpu"}, prov)
    assert base == result["baseline"]["heldout"]["score"]
    steer = str(out / "steered.pt")
    best = _lm_eval("steered", {"pretrained": model, "steer_path": steer, "device": "cpu"}, prov)
    assert best == result["best"]["heldout"]["score"]


def test_an_export_command_carries_the_chat_template(run, tmp_path: Path) -> None:
    from blackbox.finishing.provenance import export_command

    model_dir, out, result = run
    task_cfg = SimpleNamespace(
        chat_template=True, system_instruction=None, fewshot_as_multiturn=False
    )
    steer = out / "steered.pt"
    command = export_command(result, "steered", [steer], model_dir, task_cfg)
    plain = export_command(result, "steered", [steer], model_dir, None)
    assert command == plain + " --apply_chat_template --fewshot_as_multiturn false"
    variant = export_command(result, "lm_eval", [tmp_path / "t_run.yaml"], model_dir, task_cfg)
    assert "--tasks t_run" in variant and variant.endswith(" --fewshot_as_multiturn false")


@pytest.mark.parametrize("placement", ["before_input", "after_input"])
def test_a_token_variant_builds_the_searched_ids_under_the_chat_template(
    tiny_llama, tokenizer, tmp_path: Path, placement: str
) -> None:
    """The variant's text sits inside the user turn, where the chat-mode search spliced the
    ids: lm-eval under ``--apply_chat_template`` tokenises it into exactly those requests."""
    from blackbox.finishing.lm_eval_variant import exact_requests, task_yaml_path, variant_config
    from blackbox.models.loading import LoadedModel

    with quiet_lm_eval():
        task = load_tasks([TASK])[TASK]
    loaded = LoadedModel(tiny_llama, tokenizer, "tiny", Path("."), "cpu", "float32", 0.0)
    ids = [3032, 314, 1342]
    text = tokenizer.decode(ids)
    cfg = variant_config(task, task_yaml_path(TASK), "v_chat", text, placement, "test", True)
    assert "description" not in cfg and text in cfg["doc_to_text"]
    (tmp_path / "v_chat.yaml").write_text(yaml.safe_dump(cfg))
    chat = ChatFormat()
    n, total = exact_requests(
        loaded, task, tmp_path, "v_chat", ids, placement, "test", [0, 1, 2], chat
    )
    assert total == 6 and n == total


def test_a_chat_mode_soft_prompt_is_no_peft_adapter(tokenizer) -> None:
    from blackbox.search_spaces.soft_prompt.peft_export import prompt_comes_first, soft_template

    task = SimpleNamespace(
        name=TASK, chat_template=True, system_instruction=None, fewshot_as_multiturn=None
    )
    task.multiturn = True
    cfg = SimpleNamespace(
        objective=SimpleNamespace(type="lm_eval_task"),
        space=SimpleNamespace(placement="before_input"),
        task=task,
    )
    assert prompt_comes_first(cfg, tokenizer) is False  # inside the user turn, not first
    template = soft_template(cfg, tokenizer)
    assert (
        template["chat_template"] is True
        and "start of its last user turn" in (template["sequence"])
    )
    task.chat_template = False
    assert prompt_comes_first(cfg, tokenizer) is True


def test_chat_mode_is_refused_before_the_model_loads(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A model whose tokenizer (on disk) has no chat template, and a perplexity task: one line,
    exit 2, no model loaded and nothing written."""
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    for name in ("chat_template.jinja", "chat_template.json"):
        (plain / name).unlink(missing_ok=True)
    tok_cfg = json.loads((plain / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(tok_cfg))

    def no_load(*_: Any, **__: Any) -> Any:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("blackbox.models.load_model", no_load)
    cases = [
        ({"name": str(plain)}, {"name": TASK}, "has no chat template"),
        ({"name": str(tiny_model_dir)}, {"name": "bb_rotten_tomatoes_ppl"}, "perplexity"),
    ]
    for model, task, message in cases:
        cfg = {
            "name": "chat_bad",
            "model": {**model, "device": "cpu", "dtype": "float32"},
            "task": {**task, "search_size": 4, "heldout_size": 4, "chat_template": True},
            "space": {
                "layers": [0, 3],
                "coeff": [-1.0, 1.0],
                "vectors": [{"unembed": ["a", "b"], "name": "v"}],
            },
            "strategy": {"name": "random", "population": 2},
            "budget": {"evaluations": 2},
        }
        if task["name"].endswith("_ppl"):
            cfg["task"]["metric"] = "word_perplexity"
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        out = tmp_path / "run"
        assert main(["run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config: task.chat_template:" in err[0] and message in err[0]
        assert not out.exists()
