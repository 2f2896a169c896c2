"""The batched scorer against a direct log-softmax, and its out-of-memory back-off."""

from __future__ import annotations

import numpy as np
import torch

from blackbox.forward.loglik import LoglikScorer
from blackbox.forward.rows import Rows


def _rows() -> Rows:
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (7, 3, 11, 5)]
    q_row, q_pos, q_tok = [], [], []
    for r, t in enumerate(tokens):
        for p in range(max(0, len(t) - 2), len(t)):
            q_row.append(r), q_pos.append(p), q_tok.append(17 + r + p)
    return Rows(tokens, np.array(q_row), np.array(q_pos), np.array(q_tok))


def _no_apply(model, cands, rows, repeat):
    import contextlib

    return contextlib.nullcontext()


@torch.no_grad()
def test_scores_equal_direct_log_softmax(tiny_model) -> None:
    rows = _rows()
    scores = LoglikScorer(tiny_model, max_batch_tokens=24).score(rows, [None, None], _no_apply)
    for q in range(len(rows.q_row)):
        toks = torch.tensor([rows.tokens[rows.q_row[q]]])
        logits = tiny_model(toks, use_cache=False).logits[0, rows.q_pos[q]].float()
        softcap = getattr(tiny_model.config, "final_logit_softcapping", None)
        expected = torch.log_softmax(logits, -1)[rows.q_tok[q]].item()
        assert abs(scores.logprob[0, q] - expected) < 1e-4, (q, softcap)
        assert scores.greedy[0, q] == (logits.argmax().item() == rows.q_tok[q])
    np.testing.assert_array_equal(scores.logprob[0], scores.logprob[1])


def test_out_of_memory_halves_the_batch_and_retries(tiny_llama, monkeypatch) -> None:
    rows = _rows()
    scorer = LoglikScorer(tiny_llama, max_batch_tokens=4096)
    reference = scorer.score(rows, [None], _no_apply).logprob
    real = LoglikScorer._run_block
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        width = max(len(rows.tokens[r]) for r in args[2])
        if len(args[2]) * len(args[3]) * width > 16:  # pretend anything above 16 tokens OOMs
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LoglikScorer, "_run_block", flaky)
    got = scorer.score(rows, [None], _no_apply).logprob
    assert scorer.max_batch_tokens <= 16 and calls["n"] > 4
    np.testing.assert_allclose(got, reference, atol=1e-5)


def _pairs(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Questions with 2-4 choices of 1-4 tokens, some choices sharing their first tokens."""
    g = np.random.default_rng(seed)
    pairs = []
    for _ in range(5):
        ctx = g.integers(5, 500, int(g.integers(3, 12))).tolist()
        stem = g.integers(5, 500, 2).tolist()
        for _ in range(int(g.integers(2, 5))):
            tail = g.integers(5, 500, int(g.integers(0, 3))).tolist()
            cont = (stem[: int(g.integers(0, 3))] + tail) or [int(g.integers(5, 500))]
            pairs.append((ctx, cont))
    return pairs


def _steer(model, cands, row_cand, repeat):
    """Candidates ``(layer, coeff)``: add ``coeff * v`` at ``layer`` (``None``: nothing)."""
    from blackbox.forward.hooks import add_per_row

    d = model.config.hidden_size
    v = torch.linspace(-1, 1, d)
    adds: dict[int, torch.Tensor] = {}
    for i, (layer, coeff) in enumerate(cands):
        if layer is not None:
            adds.setdefault(layer, torch.zeros(len(row_cand), d))[row_cand == i] = coeff * v
    return add_per_row(model, adds, repeat)


@torch.no_grad()
def test_packed_tree_rows_score_like_plain_rows(tiny_model) -> None:
    from blackbox.evals.lm_eval_requests import check_packing, merge_rows
    from blackbox.models.layers import num_layers

    pairs = _pairs()
    packed, per_packed = merge_rows(pairs, max_length=64)
    plain, per_plain = merge_rows(pairs, max_length=64, pack=False)
    assert packed.parents is not None and len(packed) < len(plain)
    assert sum(map(len, packed.tokens)) < sum(map(len, plain.tokens))
    top = num_layers(tiny_model) - 1
    cands = [(None, 0.0), (0, 2.0), (1, -3.0), (top, 1.5)]
    for branch in (True, False):
        scorer = LoglikScorer(tiny_model, max_batch_tokens=64, branch=branch)
        assert check_packing(scorer, pairs, max_length=64) is True
        lowest = (lambda c: c[0]) if branch else None
        a = scorer.score(packed, cands, _steer, lowest)
        b = scorer.score(plain, cands, _steer, lowest)
        for qa, qb in zip(per_packed, per_plain):
            np.testing.assert_allclose(a.logprob[:, qa], b.logprob[:, qb], atol=1e-4)
            np.testing.assert_array_equal(a.greedy[:, qa], b.greedy[:, qb])
        assert scorer.resume_ok is branch  # branch: the trunk-resume path ran and self-checked
    # the candidates really differ (the steering reached the scores)
    assert not np.allclose(a.logprob[0], a.logprob[3], atol=1e-3)
