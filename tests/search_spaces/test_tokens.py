from __future__ import annotations

import numpy as np
import pytest

from blackbox.search_spaces.tokens.space import TokenPrompt, TokenSpace, allowed_vocabulary
from blackbox.testing.spaces import SpaceConformance


@pytest.fixture(scope="module")
def tok():
    from blackbox.models import load_tokenizer

    return load_tokenizer()


def test_allowed_vocabulary_pure() -> None:
    texts = ["<s>", " Dog", "cat", "é", "", "hotdogs", " ok", "\n"]
    mask = allowed_vocabulary(texts, special_ids=[0], ascii_only=True, banned=["DOG"])
    assert mask.tolist() == [False, False, True, False, False, False, True, False]
    assert allowed_vocabulary(texts, special_ids=[0])[3]  # non-ASCII allowed unless asked


def test_mask_excludes_specials_and_bans(tok) -> None:
    sp = TokenSpace(tok, n_tokens=4, banned=["the"])
    assert not sp.mask[tok.all_special_ids].any()
    texts = tok.batch_decode([[i] for i in sp.allowed_ids])
    assert not any("the" in t.lower() for t in texts)
    assert all(t.isascii() for t in texts)
    assert sp.box.dim == 4 and sp.box.integer.all() and sp.box.upper[0] == sp.n_allowed - 1


def test_decode_encode_roundtrip_and_bounds(tok) -> None:
    sp = TokenSpace(tok, n_tokens=6)
    rng = np.random.default_rng(0)
    x = sp.box.sample(30, rng)
    cands = sp.decode(x)
    assert np.array_equal(sp.encode(cands), x)
    assert all(isinstance(c, TokenPrompt) and len(c.ids) == 6 for c in cands)
    assert set(sp.describe(cands[0])) == {"text", "ids", "valid"}
    xs = sp.encode(sp.sample(10, rng))
    assert (xs >= sp.bounds[:, 0]).all() and (xs <= sp.bounds[:, 1]).all()


def test_retokenisation_check_rejects_merges(tok) -> None:
    sp = TokenSpace(tok, n_tokens=2, ascii_only=True)
    ids = tok.encode(" hello", add_special_tokens=False)
    assert len(ids) == 1
    # " hel" + "lo" retokenises to " hello": a different id sequence
    a, b = tok.encode(" hel", add_special_tokens=False), tok.encode("lo", add_special_tokens=False)
    if len(a) == 1 and len(b) == 1 and sp.mask[a[0]] and sp.mask[b[0]]:
        c = sp.decode(sp.indices_of(np.array([[a[0], b[0]]])))[0]
        assert not c.valid
    ok = sp.from_text(" hello world")
    assert ok.valid and ok.text == " hello world"


def test_banned_text_across_tokens_is_rejected(tok) -> None:
    sp = TokenSpace(tok, n_tokens=2, banned=["dog"])
    a = tok.encode(" do", add_special_tokens=False)
    b = tok.encode("g", add_special_tokens=False)
    c = sp.decode(sp.indices_of(np.array([a + b])))[0]
    assert c.text.lower().count("dog") == 1 and not c.valid


def test_intervention_and_baselines(tok) -> None:
    sp = TokenSpace(tok, n_tokens=3)
    cands = sp.sample(4, np.random.default_rng(0))
    iv = sp.intervention(cands)
    assert iv.ids == [c.ids for c in cands] and iv.valid == [c.valid for c in cands]
    assert iv.keys[0] == iv.keys[0] and len(set(iv.keys)) == len({c.ids for c in cands})
    sp.baseline_text = "Is this review positive or negative?"
    base = sp.baselines()
    assert list(base) == ["baseline", "no prompt"] and base["no prompt"].ids == ()
    assert base["baseline"].text == sp.baseline_text and len(base["baseline"].ids) != 3
    with pytest.raises(ValueError, match="not 3 tokens long"):
        sp.encode([base["baseline"]])


class TestTokenConformance(SpaceConformance):
    component = "tokens"

    @pytest.fixture
    def space(self, tok):
        return TokenSpace(tok, n_tokens=4)
