"""Projection to tokens and HotFlip repair."""

from __future__ import annotations

import itertools

import pytest
import torch

from blackbox.evals.classification import Classification
from blackbox.search_spaces.soft_prompt.projection import (
    beam_projection,
    hotflip_repair,
    nearest_tokens,
    objective_fns,
)


def test_projection_of_an_embedding_row_returns_that_token(tiny_llama) -> None:
    emb = tiny_llama.get_input_embeddings().weight
    ids = torch.tensor([0, 17, 4242, 49151, 30000])
    top, sim = nearest_tokens(emb[ids], emb, k=3)
    assert torch.equal(top[:, 0], ids)
    torch.testing.assert_close(sim[:, 0], torch.ones(5))
    assert (sim[:, 1:] < 1).all() and (sim[:, :-1] >= sim[:, 1:]).all()
    # scaled rows project to the same token (cosine similarity)
    assert torch.equal(nearest_tokens(3.0 * emb[ids], emb)[0][:, 0], ids)


def test_banned_tokens_are_never_returned(tiny_llama) -> None:
    emb = tiny_llama.get_input_embeddings().weight
    top, _ = nearest_tokens(emb[[17, 99]], emb, k=4, banned=[17, 99])
    assert not set(top.flatten().tolist()) & {17, 99}


def test_beam_scores_every_combination_and_keeps_the_best() -> None:
    top = torch.tensor([[1, 2], [3, 4], [5, 6]])
    target = torch.tensor([2, 3, 6])
    seen = []

    def loss(ids: torch.Tensor) -> torch.Tensor:
        seen.extend(map(tuple, ids.tolist()))
        return (ids != target).sum(1).float()

    ids, value, scored = beam_projection(top, loss, max_candidates=8)
    assert ids.tolist() == [2, 3, 6] and value == 0.0 and scored == 8
    assert set(seen) == set(itertools.product([1, 2], [3, 4], [5, 6]))
    ids, _, scored = beam_projection(top, loss, max_candidates=3, seed=0)
    assert scored <= 4 and (1, 3, 5) in set(seen)  # the sample always holds the top-1 projection


def _toy(target: torch.Tensor, vocab: int):
    """A loss with a known optimum: squared distance of one-hot rows to ``target`` rows."""
    weights = torch.randn(vocab, generator=torch.Generator().manual_seed(0))

    def loss(ids: torch.Tensor) -> torch.Tensor:
        return ((weights[ids] - weights[target]) ** 2).sum(-1)

    def grad(ids: torch.Tensor) -> torch.Tensor:
        one_hot = torch.nn.functional.one_hot(ids, vocab).float().requires_grad_()
        ((one_hot @ weights - weights[target]) ** 2).sum().backward()
        return one_hot.grad

    return loss, grad


def test_repair_never_increases_the_loss_and_reaches_a_known_optimum() -> None:
    target = torch.tensor([3, 14, 15])
    loss, grad = _toy(target, 50)
    rep = hotflip_repair(torch.tensor([0, 1, 2]), loss, grad, steps=20, topk=50)
    assert all(b <= a for a, b in itertools.pairwise(rep.history))
    assert rep.loss == pytest.approx(0.0, abs=1e-9)
    assert rep.loss == float(loss(rep.ids[None])[0])
    assert len(rep.swaps) == len(rep.history) - 1 <= 3


def test_repair_respects_bans_and_stops_when_nothing_helps() -> None:
    target = torch.tensor([3, 14])
    loss, grad = _toy(target, 30)
    rep = hotflip_repair(torch.tensor([0, 1]), loss, grad, steps=20, topk=30, banned=[3])
    assert 3 not in rep.ids.tolist()
    start = hotflip_repair(target, loss, grad, steps=5, topk=30)
    assert start.swaps == [] and start.ids.tolist() == [3, 14] and start.gradients == 1


def test_repair_on_a_real_objective_never_increases_the_loss(tiny_llama, tokenizer) -> None:
    layout = {"template": "Review: {query}\nAnswer:", "placement": "after_input"}
    rows = [{"query": "Great fun.", "gold": 1}, {"query": "A bore.", "gold": 0}]
    obj = Classification.from_rows(
        tiny_llama, tokenizer, {"search": rows}, ["negative", "positive"], layout
    )
    loss, grad = objective_fns(obj)
    start = torch.tensor([100, 200, 300])
    g = grad(start)
    assert g.shape == (3, tiny_llama.get_input_embeddings().weight.shape[0])
    rep = hotflip_repair(start, loss, grad, steps=3, topk=4)
    assert all(b < a for a, b in itertools.pairwise(rep.history))
    assert rep.loss <= float(loss(start[None])[0])
    assert rep.loss == pytest.approx(float(loss(rep.ids[None])[0]), abs=1e-6)
