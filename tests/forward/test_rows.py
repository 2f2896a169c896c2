"""Packed tree rows and bin packing: every query reads exactly its own context."""

from __future__ import annotations

import numpy as np
import torch

from blackbox.forward.rows import Rows, ancestry, bin_pack


def _rows() -> Rows:
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(5, 500, (n,), generator=g).tolist() for n in (7, 3, 11, 5)]
    q_row, q_pos, q_tok = [], [], []
    for r, t in enumerate(tokens):
        for p in range(max(0, len(t) - 2), len(t)):
            q_row.append(r), q_pos.append(p), q_tok.append(17 + r + p)
    return Rows(tokens, np.array(q_row), np.array(q_pos), np.array(q_tok))


def test_bin_pack_fills_rows_without_padding_and_keeps_queries() -> None:
    rows = _rows()  # lengths 7, 3, 11, 5
    assert [len(t) for t in bin_pack(rows).tokens] == [21, 5]  # width 22: 11+7+3 | 5
    packed = bin_pack(rows, width=11)
    assert [len(t) for t in packed.tokens] == [11, 10, 5]  # 11 | 7+3 | 5 (best fit, longest first)
    assert packed.sequences == 4 and len(packed) == 3
    for q in range(len(rows.q_row)):  # every query reads the same token context
        r, p = rows.q_row[q], rows.q_pos[q]
        b, pb = packed.q_row[q], packed.q_pos[q]
        allowed, depth = ancestry(packed.parents[b]) if packed.is_tree(b) else (None, None)
        seen = [packed.tokens[b][j] for j in range(pb + 1) if allowed is None or allowed[pb, j]]
        assert seen == rows.tokens[r][: p + 1]
        assert depth is None or depth[pb] == p  # positions restart in each segment
    assert packed.q_tok.tolist() == rows.q_tok.tolist()
