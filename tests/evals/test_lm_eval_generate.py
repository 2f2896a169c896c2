"""Generative and perplexity lm-eval tasks as fitness: the same strings, metrics and
log-likelihoods as lm-eval's ``simple_evaluate`` with its HF model, steered and unsteered, on
lm-eval's own ``triviaqa`` and ``nq_open`` (offline) and a bundled perplexity task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.evals.lm_eval_generate import StopCheck, finish_text, generated_metrics
from blackbox.evals.lm_eval_metrics import task_metrics
from blackbox.evals.lm_eval_requests import TaskSplitSpec
from blackbox.evals.lm_eval_task import LMEvalTask
from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval
from blackbox.evals.parity import evaluate_samples
from blackbox.models.layers import hidden_size, num_layers
from blackbox.search_spaces.steering.space import Edit, SteeringSpace
from blackbox.search_spaces.steering.vectors import SteeringVector


@pytest.fixture(scope="module")
def hflm(tiny_llama, tokenizer):
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        return HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=4, device="cpu")


def _space(model) -> SteeringSpace:
    n_layers, d = num_layers(model), hidden_size(model)
    g = torch.Generator().manual_seed(3)
    vecs = [
        SteeringVector(v, torch.randn(n_layers, d, generator=g), torch.full((n_layers,), 2.0))
        for v in ("a", "b")
    ]
    return SteeringSpace(vecs, layer_range=(0, n_layers - 1), coeff_range=(-3, 3))


def _simple_evaluate(lm, task, split, samples, apply=None):
    """lm-eval's results for the task and its logged samples in document order."""
    out = evaluate_samples(lm, task, split, samples, apply)
    name = task.config.task
    return out["results"][name], sorted(out["samples"][name], key=lambda s: s["doc_id"])


@pytest.mark.parametrize(("name", "extra_stop"), [("triviaqa", "e"), ("nq_open", ":::")])
def test_generation_equals_simple_evaluate(
    name: str, extra_stop: str, standard_data_dir, tiny_llama, hflm
) -> None:
    """Strings (after stop strings and EOS), filtered responses and exact_match equal lm-eval's
    HF model, unsteered and steered; generation stops exactly where lm-eval cuts."""
    with quiet_lm_eval():
        task = load_tasks(name)[name]
    # a random model rarely says "\n", "." or ",": one more stop string it does say (seen in
    # its output), so that rows stop mid-way, some inside a token
    task.config.generation_kwargs["max_gen_toks"] = 12
    task.config.generation_kwargs["until"] = [*task.config.generation_kwargs["until"], extra_stop]
    split = "validation"
    samples = list(range(0, 24, 3))
    space = _space(tiny_llama)
    obj = LMEvalTask(task, hflm, {"search": TaskSplitSpec(split, samples)}, metric="exact_match")
    assert obj.prepared("search").kind == "generate_until"
    cands = [space.baseline(), (Edit("a", 1, 1.5), Edit("b", 3, -1.0))]
    ev = obj.evaluate(space.intervention(cands))
    texts, calls = obj.generate(space.intervention(cands), obj.prepared("search"))
    assert ev.cost == sum(calls) and 0 < ev.cost < 2 * len(samples) * 12  # some rows stopped early
    for c, cand in enumerate(cands):
        res, per_doc = _simple_evaluate(
            hflm, task, split, samples, lambda c=cand: space.apply(tiny_llama, [c])
        )
        assert texts[c] == [s["resps"][0][0] for s in per_doc]
        assert (
            ev.metrics[c]["exact_match,remove_whitespace"] == res["exact_match,remove_whitespace"]
        )
        assert ev.values[c] == res["exact_match,remove_whitespace"]
        np.testing.assert_array_equal(ev.per_doc[c], [s["exact_match"] for s in per_doc])


def test_generated_metrics_apply_the_tasks_filters(standard_data_dir) -> None:
    """exact_match after the task's remove_whitespace filter, case and punctuation ignored, per
    document; every filter's name in the metric key."""
    with quiet_lm_eval():
        task = load_tasks("triviaqa")["triviaqa"]
    docs = [task.validation_docs()[i] for i in range(3)]
    aliases = [d["answer"]["aliases"] for d in docs]
    texts = [[" " + aliases[0][0].upper() + "."], ["  " + aliases[1][0]], ["certainly not"]]
    m, per_doc = generated_metrics(task, docs, texts)
    assert m["exact_match"] == m["exact_match,remove_whitespace"] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(per_doc["exact_match"], [1.0, 1.0, 0.0])
    assert task_metrics(task) == ["exact_match", "exact_match,remove_whitespace"]


def test_stop_check_waits_for_a_stop_string(tokenizer, hflm) -> None:
    ids = tokenizer("Paris is nice. Yes", add_special_tokens=False)["input_ids"]
    stop = StopCheck(hflm, [["."], ["\n"]])
    cut = next(k for k in range(1, len(ids) + 1) if "." in tokenizer.decode(ids[:k]))
    assert [stop(0, ids[:k]) for k in range(1, len(ids) + 1)].index(True) == cut - 1
    assert not any(stop(1, ids[:k]) for k in range(1, len(ids) + 1))
    assert finish_text(hflm, ids, [".", "\n"]) == "Paris is nice"


def test_perplexity_task_equals_simple_evaluate(bundled_data_dir, tiny_llama, hflm) -> None:
    """loglikelihood_rolling: word/byte perplexity and bits per byte equal lm-eval's, steered
    and unsteered; lower is better, so the value is minus the metric."""
    name = "bb_rotten_tomatoes_ppl"
    with quiet_lm_eval():
        task = load_tasks(name)[name]
    samples = list(range(6))
    space = _space(tiny_llama)
    obj = LMEvalTask(task, hflm, {"search": TaskSplitSpec("test", samples)}, metric="bits_per_byte")
    cands = [space.baseline(), (Edit("a", 2, 1.0),)]
    ev = obj.evaluate(space.intervention(cands))
    assert ev.cost == 2 * len(samples)
    for c, cand in enumerate(cands):
        res, _ = _simple_evaluate(
            hflm, task, "test", samples, lambda c=cand: space.apply(tiny_llama, [c])
        )
        for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
            assert ev.metrics[c][metric] == pytest.approx(res[f"{metric},none"], rel=1e-6)
        assert ev.values[c] == pytest.approx(-res["bits_per_byte,none"], rel=1e-6)
    assert ev.values[0] != ev.values[1]


def test_prompts_generate_as_generate_does(standard_data_dir, tiny_llama, hflm) -> None:
    """A token prompt after the question decodes as ``generate`` on the question's ids followed
    by the prompt's; a soft prompt holding those tokens' embeddings gives the same strings."""
    from blackbox.api import PromptIntervention
    from blackbox.evals.lm_eval_generate import finish_text

    with quiet_lm_eval():
        task = load_tasks("triviaqa")["triviaqa"]
    task.config.generation_kwargs["max_gen_toks"] = 6
    task.config.generation_kwargs["until"] = [*task.config.generation_kwargs["until"], "e"]
    samples = [1, 4, 7]
    obj = LMEvalTask(
        task,
        hflm,
        {"search": TaskSplitSpec("validation", samples)},
        metric="exact_match",
        placement="after_input",
    )
    prompt = (300, 301, 302)
    soft = tiny_llama.get_input_embeddings()(torch.tensor(prompt)).detach()
    iv = PromptIntervention([None, soft], [prompt, None], [True, True], ["tokens", "soft"])
    prep = obj.prepared("search")
    texts, _ = obj.generate(iv, prep)
    assert texts[0] == texts[1]
    for j, g in enumerate(prep.gen):
        x = torch.tensor([[*g.ids, *prompt]])
        out = tiny_llama.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False
        )[0, x.shape[1] :].tolist()
        cut = next((k + 1 for k in range(len(out)) if "e" in hflm.tok_decode(out[: k + 1])), 6)
        assert texts[0][j] == finish_text(hflm, out[:cut], g.until)
