"""The batched scorer against a direct log-softmax, and its out-of-memory back-off."""

from __future__ import annotations

import numpy as np
import torch

from blackbox.evals.loglik import LoglikScorer, Rows


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
