from __future__ import annotations

import numpy as np
import pytest

from blackbox.strategies.proposals import (
    ProposalInputs,
    ProposalMix,
    gradient_topk,
    logit_sample,
    multi_resample,
    random_replace,
    softmax,
    swap,
    topk_tokens,
)


def test_topk_tokens_exact() -> None:
    grad = np.array([[0.1, 0.9, -1.0, 0.5], [3.0, 2.0, 1.0, 0.0]])
    top = np.sort(topk_tokens(grad, 2), axis=-1)
    assert top.tolist() == [[1, 3], [0, 1]]
    assert topk_tokens(grad, 10).shape == (2, 4)


def _inputs(p: int = 3, n: int = 5, a: int = 50, seed: int = 0) -> ProposalInputs:
    rng = np.random.default_rng(seed)
    return ProposalInputs(
        parents=rng.integers(0, a, size=(p, n)),
        n_choices=a,
        grad=rng.normal(size=(p, n, a)),
        next_logits=rng.normal(size=(p, n, a)),
    )


def test_gradient_topk_changes_one_position_to_a_topk_token() -> None:
    inp = _inputs()
    rng = np.random.default_rng(1)
    rows = np.repeat(np.arange(3), 20)
    kids = gradient_topk(inp, rows, rng, k=4)
    top = topk_tokens(inp.grad, 4)
    for kid, r in zip(kids, rows):
        diff = np.flatnonzero(kid != inp.parents[r])
        assert diff.size <= 1
        for pos in diff:
            assert kid[pos] in top[r, pos]


def test_gradient_topk_n_replace() -> None:
    inp = _inputs(a=1000)
    kids = gradient_topk(inp, np.zeros(30, dtype=int), np.random.default_rng(0), k=8, n_replace=3)
    changed = (kids != inp.parents[0]).sum(1)
    assert changed.max() == 3 and changed.min() >= 1


def test_logit_sample_follows_distribution_at_low_temperature() -> None:
    inp = _inputs(p=1, n=2, a=10)
    inp.next_logits[:] = 0.0
    inp.next_logits[0, :, 7] = 50.0
    kids = logit_sample(inp, np.zeros(40, dtype=int), np.random.default_rng(0), (0.5, 1.0))
    changed = kids != inp.parents[0]
    assert np.all(kids[changed] == 7)


def test_random_multi_swap() -> None:
    inp = _inputs(a=10_000)
    rng = np.random.default_rng(0)
    rows = np.arange(3).repeat(10)
    assert ((random_replace(inp, rows, rng) != inp.parents[rows]).sum(1) <= 1).all()
    m = (multi_resample(inp, rows, rng, max_positions=3) != inp.parents[rows]).sum(1)
    assert m.max() <= 3 and m.min() >= 1
    s = swap(inp, rows, rng)
    assert np.array_equal(np.sort(s, 1), np.sort(inp.parents[rows], 1))


def test_mix_probabilities_and_needs() -> None:
    mix = ProposalMix({"swap": 0.0, "random_replace": 1.0})
    assert not mix.needs_grad and not mix.needs_logits
    assert ProposalMix({"gradient_topk": 1, "logit_sample": 1}).needs_logits
    inp = _inputs(a=10_000)
    kids = mix(inp, np.arange(3).repeat(5), np.random.default_rng(0))
    assert kids.shape == (15, 5)
    with pytest.raises(ValueError, match="unknown"):
        ProposalMix({"nope": 1.0})


def test_softmax_rows_sum_to_one() -> None:
    p = softmax(np.array([[1.0, 2.0, 3.0]]), 0.7)
    assert np.allclose(p.sum(-1), 1.0) and p[0, 2] > p[0, 1] > p[0, 0]
