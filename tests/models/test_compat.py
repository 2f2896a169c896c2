"""The cache keyword follows the installed transformers, and a cached forward is exact."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from blackbox.models.compat import cache_kwargs, output_cache


class _OldStyle(torch.nn.Module):
    def forward(self, input_ids: Any = None, past_key_values: Any = None) -> Any:
        return past_key_values


def test_old_signature_gets_past_key_values() -> None:
    assert cache_kwargs(_OldStyle(), "kv") == {"past_key_values": "kv"}


def test_cached_continuation_matches_full_forward_without_warnings(tiny_model) -> None:
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        full = tiny_model(input_ids=ids).logits
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            head = tiny_model(input_ids=ids[:, :5], use_cache=True)
            tail = tiny_model(
                input_ids=ids[:, 5:], use_cache=True, **cache_kwargs(tiny_model, output_cache(head))
            )
    torch.testing.assert_close(tail.logits, full[:, 5:], atol=1e-5, rtol=1e-4)
