"""lm-eval's chat-template mode (``task.chat_template``, ``lm_eval --apply_chat_template``):
the fast path's scores and strings equal ``simple_evaluate(apply_chat_template=True)`` with
lm-eval's HF model, steered and unsteered, on a multiple-choice and a generative task; a prompt
is spliced inside the user turn; bad input is one line."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blackbox.api import PromptIntervention
from blackbox.errors import ConfigError, UserError
from blackbox.evals.lm_eval_chat import ChatFormat
from blackbox.evals.lm_eval_requests import TaskSplitSpec, prepare_split
from blackbox.evals.lm_eval_task import LMEvalTask
from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval
from blackbox.evals.parity import evaluate_samples
from blackbox.models.layers import hidden_size, num_layers
from blackbox.search_spaces.steering.space import Edit, SteeringSpace
from blackbox.search_spaces.steering.vectors import SteeringVector

CHAT = ChatFormat()
STUDY = Path(__file__).resolve().parents[2] / "studies" / "steer_rotten_tomatoes.yaml"


def _demo() -> dict:
    return yaml.safe_load(STUDY.read_text())


@pytest.fixture(scope="module")
def hflm(tiny_llama, tokenizer):
    from lm_eval.models.huggingface import HFLM

    assert tokenizer.chat_template  # SmolLM2-Instruct's ChatML template
    with quiet_lm_eval():
        return HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=4, device="cpu")


def _space(model) -> SteeringSpace:
    n_layers, d = num_layers(model), hidden_size(model)
    g = torch.Generator().manual_seed(5)
    vecs = [
        SteeringVector(v, torch.randn(n_layers, d, generator=g), torch.full((n_layers,), 2.0))
        for v in ("a", "b")
    ]
    return SteeringSpace(vecs, layer_range=(0, n_layers - 1), coeff_range=(-3, 3))


def _simple_evaluate(lm, task, split, samples, apply=None, **kw):
    """``simple_evaluate``'s results for the task and its logged samples in document order."""
    out = evaluate_samples(lm, task, split, samples, apply, **kw)
    name = task.config.task
    return out["results"][name], sorted(out["samples"][name], key=lambda s: s["doc_id"])


def _task(name: str):
    with quiet_lm_eval():
        return load_tasks([name])[name]


def test_multiple_choice_equals_simple_evaluate_with_the_chat_template(tiny_llama, hflm) -> None:
    task = _task("bb_rotten_tomatoes")
    samples = list(range(0, 16, 2))
    space = _space(tiny_llama)
    spec = {"search": TaskSplitSpec("train", samples)}
    obj = LMEvalTask(task, hflm, spec, metric="acc", chat=CHAT, max_batch_tokens=4096)
    cands = [space.baseline(), (Edit("a", 1, 2.5), Edit("b", 3, -2.0))]
    ev = obj.evaluate(space.intervention(cands))
    for c, cand in enumerate(cands):
        res, per_doc = _simple_evaluate(
            hflm,
            task,
            "train",
            samples,
            lambda c=cand: space.apply(tiny_llama, [c]),
            apply_chat_template=True,
        )
        # the contexts lm-eval scored are the chat-rendered ones
        assert all(s["arguments"][0][0].startswith("<|im_start|>") for s in per_doc)
        assert ev.values[c] == res["acc,none"] and ev.metrics[c]["acc_norm"] == res["acc_norm,none"]
        ref = [[float(r[0]) for r in s["filtered_resps"]] for s in per_doc]
        got = obj.request_logliks(space.intervention([cand]))
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(ref), atol=1e-4, rtol=0)


@pytest.mark.parametrize("multiturn", [True, False])
def test_system_instruction_and_few_shot_turns_equal_simple_evaluate(
    multiturn: bool, tiny_llama, hflm
) -> None:
    """A system instruction and one few-shot example, as turns or folded into one user turn:
    the same contexts (so the same log-likelihoods) as lm-eval's."""
    task = _task("bb_rotten_tomatoes")
    task.set_config("num_fewshot", 1)
    samples = [1, 4, 9]
    chat = ChatFormat("Answer with one word.", fewshot_as_multiturn=multiturn)
    task.set_fewshot_seed(99)  # prepare_split re-seeds it as simple_evaluate does
    obj = LMEvalTask(task, hflm, {"search": TaskSplitSpec("train", samples)}, chat=chat)
    got = obj.request_logliks(_space(tiny_llama).intervention([()]))
    res, per_doc = _simple_evaluate(hflm, task, "train", samples, **chat.simple_evaluate_kw())
    ctx = per_doc[0]["arguments"][0][0]
    assert ctx.startswith("<|im_start|>system\nAnswer with one word.<|im_end|>")
    assert ctx.count("<|im_start|>user") == (2 if multiturn else 1)
    ref = [[float(r[0]) for r in s["filtered_resps"]] for s in per_doc]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(ref), atol=1e-4, rtol=0)


def test_generation_equals_simple_evaluate_with_the_chat_template(
    standard_data_dir, tiny_llama, hflm
) -> None:
    task = _task("triviaqa")
    task.config.generation_kwargs["max_gen_toks"] = 12
    task.config.generation_kwargs["until"] = [*task.config.generation_kwargs["until"], "e"]
    samples = list(range(0, 24, 3))
    space = _space(tiny_llama)
    spec = {"search": TaskSplitSpec("validation", samples)}
    obj = LMEvalTask(task, hflm, spec, metric="exact_match", chat=CHAT)
    prep = obj.prepared("search")
    assert prep.kind == "generate_until" and all(g.splice is not None for g in prep.gen)
    cands = [space.baseline(), (Edit("a", 1, 1.5), Edit("b", 3, -1.0))]
    ev = obj.evaluate(space.intervention(cands))
    texts, _ = obj.generate(space.intervention(cands), prep)
    for c, cand in enumerate(cands):
        res, per_doc = _simple_evaluate(
            hflm,
            task,
            "validation",
            samples,
            lambda c=cand: space.apply(tiny_llama, [c]),
            apply_chat_template=True,
        )
        assert all(s["arguments"][0][0].endswith("assistant\n") for s in per_doc)
        assert texts[c] == [s["resps"][0][0] for s in per_doc]
        assert ev.values[c] == res["exact_match,remove_whitespace"]
        np.testing.assert_array_equal(ev.per_doc[c], [s["exact_match"] for s in per_doc])


def test_chat_contexts_differ_from_plain_ones(standard_data_dir, hflm, tokenizer) -> None:
    """The option is no no-op: the same documents, other contexts (the plain text sits inside
    the user turn of the chat-rendered one), for both request types."""
    for name, split in (("bb_rotten_tomatoes", "train"), ("triviaqa", "validation")):
        task = _task(name)
        with quiet_lm_eval():
            plain = prepare_split(task, hflm, split, [0, 3], False)
            chat = prepare_split(task, hflm, split, [0, 3], False, CHAT)
        ctx_plain = [list(c) for c, _ in plain.pairs] or [list(g.ids) for g in plain.gen]
        ctx_chat = [list(c) for c, _ in chat.pairs] or [list(g.ids) for g in chat.gen]
        at = chat.splice_at or [g.splice for g in chat.gen]
        assert len(ctx_chat) == len(ctx_plain) and plain.splice_at is None
        for p, c, (a, b) in zip(ctx_plain, ctx_chat, at):
            assert p != c
            assert tokenizer.decode(c[:a]).endswith("<|im_start|>user\n")
            assert tokenizer.decode(c[b:]).startswith("<|im_end|>\n<|im_start|>assistant")
            assert tokenizer.decode(c[a:b]) == tokenizer.decode(p)  # the plain text, whole


@pytest.mark.parametrize("placement", ["before_input", "after_input"])
def test_a_prompt_goes_inside_the_user_turn(placement: str, tiny_llama, hflm) -> None:
    """Token and soft prompts at the start or the end of the user turn's text: the fast
    path's log-likelihoods are those of a plain forward of the spliced sequence."""
    task = _task("bb_rotten_tomatoes")
    spec = {"search": TaskSplitSpec("train", [0, 5, 6])}
    obj = LMEvalTask(task, hflm, spec, placement=placement, chat=CHAT, max_rows=4)
    prep = obj.prepared("search")
    prompt = [300, 301, 302]
    soft = tiny_llama.get_input_embeddings()(torch.tensor(prompt)).detach()
    iv = PromptIntervention([None, soft], [prompt, None], [True, True], ["tokens", "soft"])
    got = [np.concatenate(obj.request_logliks(iv.subset([i]))) for i in range(2)]
    ref = []
    for (ctx, cont), (a, b) in zip(prep.pairs, prep.splice_at):
        at = a if placement == "before_input" else b
        ids = torch.tensor([[*ctx[:at], *prompt, *ctx[at:], *cont]])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama(input_ids=ids).logits[0], -1)
        start = len(ctx) + len(prompt)
        rows = logp[start - 1 : start - 1 + len(cont)]
        ref.append(float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()))
    np.testing.assert_allclose(got[0], ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], ref, atol=1e-4, rtol=0)


def test_a_generation_prompt_goes_inside_the_user_turn(standard_data_dir, tiny_llama, hflm):
    from blackbox.evals.lm_eval_generate import finish_text

    task = _task("triviaqa")
    task.config.generation_kwargs["max_gen_toks"] = 5
    spec = {"search": TaskSplitSpec("validation", [2, 5])}
    obj = LMEvalTask(task, hflm, spec, metric="exact_match", placement="after_input", chat=CHAT)
    prep = obj.prepared("search")
    prompt = (300, 301, 302)
    texts, _ = obj.generate(PromptIntervention.of_ids([list(prompt)]), prep)
    for j, g in enumerate(prep.gen):
        at = g.splice[1]
        x = torch.tensor([[*g.ids[:at], *prompt, *g.ids[at:]]])
        out = tiny_llama.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False
        )[0, x.shape[1] :].tolist()
        assert texts[0][j] == finish_text(hflm, out, g.until)


# -- bad input ---------------------------------------------------------------------------------
def test_a_tokenizer_without_a_chat_template_is_one_line(tiny_llama, tokenizer) -> None:
    """Refused when the objective is built, before any request is built or scored."""
    from types import SimpleNamespace

    from blackbox.config import apply_overrides, validate
    from blackbox.study.context import BuildContext

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    cfg = validate(apply_overrides(_demo(), ["task.chat_template=true"]))
    loaded = SimpleNamespace(model=tiny_llama, tokenizer=plain, device="cpu")
    with pytest.raises(ConfigError) as info:
        LMEvalTask.from_config(cfg.objective, BuildContext(cfg, loaded))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("config: task.chat_template: the model's tokenizer (")
    assert "has no chat template" in msg and "allowed: false, or a model whose" in msg
    with pytest.raises(UserError, match="has no chat template"):
        LMEvalTask(_task("bb_rotten_tomatoes"), SimpleNamespace(tokenizer=plain), {}, chat=CHAT)


def test_a_perplexity_task_takes_no_chat_template(hflm) -> None:
    with pytest.raises(UserError) as info:
        LMEvalTask(_task("bb_rotten_tomatoes_ppl"), hflm, {}, metric="word_perplexity", chat=CHAT)
    assert str(info.value) == (
        "task 'bb_rotten_tomatoes_ppl' scores perplexity (loglikelihood_rolling), whose texts "
        "lm-eval never renders through a chat template; allowed: false"
    )


def test_chat_options_without_the_chat_template_are_one_line() -> None:
    from blackbox.config import apply_overrides, validate

    for key, value in (("system_instruction", "Be brief."), ("fewshot_as_multiturn", "true")):
        with pytest.raises(ConfigError) as info:
            validate(apply_overrides(_demo(), [f"task.{key}={value}"]))
        assert str(info.value) == (
            f"config: task.{key}: applies only with task.chat_template: true (lm-eval's "
            f"--{key} goes with --apply_chat_template); allowed: null, or set "
            "task.chat_template: true"
        )
    cfg = validate(
        apply_overrides(_demo(), ["task.chat_template=true", "task.system_instruction=Hi"])
    )
    assert ChatFormat.of(cfg.task) == ChatFormat("Hi", True)
    assert ChatFormat.of(validate(_demo()).task) is None


def test_the_lm_eval_arguments_build_the_same_requests() -> None:
    assert ChatFormat().cli_args() == "--apply_chat_template --fewshot_as_multiturn"
    args = ChatFormat("-Don't ramble.", fewshot_as_multiturn=False).cli_args()
    assert args == (
        "--apply_chat_template '--system_instruction=-Don'\"'\"'t ramble.' "
        "--fewshot_as_multiturn false"
    )
