"""The soft-prompt space: p = A z + p0, full and subspace, initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackbox.search_spaces.soft_prompt.space import SoftPrompt, SoftPromptSpace, init_embeddings
from blackbox.testing.spaces import SpaceConformance

N, D = 4, 16


def _p0() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1))


def test_full_space_maps_z_to_scaled_offsets_and_back() -> None:
    space = SoftPromptSpace(_p0(), sigma=0.5)
    assert space.dim == N * D and space.box.names[0] == "z0"
    z = np.random.default_rng(0).uniform(-2, 2, size=(3, N * D))
    cands = space.decode(z)
    torch.testing.assert_close(
        cands[0].embeddings, space.p0 + 0.5 * torch.tensor(z[0], dtype=torch.float32).view(N, D)
    )
    np.testing.assert_allclose(space.encode(cands), z, atol=1e-5)
    assert torch.equal(space.decode(np.zeros((1, N * D)))[0].embeddings, space.p0)


def test_subspace_is_seeded_scaled_and_invertible_on_its_image() -> None:
    a, b = SoftPromptSpace(_p0(), 0.5, 8, seed=3), SoftPromptSpace(_p0(), 0.5, 8, seed=3)
    assert a.dim == 8 and torch.equal(a.A, b.A)
    assert not torch.equal(a.A, SoftPromptSpace(_p0(), 0.5, 8, seed=4).A)
    z = np.random.default_rng(0).normal(size=(200, 8))
    moves = torch.stack([c.embeddings - a.p0 for c in a.decode(z)])
    assert 0.4 < float(moves.std()) < 0.6  # z ~ N(0, I) moves entries by about sigma
    np.testing.assert_allclose(a.encode(a.decode(z[:3])), z[:3], atol=1e-4)


def test_embeddings_are_differentiable_in_z() -> None:
    space = SoftPromptSpace(_p0(), 0.5, 8)
    z = torch.zeros(8, requires_grad=True)
    space.embeddings(z).sum().backward()
    torch.testing.assert_close(z.grad, space.A.sum(0))


def test_encode_clips_into_the_box() -> None:
    space = SoftPromptSpace(_p0(), 0.1, bound=2.0)
    far = SoftPrompt(space.p0 + 10.0)
    assert space.encode([far]).max() == 2.0


def test_init_random_is_seeded_and_from_allowed_rows() -> None:
    emb = torch.randn(50, D)
    rows, ids = init_embeddings(emb, 4, "random", seed=0, allowed=range(10, 20))
    assert set(ids) <= set(range(10, 20)) and len(set(ids)) == 4
    assert torch.equal(rows, emb[list(ids)])
    assert init_embeddings(emb, 4, "random", seed=0, allowed=range(10, 20))[1] == ids


def test_init_text_cycles_or_cuts_the_text() -> None:
    emb = torch.randn(50, D)
    assert init_embeddings(emb, 5, "text", text_ids=[7, 8])[1] == (7, 8, 7, 8, 7)
    assert init_embeddings(emb, 2, "text", text_ids=[7, 8, 9])[1] == (7, 8)
    with pytest.raises(ValueError, match="init 'text' needs"):
        init_embeddings(emb, 2, "text")
    with pytest.raises(ValueError, match="allowed 'random' or 'text'"):
        init_embeddings(emb, 2, "zeros")


def test_describe_reports_distance_not_the_tensor() -> None:
    space = SoftPromptSpace(_p0(), 0.5)
    d = space.describe(space.decode(np.ones((1, space.dim)))[0])
    assert d["label"] == "soft" and d["distance_from_init"] == pytest.approx(0.5 * (N * D) ** 0.5)


class TestSoftPromptFullConformance(SpaceConformance):
    component = "soft_prompt"

    @pytest.fixture
    def space(self):
        return SoftPromptSpace(_p0(), sigma=0.5)


class TestSoftPromptSubspaceConformance(SpaceConformance):
    component = "soft_prompt"

    @pytest.fixture
    def space(self):
        return SoftPromptSpace(_p0(), sigma=0.5, subspace_dim=6, seed=3)
