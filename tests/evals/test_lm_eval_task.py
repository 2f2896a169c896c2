"""The fast population-batched lm-eval fitness equals lm-eval's own simple_evaluate."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from blackbox.evals.lm_eval_task import LMEvalObjective, TaskSplitSpec, merge_rows
from blackbox.evals.lm_eval_tasks import load_tasks, quiet_lm_eval
from blackbox.evals.parity import reference_scores
from blackbox.forward.loglik import ancestry
from blackbox.models.layers import hidden_size, num_layers
from blackbox.search_spaces.steering import Edit, SteeringSpace
from blackbox.search_spaces.steering_vectors import SteeringVector


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


def _objective(
    model, tokenizer, task_name: str, samples, max_batch_tokens: int = 4096, branch: bool = True
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
    obj = LMEvalObjective(
        task=task,
        lm=lm,
        splits={"search": TaskSplitSpec("train", list(samples))},
        apply=space.apply,
        lowest_layer=space.lowest_layer,
        max_batch_tokens=max_batch_tokens,
        key=lambda c: c,
        branch=branch,
    )
    return obj, space, lm, task


CANDIDATES = [
    (),
    ((Edit("a", 1, 1.5), Edit("b", 3, 0.0))),
    ((Edit("a", 0, -2.0), Edit("b", 2, 1.0))),
    ((Edit("a", 3, 3.0), Edit("b", 3, -3.0))),
]


@pytest.mark.parametrize("task_name", ["bb_rotten_tomatoes", "bb_social_iqa"])
def test_fast_path_equals_simple_evaluate_tiny(tiny_llama, tokenizer, task_name) -> None:
    samples = list(range(0, 24, 2))
    obj, space, lm, task = _objective(tiny_llama, tokenizer, task_name, samples)
    cands = [space.baseline()] + [c for c in CANDIDATES[1:]]
    ev = obj.evaluate(cands)
    assert obj.scorer.resume_ok is True  # the trunk-resume path was taken and self-checked
    if task_name == "bb_social_iqa":  # multi-token choices: one packed row per question
        assert obj.scorer.packing is True
        assert obj.prepared("search").rows.sequences == len(samples)
    assert ev.cost == len(cands) * obj.prepared("search").rows.sequences
    for c, value, metrics in zip(cands, ev.values, ev.metrics):
        ref_metrics, ref_lls = reference_scores(
            lm, task, "train", samples, lambda c=c: space.apply(tiny_llama, [c])
        )
        assert value == ref_metrics["acc"]
        assert metrics["acc_norm"] == ref_metrics["acc_norm"]
        fast_lls = obj.request_logliks(c)
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
    ev = obj.evaluate(cands)
    assert [m["cache_hit"] for m in ev.metrics] == [False, False, False, True]
    assert ev.values[1] == ev.values[3]
    ev2 = obj.evaluate(cands[:2])
    assert all(m["cache_hit"] for m in ev2.metrics) and ev2.cost == 0
    ref = big.evaluate(cands)
    np.testing.assert_array_equal(ev.values, ref.values)
    a = np.concatenate(obj.request_logliks(CANDIDATES[2]))
    b = np.concatenate(big.request_logliks(CANDIDATES[2]))
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_limit_scores_a_prefix(tiny_llama, tokenizer) -> None:
    obj, space, *_ = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", list(range(20)))
    small, *_ = _objective(tiny_llama, tokenizer, "bb_rotten_tomatoes", list(range(8)))
    c = CANDIDATES[2]
    assert obj.evaluate([c], limit=8).values[0] == small.evaluate([c]).values[0]


def test_unknown_metric_is_one_line(tiny_llama, tokenizer) -> None:
    from lm_eval.models.huggingface import HFLM

    with quiet_lm_eval():
        task = next(iter(load_tasks(["bb_rotten_tomatoes"]).values()))
        lm = HFLM(pretrained=tiny_llama, tokenizer=tokenizer, batch_size=1, device="cpu")
    with pytest.raises(
        ValueError,
        match=r"'f1' is not a metric of task 'bb_rotten_tomatoes'; allowed: \['acc', 'acc_norm'\]",
    ):
        LMEvalObjective(task=task, lm=lm, splits={}, apply=None, metric="f1")


def test_no_packing_beyond_a_sliding_attention_window(tiny_gemma, tokenizer) -> None:
    assert tiny_gemma.config.sliding_window == 16  # social_iqa contexts are longer
    obj, *_ = _objective(tiny_gemma, tokenizer, "bb_social_iqa", range(4))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*packed")  # decided from lengths, unchecked
        prep = obj.prepared("search")
    assert prep.pack is False and prep.rows.parents is None and obj.scorer.packing is None
    assert prep.rows.sequences == sum(map(len, prep.requests_of_doc))  # one row per choice
