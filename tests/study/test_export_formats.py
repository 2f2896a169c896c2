"""``blackbox export --format`` round-trips into the tools people evaluate and deploy with.

A tiny Llama saved to disk runs one short study per space on an lm-eval task; the export is then
loaded by the other tool, unchanged, and must give the run's held-out numbers:

- soft prompt (``before_input``) -> PEFT prompt-tuning adapter -> ``lm_eval --model hf
  --model_args pretrained=DIR,peft=ADAPTER`` on the held-out documents;
- token prompt -> lm-eval task variant -> ``lm_eval --include_path DIR --tasks NAME``;
- steering -> llama.cpp control vector (read back with ``gguf``; see also
  ``tests/search_spaces/test_vector_files.py``).

Every comparison is on lm-eval's metrics and on ``gold_logprob`` (the mean log-probability of
the gold choice), a continuous number that a shifted token or a misplaced prompt would move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import yaml

from blackbox.cli import main
from blackbox.evals.lm_eval_tasks import quiet_lm_eval, task_manager_for

TASK = "bb_rotten_tomatoes"


def _run(model: Path, tmp: Path, name: str, space: dict, seed: int = 0) -> tuple[Path, dict]:
    cfg = {
        "name": name,
        "seed": seed,
        "model": {"name": str(model), "device": "cpu"},
        "task": {"name": TASK, "search_size": 4, "heldout_size": 10},
        "space": space,
        "strategy": {"name": "random", "population": 2},
        "budget": {"evaluations": 4},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp / name
    assert main(["run", str(path), "--out", str(run), "--no-progress"]) == 0
    return run, json.loads((run / "result.json").read_text())


def _gold_logprob(samples: list[dict]) -> float:
    """The run's ``gold_logprob`` from lm-eval's logged samples."""
    terms = []
    for s in samples:
        ll = np.array([float(r[0]) for r in s["filtered_resps"]])
        ll = ll - ll.max()
        terms.append(ll[int(s["target"])] - np.log(np.exp(ll).sum()))
    return float(np.mean(terms))


def _lm_eval(model_args: dict, task: str, samples: list[int], manager: Any) -> dict[str, float]:
    import lm_eval

    with quiet_lm_eval():
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=[task],
            samples={task: samples},
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
    res = out["results"][task]
    metrics = {k.split(",")[0]: float(v) for k, v in res.items() if "," in k and "stderr" not in k}
    metrics["gold_logprob"] = _gold_logprob(out["samples"][task])
    return metrics


def _assert_reproduces(result: dict, got: dict[str, float]) -> None:
    held = result["best"]["heldout"]["metrics"]
    print(f"gold_logprob: run {held['gold_logprob']:.6f}, tool {got['gold_logprob']:.6f}")
    assert got["acc"] == held["acc"] and got["acc_norm"] == held["acc_norm"]
    assert got["gold_logprob"] == pytest.approx(held["gold_logprob"], abs=1e-4)
    assert result["best"]["heldout"]["score"] == held["acc"]


def test_soft_prompt_as_peft_adapter_reproduces_the_heldout_score(
    tiny_model_dir, tmp_path, capsys
) -> None:
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    space = {
        "type": "soft_prompt",
        "n_tokens": 3,
        "placement": "before_input",
        "subspace_dim": 4,
        "bound": 3.0,
        "projection": {"enabled": False},
    }
    run, result = _run(tiny_model_dir, tmp_path, "soft_peft", space)
    unprompted = result["baselines"]["no prompt"]["heldout"]["metrics"]["gold_logprob"]
    capsys.readouterr()
    assert main(["export", str(run), "--format", "peft"]) == 0
    adapter = run / "peft_adapter"
    printed = capsys.readouterr().out.splitlines()  # the held-out score and the lm_eval command
    assert printed[1].endswith(f"held-out {result['best']['heldout']['score']:.4f}")
    assert f"pretrained={tiny_model_dir.resolve()},peft={adapter.resolve()}" in printed[2]
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "samples.json",
    ]
    files = json.loads((run / "result.json").read_text())["files"]
    assert "peft_adapter/adapter_model.safetensors" in files and "soft_prompt.safetensors" in files

    # PEFT's own loader: the virtual tokens are the run's soft prompt, before the input
    conf = PeftConfig.from_pretrained(str(adapter))
    assert (conf.peft_type, conf.num_virtual_tokens, conf.token_dim) == ("PROMPT_TUNING", 3, 64)
    base = AutoModelForCausalLM.from_pretrained(conf.base_model_name_or_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    from safetensors.torch import load_file

    soft = load_file(str(run / "soft_prompt.safetensors"))["embeddings"]  # (3, 64)
    ids = torch.tensor([[504, 2114, 42, 9]])
    with torch.no_grad():
        got = peft_model(input_ids=ids).logits[0, -1]
        emb = torch.cat([soft[None], base.get_input_embeddings()(ids)], 1)
        want = base(inputs_embeds=emb).logits[0, -1]
    torch.testing.assert_close(got, want)

    # lm-eval: pretrained=MODEL,peft=ADAPTER on the run's held-out documents
    samples = json.loads((adapter / "samples.json").read_text())[TASK]
    assert len(samples) == result["splits"]["heldout"] == 10
    got_metrics = _lm_eval(
        {"pretrained": str(tiny_model_dir), "peft": str(adapter), "device": "cpu"},
        TASK,
        samples,
        task_manager_for([TASK]),
    )
    _assert_reproduces(result, got_metrics)
    assert got_metrics["gold_logprob"] != pytest.approx(unprompted, abs=1e-4)  # the prompt acts


def test_soft_prompt_after_input_is_embeddings_and_template(
    tiny_model_dir, tmp_path, capsys
) -> None:
    space = {
        "type": "soft_prompt",
        "n_tokens": 2,
        "placement": "after_input",
        "subspace_dim": 4,
        "projection": {"enabled": False},
    }
    run, _ = _run(tiny_model_dir, tmp_path, "soft_after", space)
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "x")]) == 0
    assert "cannot be expressed as a PEFT adapter" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "embeddings.safetensors",
        "template.json",
    ]
    template = json.loads((tmp_path / "x" / "template.json").read_text())
    assert template["sequence"] == "{context}{prompt}{continuation}"
    assert template["note"].startswith("PEFT prompt tuning puts its virtual tokens before")


@pytest.mark.parametrize("placement", ["before_input", "after_input"])
def test_token_prompt_as_lm_eval_task_variant_reproduces_the_heldout_score(
    tiny_model_dir, tmp_path, placement, capsys
) -> None:
    from lm_eval.tasks import TaskManager

    space = {"type": "tokens", "n_tokens": 3, "placement": placement}
    run, result = _run(tiny_model_dir, tmp_path, f"tok_{placement}", space)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "lm_eval"]) == 0
    assert "tokenises" not in capsys.readouterr().err  # every held-out request: the same ids
    out = run / "lm_eval_task"
    name = f"{TASK}_tok_{placement}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.yaml", "samples.json", "prompt.txt"]
    )
    text = (out / "prompt.txt").read_text()
    assert text == result["prompt"]["text"]
    variant = yaml.safe_load((out / f"{name}.yaml").read_text())
    assert variant["include"].endswith(f"{TASK}.yaml") and variant["task"] == name
    field = "description" if placement == "before_input" else "doc_to_text"
    assert "{% raw %}" + text + "{% endraw %}" in variant[field]
    samples = json.loads((out / "samples.json").read_text())[name]
    with quiet_lm_eval():
        manager = TaskManager(include_defaults=False, include_path=str(out))
    got = _lm_eval({"pretrained": str(tiny_model_dir), "device": "cpu"}, name, samples, manager)
    _assert_reproduces(result, got)
    files = json.loads((run / "result.json").read_text())["files"]
    assert f"lm_eval_task/{name}.yaml" in files


def test_steering_exports_a_control_vector_and_every_format(tiny_model_dir, tmp_path) -> None:
    torch.save(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)), tmp_path / "v.pt")
    space = {
        "type": "steering",
        "layers": [1, 3],
        "vectors": [{"name": "v", "file": str(tmp_path / "v.pt")}],
    }
    run, result = _run(tiny_model_dir, tmp_path, "steer_gguf", space)
    assert main(["export", str(run), "--format", "all"]) == 0
    cand = result["best"]["candidate"]
    reader = gguf.GGUFReader(str(run / "control_vector.gguf"))
    steered = torch.load(run / "steered.pt", weights_only=True)
    (hook,) = steered
    assert [t.name for t in reader.tensors] == [f"direction.{cand['v.layer']}"]
    assert hook == f"layers.{cand['v.layer']}"
    np.testing.assert_array_equal(reader.tensors[0].data, steered[hook]["steering_vector"].numpy())
    files = json.loads((run / "result.json").read_text())["files"]
    assert {"steered.pt", "control_vector.gguf"} <= set(files)
    # a format of another space: one line, exit 2, nothing written
    assert main(["export", str(run), "--format", "peft"]) == 2
    assert not (run / "peft_adapter").exists()
