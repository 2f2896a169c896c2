"""A soft prompt inside a real lm-eval task (bundled Rotten Tomatoes) on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.evals.lm_eval_task import prepare_split
from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval
from blackbox.evals.soft_lm_eval import SoftLMEvalTask
from blackbox.search_spaces.soft_prompt import SoftPrompt


@pytest.fixture(scope="module")
def task_lm(tiny_llama, tokenizer, bundled_data_dir):
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        task = next(iter(load_tasks(["bb_rotten_tomatoes"]).values()))
        lm = HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=4, device="cpu")
    prep = prepare_split(task, lm, "train", list(range(6)))
    return task, prep


@pytest.mark.parametrize("placement", ["before_input", "after_input"])
def test_metrics_are_lm_evals_on_the_spliced_sequence(placement, task_lm, tiny_llama) -> None:
    task, prep = task_lm
    obj = SoftLMEvalTask(tiny_llama, task, {"search": prep}, placement=placement, max_rows=5)
    soft = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 0.05
    ev = obj.evaluate([SoftPrompt(s) for s in soft])
    emb = tiny_llama.get_input_embeddings()
    for c in range(2):
        lls, results = [], []
        for ctx, cont in prep.pairs:
            parts = [emb(torch.tensor(ctx)), emb(torch.tensor(cont))]
            parts.insert(0 if placement == "before_input" else 1, soft[c])
            logp = torch.log_softmax(tiny_llama(inputs_embeds=torch.cat(parts)[None]).logits[0], -1)
            start = (
                (3 if placement == "before_input" else 0)
                + len(ctx)
                + (0 if placement == "before_input" else 3)
            )
            rows = logp[start - 1 : start - 1 + len(cont)]
            lls.append(float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()))
            results.append(bool((rows.argmax(-1) == torch.tensor(cont)).all()))
        accs = []
        for d, doc in enumerate(prep.docs):
            rs = [(lls[r], results[r]) for r in prep.requests_of_doc[d]]
            accs.append(task.process_results(doc, rs)["acc"])
        assert ev.values[c] == pytest.approx(np.mean(accs))
        gold = [
            float(
                torch.log_softmax(torch.tensor([lls[r] for r in prep.requests_of_doc[d]]), 0)[
                    task.doc_to_target(doc)
                ]
            )
            for d, doc in enumerate(prep.docs)
        ]
        assert ev.metrics[c]["gold_logprob"] == pytest.approx(np.mean(gold), abs=1e-4)
    assert ev.cost == 2 * len(prep.pairs)


def test_minibatch_loss_is_differentiable_and_counts_requests(task_lm, tiny_llama) -> None:
    task, prep = task_lm
    obj = SoftLMEvalTask(tiny_llama, task, {"search": prep})
    assert obj.n_examples() == 6 and len(obj.items("search")) == 12  # two choices a document
    soft = (
        torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(1)) * 0.05
    ).requires_grad_()
    loss = obj.loss(soft, idx=[1, 4])
    loss.sum().backward()
    assert soft.grad.abs().sum() > 0
    parts = [float(obj.loss(soft.detach(), idx=[d])[0]) for d in (1, 4)]
    assert float(loss[0].detach()) == pytest.approx(np.mean(parts), abs=1e-5)
    assert obj.gradient_cost([1, 4]) == 3 * 4


def test_bad_metric_and_placement_are_one_line(task_lm, tiny_llama) -> None:
    task, prep = task_lm
    with pytest.raises(ValueError, match="'f1' is not a metric of the task"):
        SoftLMEvalTask(tiny_llama, task, {"search": prep}, metric="f1")
    with pytest.raises(ValueError, match="takes before_input or after_input"):
        SoftLMEvalTask(tiny_llama, task, {"search": prep}, placement="system")


def test_an_empty_soft_prompt_is_the_task_unchanged(task_lm, tiny_llama) -> None:
    task, prep = task_lm
    obj = SoftLMEvalTask(tiny_llama, task, {"search": prep}, placement="after_input")
    ll, _ = obj.request_scores(torch.zeros(1, 0, 64), "search")
    emb = tiny_llama.get_input_embeddings()
    for r, (ctx, cont) in enumerate(prep.pairs):
        x = emb(torch.tensor(ctx + cont))[None]
        logp = torch.log_softmax(tiny_llama(inputs_embeds=x).logits[0], -1)
        want = logp[len(ctx) - 1 : -1][torch.arange(len(cont)), torch.tensor(cont)].sum()
        assert float(ll[0, r]) == pytest.approx(float(want), abs=1e-4)
