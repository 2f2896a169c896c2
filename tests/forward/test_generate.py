"""Batched greedy decoding: every row equals ``transformers``' own ``generate`` of that row
alone (no padding), under per-row hooks and spliced soft prompts, on four architectures; rows
leave the batch at their stop."""

from __future__ import annotations

import pytest
import torch

from blackbox.forward.generate import GenRow, eos_ids, greedy_generate
from blackbox.forward.hooks import add_per_row

ARCHS = ["llama", "gpt2", "qwen2", "gemma"]
CONTEXTS = [
    [5, 6, 7],
    [8, 9],
    [10, 11, 12, 13, 14, 15],
    [16],
    [17, 18, 19, 20],
    list(range(30, 50)),
]
# the last is longer than tiny Gemma-2's sliding window (16): its cache layers slide


def _hooks(model: torch.nn.Module, coeffs: list[float], layer: int = 1):
    v = torch.linspace(-1, 1, model.config.hidden_size) * 3

    def apply(m, rows, repeat=1):
        return add_per_row(m, {layer: torch.stack([coeffs[int(r)] * v for r in rows])}, repeat)

    return apply


def _reference(model, ids=None, embeds=None, max_new: int = 6, eos=None) -> list[int]:
    """``generate`` on one row (greedy, no padding), new tokens only."""
    kw = {"max_new_tokens": max_new, "do_sample": False, "pad_token_id": 0}
    kw["eos_token_id"] = sorted(eos) if eos else None
    if embeds is not None:
        out = model.generate(inputs_embeds=embeds[None], **kw)
        return out[0].tolist()
    x = torch.tensor([ids])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kw)
    return out[0, x.shape[1] :].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_equal_generate_alone_under_hooks(arch: str, request) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    coeffs = [0.0, 1.0, -2.0]
    rows = [GenRow(c, 6, candidate=k) for k in range(3) for c in CONTEXTS]
    apply = _hooks(model, coeffs)
    got, stats = greedy_generate(
        model, rows, lambda r, ids: False, set(), pad_id=0, hooks=apply, max_rows=7
    )
    for row, out in zip(rows, got):
        with apply(model, torch.tensor([row.candidate]), 1):
            assert out == _reference(model, row.ids, max_new=6), (row.ids, row.candidate)
    assert stats.generated_tokens == 6 * len(rows)
    assert stats.prefill_tokens == 3 * sum(map(len, CONTEXTS))


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefill_equals_generate_alone(arch: str, request) -> None:
    """Candidates steering from different layers (the first, later ones, and one not at all)
    share each context's unsteered trunk below their lowest layer, joining the one pass over
    the layers above it at their own; every row still equals ``generate`` alone."""
    from blackbox.forward import generate as gen

    model = request.getfixturevalue(f"tiny_{arch}")
    v = torch.linspace(-1, 1, model.config.hidden_size) * 3
    plan = {0: None, 1: 1, 2: 2, 3: 1, 4: 0}  # candidate -> its layer (None: unsteered)

    def apply(m, rows, repeat=1):
        adds = {
            layer: torch.stack([v * (plan[int(r)] == layer) * (1 + int(r)) for r in rows])
            for layer in (0, 1, 2)
        }
        return add_per_row(m, adds, repeat)

    rows = [GenRow(c, 5, candidate=k) for c in CONTEXTS for k in plan]
    gen._SHARE_VERDICTS.clear()
    got, stats = greedy_generate(
        model,
        rows,
        lambda r, ids: False,
        set(),
        0,
        hooks=apply,
        max_rows=8,
        lowest=[plan[k] for k in sorted(plan)],
    )
    assert stats.shared is True  # GPT-2 too, whose layers see the cache wrapped
    for row, out in zip(rows, got):
        with apply(model, torch.tensor([row.candidate]), 1):
            assert out == _reference(model, row.ids, max_new=5), (row.ids, row.candidate)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_soft_prompt_rows_equal_generate_on_embeddings(arch: str, request) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    emb = model.get_input_embeddings()
    d = model.config.hidden_size
    soft = torch.randn(2, d, generator=torch.Generator().manual_seed(1)) * 0.5
    rows = [GenRow(c, 5, soft=(len(c) if i % 2 else 0, soft)) for i, c in enumerate(CONTEXTS)]
    got, _ = greedy_generate(model, rows, lambda r, ids: False, set(), pad_id=0, max_rows=3)
    for row, out in zip(rows, got):
        at, s = row.soft
        x = emb(torch.tensor(row.ids))
        seq = torch.cat([x[:at], s.to(x.dtype), x[at:]])
        assert out == _reference(model, embeds=seq, max_new=5)


def test_rows_leave_at_eos_and_stop(tiny_llama) -> None:
    """A row ends at an EOS id (kept, as ``generate`` does) or when ``stop`` says so; the other
    rows go on unchanged, and later calls run fewer rows."""
    model = tiny_llama
    free, _ = greedy_generate(model, [GenRow(c, 8) for c in CONTEXTS], lambda r, i: False, set(), 0)
    eos = {free[0][2]}  # row 0's third token ends it
    stop_row = 2

    def stop(r: int, ids: list[int]) -> bool:
        return r == stop_row and len(ids) == 3

    got, stats = greedy_generate(model, [GenRow(c, 8) for c in CONTEXTS], stop, eos, 0)
    for r, (a, b) in enumerate(zip(got, free)):
        cut = next((k + 1 for k, t in enumerate(b) if t in eos), len(b))
        if r == stop_row:
            cut = min(cut, 3)
        assert a == b[:cut]
        assert a == _reference(model, CONTEXTS[r], max_new=8, eos=eos)[:cut] or r == stop_row
    assert stats.generated_tokens == sum(map(len, got))
    assert stats.calls == max(
        map(len, got)
    )  # one prefill, then one call per step while any row runs


def test_eos_ids_read_generation_config(tiny_llama, tokenizer, monkeypatch) -> None:
    """As ``generate``: the generation config's id or list of ids, else the tokenizer's EOS."""
    monkeypatch.setattr(tiny_llama.generation_config, "eos_token_id", [3, 7])
    assert eos_ids(tiny_llama, tokenizer) == {3, 7}
    monkeypatch.setattr(tiny_llama.generation_config, "eos_token_id", None)
    assert eos_ids(tiny_llama, tokenizer) == {tokenizer.eos_token_id}
