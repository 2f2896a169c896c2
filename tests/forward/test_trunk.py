"""Resuming the forward pass from a captured trunk equals a plain (steered) forward."""

from __future__ import annotations

import torch

from blackbox.forward.hooks import add_per_row
from blackbox.forward.trunk import capture, final_norm, resume
from blackbox.models.layers import num_layers


@torch.no_grad()
def test_resume_from_every_layer_matches_plain_forward(tiny_model) -> None:
    assert final_norm(tiny_model) is not None
    ids = torch.randint(5, 400, (3, 9))
    trunk = capture(tiny_model, ids)
    plain = tiny_model.base_model(input_ids=ids, use_cache=False).last_hidden_state
    torch.testing.assert_close(trunk.final, plain)
    n, d = 2, tiny_model.config.hidden_size
    for start in range(num_layers(tiny_model)):
        add = {start: torch.randn(n * 3, d)}  # a per-row steering vector at the start layer
        with add_per_row(tiny_model, add):
            resumed = resume(tiny_model, trunk, start, n)  # (n*3, T, d)
            full = tiny_model.base_model(
                input_ids=ids.repeat(n, 1), use_cache=False
            ).last_hidden_state
        torch.testing.assert_close(resumed, full, rtol=1e-5, atol=1e-5)
