"""Splicing soft prompts: exact against a manual concatenation, with and without the cache."""

from __future__ import annotations

import pytest
import torch

from blackbox.forward.splice import SoftForward

PRE = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13]]
POST = [[20, 21], [22, 23, 24, 25], [26], [27, 28]]


def _soft(c: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(c, n, d, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_splice_equals_manual_concatenation(arch: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    sf = SoftForward(model)
    soft = _soft(3, 2, model.config.hidden_size)
    out = sf(soft, PRE, POST, keys=list(range(4)))
    assert out.hidden.shape[:2] == (12, 2 + 4) and out.n_soft == 2
    for c in range(3):
        for i in range(4):
            pre = sf.embed(torch.tensor(PRE[i], dtype=torch.long))
            embeds = torch.cat([pre, soft[c], sf.embed(torch.tensor(POST[i]))])[None]
            want = model(inputs_embeds=embeds).logits[0, len(PRE[i]) :]  # soft + post positions
            row = c * 4 + i
            assert int(out.last[row]) == 2 + len(POST[i]) - 1
            got = sf.logits(out.hidden[row, : 2 + len(POST[i])])
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_soft_rows_sit_at_the_splice_positions(tiny_llama) -> None:
    """Changing only soft vector j changes outputs from position j on, never before it."""
    sf = SoftForward(tiny_llama)
    soft = _soft(1, 3, 64)
    moved = soft.clone()
    moved[0, 1] += 1.0
    a = sf(torch.cat([soft, moved]), PRE[:1], POST[:1]).hidden
    assert torch.equal(a[0, :1], a[1, :1])  # the first soft position does not see vector 1
    assert (a[0, 1:] - a[1, 1:]).abs().amax(-1).min() > 1e-4  # every later position does


def test_cached_subsets_and_repeats_are_identical(tiny_llama) -> None:
    sf = SoftForward(tiny_llama)
    soft = _soft(2, 2, 64)
    full = sf(soft, PRE, POST, keys=list(range(4))).hidden
    again = sf(soft, PRE, POST, keys=list(range(4))).hidden
    assert torch.equal(full, again)
    sub = sf(soft, [PRE[3], PRE[0]], [POST[3], POST[0]], keys=[3, 0]).hidden  # a minibatch
    torch.testing.assert_close(sub[0, :4], full[3, :4], atol=1e-6, rtol=0)
    torch.testing.assert_close(sub[3, :4], full[4, :4], atol=1e-6, rtol=0)  # candidate 1, item 0
    uncached = sf(soft, PRE, POST).hidden
    torch.testing.assert_close(uncached, full, atol=1e-6, rtol=0)


def test_gradient_reaches_the_soft_prompt_only(tiny_llama) -> None:
    sf = SoftForward(tiny_llama)
    soft = _soft(1, 2, 64).requires_grad_(True)
    out = sf(soft, PRE, POST, keys=list(range(4)))
    sf.logits(out.hidden[:, -1]).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_lru_cache_respects_its_memory(tiny_llama) -> None:
    sf = SoftForward(tiny_llama, cache_mb=0)
    sf(_soft(1, 2, 64), PRE, POST, keys=list(range(4)))
    assert len(sf._cache) == 0 and sf._bytes == 0


def test_mismatched_items_rejected(tiny_llama) -> None:
    with pytest.raises(ValueError, match="pre has 2 items, post 1"):
        SoftForward(tiny_llama)(_soft(1, 2, 64), PRE[:2], POST[:1])


def test_results_do_not_depend_on_which_items_came_first(tiny_llama) -> None:
    """A resumed run warms the cache with other minibatches first; replay must be bit-exact."""
    soft = _soft(1, 2, 64)
    a, b = SoftForward(tiny_llama), SoftForward(tiny_llama)
    a(soft, PRE, POST, keys=list(range(4)))
    b(soft, [PRE[3], PRE[1]], [POST[3], POST[1]], keys=[3, 1])
    assert torch.equal(
        a(soft, PRE, POST, keys=list(range(4))).hidden,
        b(soft, PRE, POST, keys=list(range(4))).hidden,
    )
