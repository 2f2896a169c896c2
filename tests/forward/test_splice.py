"""The splice engine: exact against a plain forward of the concatenation, for prompts and for
hooks, on four architectures; captures, the pre cache, gradients."""

from __future__ import annotations

import pytest
import torch

from blackbox.api import HookIntervention
from blackbox.forward.hooks import add_per_row
from blackbox.forward.splice import Capture, Items, Splice, embed_one_hot, prompt_next_logits
from blackbox.models.layers import decoder_layers, mlp_output_projection

PRE = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13]]
POST = [[20, 21], [22, 23, 24, 25], [26], [27, 28]]
ITEMS = Items(PRE, POST)
ARCHS = ["llama", "gpt2", "qwen2", "gemma"]


def _prompt(c: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(c, n, d, generator=torch.Generator().manual_seed(seed)) * 0.05


def _hooks(model: torch.nn.Module, coeffs: list[float], layer: int = 1) -> HookIntervention:
    """Candidate ``c`` adds ``coeffs[c] * v`` to the output of ``layer``."""
    v = torch.linspace(-1, 1, model.config.hidden_size)

    def apply(m, rows, repeat=1):
        adds = torch.stack([coeffs[int(r)] * v for r in rows])  # (B, d)
        return add_per_row(m, {layer: adds}, repeat)

    return HookIntervention(apply, [layer] * len(coeffs), list(range(len(coeffs))))


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_splice_equals_plain_concatenation(arch: str, request) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    sp = Splice(model)
    prompt = _prompt(3, 2, model.config.hidden_size)
    caps = (Capture(1, "residual"), Capture(2, "mlp"))
    out = sp(ITEMS, prompt, keys=list(range(4)), captures=caps)
    assert out.hidden.shape[:2] == (12, 2 + 4) and out.n_prompt == 2
    for c in range(3):
        for i in range(4):
            seq = torch.cat(
                [
                    sp.embed(torch.tensor(PRE[i], dtype=torch.long)),
                    prompt[c],
                    sp.embed(torch.tensor(POST[i])),
                ]
            )[None]
            store = {}
            h1 = decoder_layers(model)[1].register_forward_hook(
                lambda m, a, o, store=store: store.setdefault(
                    "res", o[0] if isinstance(o, tuple) else o
                )
            )
            h2 = mlp_output_projection(model, 2).register_forward_pre_hook(
                lambda m, a, store=store: store.setdefault("mlp", a[0])
            )
            with torch.no_grad():
                want = model(inputs_embeds=seq).logits[0, len(PRE[i]) :]  # prompt + post
            h1.remove(), h2.remove()
            row, n_real = c * 4 + i, 2 + len(POST[i])
            assert int(out.last[row]) == n_real - 1 and int(out.post_start[row]) == 2
            torch.testing.assert_close(
                sp.logits(out.hidden[row, :n_real]), want, atol=2e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                out.captured[caps[0]][row, :n_real],
                store["res"][0, len(PRE[i]) :],
                atol=2e-5,
                rtol=1e-4,
            )
            torch.testing.assert_close(
                out.captured[caps[1]][row, :n_real],
                store["mlp"][0, len(PRE[i]) :],
                atol=2e-5,
                rtol=1e-4,
            )


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_run_each_candidate_on_its_own_rows(arch: str, request) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    sp = Splice(model)
    coeffs = [0.0, 2.0, -1.5]
    hooks = _hooks(model, coeffs)
    out = sp(ITEMS, hooks=hooks, captures=(Capture(2, "residual"),))
    assert out.n_prompt == 0 and out.hidden.shape[0] == 12
    for c in range(len(coeffs)):
        for i in range(4):
            ids = torch.tensor([PRE[i] + POST[i]])
            with torch.no_grad(), hooks.apply(model, torch.tensor([c]), 1):
                want = model(input_ids=ids, output_hidden_states=True)
            row, n = c * 4 + i, len(PRE[i]) + len(POST[i])
            assert int(out.post_start[row]) == len(PRE[i]) and int(out.last[row]) == n - 1
            torch.testing.assert_close(
                sp.logits(out.hidden[row, :n]), want.logits[0], atol=2e-5, rtol=1e-4
            )
            torch.testing.assert_close(
                out.captured[Capture(2, "residual")][row, :n],
                want.hidden_states[3][0],
                atol=2e-5,
                rtol=1e-4,
            )
    assert not torch.allclose(out.hidden[0], out.hidden[4])  # the hooks did something
    with pytest.raises(ValueError, match="cannot be applied together"):
        sp(ITEMS, _prompt(3, 2, model.config.hidden_size), hooks=hooks)


def test_pre_last_and_prompt_next_logits(tiny_llama) -> None:
    sp = Splice(tiny_llama)
    prompt = _prompt(1, 3, 64)
    out = sp(ITEMS, prompt, keys=list(range(4)))
    logits = prompt_next_logits(sp, out)  # (4, 3, V)
    for i in range(4):
        seq = torch.cat([sp.embed(torch.tensor(PRE[i], dtype=torch.long)), prompt[0]])[None]
        with torch.no_grad():
            full = tiny_llama(inputs_embeds=seq).logits[0]
        p = len(PRE[i])
        if p:
            torch.testing.assert_close(logits[i, 0], full[p - 1], atol=2e-5, rtol=1e-4)
        else:
            assert not bool(out.has_pre_last[i]) and torch.all(logits[i, 0] == 0)
        torch.testing.assert_close(logits[i, 1:], full[p : p + 2], atol=2e-5, rtol=1e-4)


def test_no_prompt_and_no_post_runs_the_last_pre_token(tiny_llama) -> None:
    sp = Splice(tiny_llama)
    items = Items([[5, 6, 7], [8, 9]], [[], [30]])
    out = sp(items, None, keys=[0, 1])
    with torch.no_grad():
        want = tiny_llama(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1]
    torch.testing.assert_close(
        sp.logits(out.hidden[0, int(out.last[0])]), want, atol=2e-5, rtol=1e-4
    )
    assert int(out.post_start[0]) == 1 and int(out.post_start[1]) == 0  # where post (empty) starts
    with pytest.raises(ValueError, match="empty document"):
        sp(Items([[]], [[]]), None)


def test_prompt_rows_sit_at_the_splice_positions(tiny_llama) -> None:
    """Changing only prompt vector j changes outputs from position j on, never before it."""
    sp = Splice(tiny_llama)
    prompt = _prompt(1, 3, 64)
    moved = prompt.clone()
    moved[0, 1] += 1.0
    a = sp(Items(PRE[:1], POST[:1]), torch.cat([prompt, moved])).hidden
    assert torch.equal(a[0, :1], a[1, :1])
    assert (a[0, 1:] - a[1, 1:]).abs().amax(-1).min() > 1e-4


def test_cached_subsets_repeats_and_order_are_identical(tiny_llama) -> None:
    """A resumed run warms the cache with other minibatches first; replay must be bit-exact."""
    prompt = _prompt(2, 2, 64)
    a, b = Splice(tiny_llama), Splice(tiny_llama)
    full = a(ITEMS, prompt, keys=list(range(4))).hidden
    assert torch.equal(full, a(ITEMS, prompt, keys=list(range(4))).hidden)
    b(Items([PRE[3], PRE[1]], [POST[3], POST[1]]), prompt, keys=[3, 1])
    assert torch.equal(full, b(ITEMS, prompt, keys=list(range(4))).hidden)
    sub = a(Items([PRE[3], PRE[0]], [POST[3], POST[0]]), prompt, keys=[3, 0]).hidden
    torch.testing.assert_close(sub[0, :4], full[3, :4], atol=1e-6, rtol=0)
    torch.testing.assert_close(sub[3, :4], full[4, :4], atol=1e-6, rtol=0)  # candidate 1, item 0
    torch.testing.assert_close(a(ITEMS, prompt).hidden, full, atol=1e-6, rtol=0)  # uncached


def test_gradient_reaches_the_prompt_only_and_one_hot_matches_ids(tiny_gemma) -> None:
    sp = Splice(tiny_gemma)
    ids = torch.tensor([[40, 41, 42]])
    one_hot = torch.nn.functional.one_hot(ids, sp.embedding.shape[0]).float().requires_grad_()
    emb = embed_one_hot(tiny_gemma, one_hot)  # Gemma scales its embeddings: kept here
    torch.testing.assert_close(emb, sp.embed(ids), atol=1e-5, rtol=1e-5)
    out = sp(ITEMS, emb, keys=list(range(4)))
    sp.logits(out.hidden[:, -1]).sum().backward()
    assert one_hot.grad is not None and one_hot.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_gemma.parameters())


def test_lru_cache_respects_its_memory(tiny_llama) -> None:
    sp = Splice(tiny_llama, cache_mb=0)
    sp(ITEMS, _prompt(1, 2, 64), keys=list(range(4)))
    assert len(sp._cache) == 0 and sp._bytes == 0
