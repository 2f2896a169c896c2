"""An lm-eval task under every intervention: the steering engine equals lm-eval's own
simple_evaluate; the prompt engine equals a plain forward of the spliced sequence."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from blackbox.api import Problem, PromptIntervention
from blackbox.evals.lm_eval_requests import TaskSplitSpec, merge_rows
from blackbox.evals.lm_eval_task import LMEvalTask
from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval
from blackbox.evals.parity import reference_scores
from blackbox.forward.rows import ancestry
from blackbox.models.layers import hidden_size, num_layers
from blackbox.search_spaces.steering.space import Edit, SteeringSpace
from blackbox.search_spaces.steering.vectors import SteeringVector
from blackbox.testing.objectives import ObjectiveConformance


def test_merge_rows_plain_shares_identical_inputs_and_places_queries() -> None:
    pairs = [([1, 2, 3], [7]), ([1, 2, 3], [8]), ([1, 2], [3, 9]), ([5], [6, 7, 8])]
    rows, per_req = merge_rows(pairs, max_length=100, pack=False)
    # the two one-token choices share the row [1, 2, 3]; [1,2]+[3,9] -> input [1,2,3] too
    assert rows.tokens == [[1, 2, 3], [5, 6, 7]] and rows.parents is None
    assert [list(rows.q_pos[q]) for q in per_req] == [[2], [2], [1, 2], [0, 1, 2]]
    assert [list(rows.q_tok[q]) for q in per_req] == [[7], [8], [3, 9], [6, 7, 8]]
    # lm-eval's left truncation keeps the last max_length + 1 tokens, minus the last
    rows, per_req = merge_rows([([1, 2, 3, 4, 5], [6])], max_length=3, pack=False)
    assert rows.tokens == [[3, 4, 5]] and list(rows.q_pos[per_req[0]]) == [2]


def test_merge_rows_packs_choices_of_a_context_into_one_tree() -> None:
    pairs = [([1, 2, 3], [7, 4, 5]), ([1, 2, 3], [7, 4, 6]), ([1, 2, 3], [8, 1]), ([1, 2, 3], [9])]
    pairs += [([5], [6, 7, 8])]
    rows, per_req = merge_rows(pairs, max_length=100)
    # context once, then the prefix tree of the continuations (minus their last tokens); the
    # second question's row [5, 6, 7] is packed beside it as an independent segment
    assert rows.tokens == [[1, 2, 3, 7, 4, 8, 5, 6, 7]] and rows.sequences == 2
    assert list(rows.parents[0]) == [-1, 0, 1, 2, 3, 2, -1, 6, 7]
    assert [list(rows.q_pos[q]) for q in per_req] == [[2, 3, 4], [2, 3, 4], [2, 5], [2], [6, 7, 8]]
    assert [list(rows.q_tok[q]) for q in per_req] == [[7, 4, 5], [7, 4, 6], [8, 1], [9], [6, 7, 8]]
    allowed, depth = ancestry(rows.parents[0])
    assert list(depth) == [0, 1, 2, 3, 4, 3, 0, 1, 2]  # the 8 sits where it would in its own row
    assert allowed[5].tolist() == [True, True, True, False, False, True, False, False, False]
    assert allowed[8].tolist() == [False] * 6 + [True] * 3  # segments never see each other
    # a request that needs truncation keeps a plain row of its own
    rows, per_req = merge_rows([([1, 2, 3, 4, 5], [6]), ([1, 2, 3, 4, 5], [7])], max_length=3)
    assert rows.tokens == [[3, 4, 5]] and rows.parents is None


def _split(task) -> str:
    """The split the tests draw documents from: train where the task has one (the bundled
    task), else its eval split (a standard task has only ``validation``)."""
    return task.config.training_split or task.config.validation_split


def _objective(
    model,
    tokenizer,
    task_name: str,
    samples,
    max_batch_tokens: int = 4096,
    branch: bool = True,
    placement: str = "before_input",
    max_rows: int = 32,
):
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        task = next(iter(load_tasks([task_name]).values()))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    n_layers, d = num_layers(model), hidden_size(model)
    g = torch.Generator().manual_seed(1)
    vecs = [
        SteeringVector(n, torch.randn(n_layers, d, generator=g), torch.full((n_layers,), 2.0))
        for n in ("a", "b")
    ]
    space = SteeringSpace(vecs, layer_range=(0, n_layers - 1), coeff_range=(-3, 3))
    obj = LMEvalTask(
        task,
        lm,
        {"search": TaskSplitSpec(_split(task), list(samples))},
        max_batch_tokens=max_batch_tokens,
        branch=branch,
        placement=placement,
        max_rows=max_rows,
    )
    return obj, space, lm, task


CANDIDATES = [
    (),
    ((Edit("a", 1, 1.5), Edit("b", 3, 0.0))),
    ((Edit("a", 0, -2.0), Edit("b", 2, 1.0))),
    ((Edit("a", 3, 3.0), Edit("b", 3, -3.0))),
]


@pytest.mark.parametrize("task_name", ["bb_rotten_tomatoes", "social_iqa"])
def test_fast_path_equals_simple_evaluate_tiny(tiny_llama, tokenizer, task_name) -> None:
    samples = list(range(0, 24, 2))
    obj, space, lm, task = _objective(tiny_llama, tokenizer, task_name, samples)
    cands = [space.baseline()] + [c for c in CANDIDATES[1:]]
    ev = obj.evaluate(space.intervention(cands))
    assert obj.scorer.resume_ok is True  # the trunk-resume path was taken and self-checked
    if task_name == "social_iqa":  # multi-token choices: one packed row per question
        assert obj.scorer.packing is True
        assert obj.prepared("search").rows.sequences == len(samples)
    assert ev.cost == len(cands) * len(samples)  # one forward-pass equivalent per document
    for c, value, metrics in zip(cands, ev.values, ev.metrics):
        ref_metrics, ref_lls = reference_scores(
            lm, task, _split(task), samples, lambda c=c: space.apply(tiny_llama, [c])
        )
        assert value == ref_metrics["acc"]
        if "acc_norm" in ref_metrics:  # social_iqa declares acc only
            assert metrics["acc_norm"] == ref_metrics["acc_norm"]
        fast_lls = obj.request_logliks(space.intervention([c]))
        np.testing.assert_allclose(
            np.concatenate(fast_lls), np.concatenate(ref_lls), atol=1e-4, rtol=0
        )


def test_repeats_are_cached_and_batching_does_not_change_scores(tiny_llama, tokenizer) -> None:
    samples = list(range(16))
    obj, space, *_ = _objective(
        tiny_llama, tokenizer, "bb_rotten_tomatoes", samples, max_batch_tokens=256
    )
    big, *_ = _objective(
        tiny_llama, tokenizer, "bb_rotten_tomatoes", samples, max_batch_tokens=1 << 16, branch=False
    )
    cands = [space.baseline(), CANDIDATES[1], CANDIDATES[2], CANDIDATES[1]]
    ev = obj.evaluate(space.intervention(cands))
    assert [m["cache_hit"] for m in ev.metrics] == [False, False, False, True]
    assert ev.values[1] == ev.values[3]
    ev2 = obj.evaluate(space.intervention(cands[:2]))
    assert all(m["cache_hit"] for m in ev2.metrics) and ev2.cost == 0
    ref = big.evaluate(space.intervention(cands))
    np.testing.assert_array_equal(ev.values, ref.values)
    a = np.concatenate(obj.request_logliks(space.intervention([CANDIDATES[2]])))
    b = np.concatenate(big.request_logliks(space.intervention([CANDIDATES[2]])))
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_limit_scores_a_prefix(tiny_llama, tokenizer) -> None:
    obj, space, *_ = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", list(range(20)))
    small, *_ = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", list(range(8)))
    iv = space.intervention([CANDIDATES[2]])
    assert obj.evaluate(iv, limit=8).values[0] == small.evaluate(iv).values[0]
    soft = PromptIntervention.of_embeddings([torch.randn(2, 64) * 0.05])
    assert obj.evaluate(soft, limit=8).values[0] == small.evaluate(soft).values[0]


def test_per_document_accuracy_and_slices_of_documents(tiny_llama, tokenizer) -> None:
    """Per document: lm-eval's own ``acc`` of each document (its mean is the score); a slice
    ``[start, stop)`` scores exactly those documents, for hooks and for prompts (whose
    ``gold_logprob`` reads the gold choice of the right document)."""
    obj, space, *_ = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", list(range(12)))
    late, *_ = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", list(range(5, 12)))
    soft = PromptIntervention.of_embeddings([torch.randn(2, 64) * 0.05])
    for iv in (space.intervention([CANDIDATES[1], CANDIDATES[2]]), soft):
        whole = obj.evaluate(iv)
        for d, v in zip(whole.per_doc, whole.values):
            assert set(np.unique(d)) <= {0.0, 1.0} and d.shape == (12,) and d.mean() == v
        part = obj.evaluate(iv, limit=(5, 12))
        ref = late.evaluate(iv)
        assert part.cost == ref.cost == len(whole.values) * 7
        np.testing.assert_array_equal(part.values, ref.values)
        for a, b, w in zip(part.per_doc, ref.per_doc, whole.per_doc):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, w[5:])
        for m, r in zip(part.metrics, ref.metrics):
            assert m["gold_logprob"] == pytest.approx(r["gold_logprob"], abs=1e-5)


def test_gold_logprob_is_a_per_document_metric(tiny_llama, tokenizer) -> None:
    """``metric: gold_logprob`` races and gets paired statistics: its documents' values (the
    gold choice's log-probability) average to the value."""
    obj, space, lm, task = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", range(6))
    assert obj.per_document  # acc: lm-eval's mean
    obj = LMEvalTask(
        task, lm, {"search": TaskSplitSpec("train", list(range(6)))}, metric="gold_logprob"
    )
    assert obj.per_document
    ev = obj.evaluate(space.intervention([CANDIDATES[1]]))
    assert ev.per_doc[0].shape == (6,) and np.all(ev.per_doc[0] <= 0)
    assert ev.per_doc[0].mean() == pytest.approx(ev.values[0])


def test_unknown_metric_is_one_line(tiny_llama, tokenizer) -> None:
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        task = next(iter(load_tasks(["bb_rotten_tomatoes"]).values()))
        lm = HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=1, device="cpu")
    with pytest.raises(
        ValueError,
        match=r"'f1' is not a metric of task 'bb_rotten_tomatoes'; allowed: \['acc', 'acc_norm', 'gold_logprob'\]",
    ):
        LMEvalTask(task, lm, {}, metric="f1")
    with pytest.raises(ValueError, match="takes before_input, after_input"):
        LMEvalTask(task, lm, {}, placement="system")


def test_no_packing_beyond_a_sliding_attention_window(tiny_gemma, tokenizer) -> None:
    assert tiny_gemma.config.sliding_window == 16  # social_iqa contexts are longer
    obj, *_ = _objective(tiny_gemma, tokenizer, "social_iqa", range(4))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*packed")  # decided from lengths, unchecked
        prep = obj.prepared("search")
    assert prep.pack is False and prep.rows.parents is None and obj.scorer.packing is None
    assert prep.rows.sequences == sum(map(len, prep.requests_of_doc))  # one row per choice


def _plain_request_scores(model, prep, prompt, placement):
    """Per request: continuation log-likelihood and greedy flag of the plain concatenation."""
    emb = model.get_input_embeddings()
    lls, greedy = [], []
    for ctx, cont in prep.pairs:
        parts = [emb(torch.tensor(ctx)), emb(torch.tensor(cont))]
        parts.insert(0 if placement == "before_input" else 1, prompt)
        with torch.no_grad():
            logp = torch.log_softmax(model(inputs_embeds=torch.cat(parts)[None]).logits[0], -1)
        n = prompt.shape[0]
        start = len(ctx) + n
        rows = logp[start - 1 : start - 1 + len(cont)]
        lls.append(float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()))
        greedy.append(bool((rows.argmax(-1) == torch.tensor(cont)).all()))
    return lls, greedy


@pytest.mark.parametrize("task_name", ["bb_rotten_tomatoes", "social_iqa"])
@pytest.mark.parametrize("placement", ["before_input", "after_input"])
def test_prompt_metrics_are_lm_evals_on_the_spliced_sequence(
    placement, task_name, tiny_llama, tokenizer
):
    """One-token choices share their context's item; multi-token ones are teacher-forced."""
    obj, _, _, task = _objective(
        tiny_llama, tokenizer, task_name, range(6), placement=placement, max_rows=5
    )
    items = obj._request_items("search")
    shared = task_name == "bb_rotten_tomatoes"
    assert (len(items) == 6) == shared and len(items.requests[0]) == (2 if shared else 1)
    prep = obj.prepared("search")
    soft = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0)) * 0.05
    ev = obj.evaluate(PromptIntervention.of_embeddings(list(soft)))
    for c in range(2):
        lls, greedy = _plain_request_scores(tiny_llama, prep, soft[c], placement)
        accs, gold = [], []
        for d, doc in enumerate(prep.docs):
            rs = [(lls[r], greedy[r]) for r in prep.requests_of_doc[d]]
            accs.append(task.process_results(doc, rs)["acc"])
            choice = torch.tensor([lls[r] for r in prep.requests_of_doc[d]])
            gold.append(float(torch.log_softmax(choice, 0)[task.doc_to_target(doc)]))
        assert ev.values[c] == pytest.approx(np.mean(accs))
        assert ev.metrics[c]["gold_logprob"] == pytest.approx(np.mean(gold), abs=1e-4)
    assert ev.cost == 2 * prep.n_docs


def test_token_prompts_and_an_empty_prompt(tiny_llama, tokenizer) -> None:
    obj, space, _, _ = _objective(
        tiny_llama, tokenizer, "bb_rotten_tomatoes", range(4), placement="after_input"
    )
    obj.enable_fluency()
    prep = obj.prepared("search")
    ids = [[300, 301, 302], [400, 401, 402]]
    ev = obj.evaluate(PromptIntervention.of_ids(ids))
    emb = tiny_llama.get_input_embeddings()
    for c in range(2):
        soft = emb(torch.tensor(ids[c]))
        ref = obj.evaluate(PromptIntervention.of_embeddings([soft.detach()]))
        assert ev.metrics[c]["gold_logprob"] == pytest.approx(ref.metrics[0]["gold_logprob"])
        assert np.isfinite(ev.extra[c, 0]) and ev.extra[c, 0] > 0  # the prompt's fluency
    # no prompt at all: the task exactly as lm-eval scores it (the steering engine's baseline)
    empty = obj.evaluate(PromptIntervention.of_ids([[]]))
    unsteered = obj.evaluate(space.intervention([space.baseline()]))
    assert empty.values[0] == unsteered.values[0]
    a = np.concatenate(obj.request_logliks(PromptIntervention.of_ids([[]])))
    b = np.concatenate(obj.request_logliks(space.intervention([space.baseline()])))
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    assert len(a) == sum(map(len, prep.requests_of_doc))


def test_gold_loss_is_differentiable_and_minibatches_average(tiny_llama, tokenizer) -> None:
    obj, *_ = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", range(6))
    soft = (
        torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(1)) * 0.05
    ).requires_grad_()
    loss = obj.loss(soft, idx=[1, 4])
    loss.sum().backward()
    assert soft.grad.abs().sum() > 0
    parts = [float(obj.loss(soft.detach(), idx=[d])[0]) for d in (1, 4)]
    assert float(loss[0].detach()) == pytest.approx(np.mean(parts), abs=1e-5)
    assert obj.gradient_cost([1, 4]) == 3 * 2  # documents, a backward counting two


def test_packing_is_checked_on_an_fp32_probe_so_bf16_keeps_it(tiny_llama, tokenizer) -> None:
    """Whether packed rows are right depends on masks and positions, not on the dtype: a bf16
    model keeps the packed fast path (its own-precision check used to switch it off)."""
    import copy

    from blackbox.evals import lm_eval_requests

    lm_eval_requests._PACKING_VERDICTS.clear()
    bf16 = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    obj, *_ = _objective(bf16, tokenizer, "social_iqa", range(8))
    prep = obj.prepared("search")
    assert obj.scorer.packing is True and prep.rows.parents is not None
    assert list(lm_eval_requests._PACKING_VERDICTS.values()) == [True]
    probe = lm_eval_requests.fp32_probe(bf16)
    assert next(probe.parameters()).dtype == torch.float32
    assert len(probe.model.layers) == 2 and type(probe) is type(bf16)


class TestLMEvalTaskConformance(ObjectiveConformance):
    """The bundled Rotten Tomatoes task on 6 documents under steering, scored by
    ``gold_logprob`` (per document, continuous: a tiny random model's accuracy may tie)."""

    component = "lm_eval_task"

    @pytest.fixture
    def problem(self, tiny_llama, tokenizer):
        _, space, lm, task = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", range(6))
        spec = {"search": TaskSplitSpec(_split(task), list(range(6)))}
        return Problem(space, LMEvalTask(task, lm, spec, metric="gold_logprob", max_rows=4))

    @pytest.fixture
    def candidates(self, problem):
        return [problem.space.baseline(), *CANDIDATES[1:]]
