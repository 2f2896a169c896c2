"""Token-sequence search space: ``n`` positions, each an index into an allowed vocabulary.

A box row ``x`` ``(n,)`` holds, per position, an index into :attr:`TokenSpace.allowed_ids`
(``(A,)`` vocabulary ids).  A candidate is a :class:`TokenPrompt`: the ``n`` vocabulary ids, their
decoded text and whether it survives the retokenisation check (``decode`` then ``encode`` gives
the same ids, and the text contains no banned string).  Objectives score rejected candidates
as NaN (the worst value for every strategy) with ``metrics["rejected"] = True`` and spend no
forward pass on them.

Fixed text before and after the optimised tokens (for chat models the chat template's user
turn) is held as ids in :attr:`TokenSpace.context`; objectives take that context and cache the
part before the optimised tokens once.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from blackbox.search_spaces.base import SearchSpace
from blackbox.strategies.base import Box


@dataclass(frozen=True)
class TokenContext:
    """Fixed token ids around the optimised tokens.

    Attributes:
        prefix_ids: ids placed before the optimised tokens (cached once as KV).
        suffix_ids: ids placed after them (recomputed with every candidate).
    """

    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenPrompt:
    """One candidate of a :class:`TokenSpace`.

    Attributes:
        ids: the ``n`` optimised vocabulary ids.
        text: their decoded text.
        valid: False if retokenisation changes the ids or the text holds a banned string.
    """

    ids: tuple[int, ...]
    text: str = ""
    valid: bool = True


_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """Decoded text of every single token id ``0 .. vocab_size - 1`` (memoised per tokenizer)."""
    try:
        cached = _TEXTS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is None or len(cached) < vocab_size:
        cached = tokenizer.batch_decode([[i] for i in range(vocab_size)])
        try:
            _TEXTS[tokenizer] = cached
        except TypeError:
            pass
    return list(cached[:vocab_size])


def allowed_vocabulary(
    texts: Sequence[str],
    special_ids: Sequence[int] = (),
    ascii_only: bool = False,
    banned: Sequence[str] = (),
) -> np.ndarray:
    """``(V,)`` bool mask of allowed token ids (pure).

    Args:
        texts: decoded text of each token id.
        special_ids: ids never allowed (the tokenizer's special tokens).
        ascii_only: keep only tokens whose text is printable ASCII with a visible character.
        banned: strings; a token whose text contains one (case-insensitively) is not allowed.
    """
    mask = np.ones(len(texts), dtype=bool)
    special = [i for i in special_ids if 0 <= i < len(texts)]
    mask[special] = False
    lowered = [b.lower() for b in banned if b]
    for i, t in enumerate(texts):
        if not mask[i]:
            continue
        if t == "" or "\ufffd" in t:
            mask[i] = False
        elif ascii_only and not (t.isascii() and t.isprintable() and t.strip()):
            mask[i] = False
        elif lowered and any(b in t.lower() for b in lowered):
            mask[i] = False
    return mask


def contains_banned(text: str, banned: Sequence[str]) -> bool:
    """True if ``text`` contains any of ``banned`` case-insensitively."""
    low = text.lower()
    return any(b and b.lower() in low for b in banned)


class TokenSpace(SearchSpace[TokenPrompt]):
    """``n_tokens`` positions over an allowed vocabulary.

    Args:
        tokenizer: a Hugging Face tokenizer.
        n_tokens: number of optimised positions.
        vocab_size: size of the model's vocabulary (default ``len(tokenizer)``).
        ascii_only: allow only printable-ASCII tokens.
        banned: strings banned case-insensitively from every token and every candidate's text.
        prefix: fixed text before the optimised tokens (e.g. a chat user-turn prefix).
        suffix: fixed text after them.
        add_bos: put the tokenizer's BOS id first (if it has one and ``prefix`` does not).
        check_retokenisation: reject candidates whose ``encode(decode(ids)) != ids``.
    """

    name: ClassVar[str] = "tokens"
    is_discrete: ClassVar[bool] = True

    def __init__(
        self,
        tokenizer: Any,
        n_tokens: int = 8,
        vocab_size: int | None = None,
        ascii_only: bool = True,
        banned: Sequence[str] = (),
        prefix: str = "",
        suffix: str = "",
        add_bos: bool = False,
        check_retokenisation: bool = True,
    ) -> None:
        if n_tokens < 1:
            raise ValueError(f"n_tokens: must be >= 1, got {n_tokens}")
        self.tokenizer = tokenizer
        self.n_tokens = int(n_tokens)
        self.vocab_size = int(vocab_size or len(tokenizer))
        self.banned = tuple(banned)
        self.check_retokenisation = check_retokenisation
        texts = token_texts(tokenizer, min(self.vocab_size, len(tokenizer)))
        texts += [""] * (self.vocab_size - len(texts))  # ids past the tokenizer: never allowed
        self.mask = allowed_vocabulary(texts, tokenizer.all_special_ids, ascii_only, self.banned)
        self.allowed_ids = np.flatnonzero(self.mask)  # (A,)
        if self.allowed_ids.size == 0:
            raise ValueError("tokens: the allowed vocabulary is empty")
        self._index = np.full(self.vocab_size, -1, dtype=np.int64)
        self._index[self.allowed_ids] = np.arange(self.allowed_ids.size)
        prefix_ids = list(tokenizer.encode(prefix, add_special_tokens=False)) if prefix else []
        bos = getattr(tokenizer, "bos_token_id", None)
        if add_bos and bos is not None and prefix_ids[:1] != [bos]:
            prefix_ids = [bos, *prefix_ids]
        suffix_ids = tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
        self.context = TokenContext(tuple(prefix_ids), tuple(suffix_ids))
        self._box = Box(
            lower=np.zeros(self.n_tokens),
            upper=np.full(self.n_tokens, self.allowed_ids.size - 1, dtype=float),
            integer=np.ones(self.n_tokens, dtype=bool),
            names=tuple(f"tok{i}" for i in range(self.n_tokens)),
        )

    @property
    def box(self) -> Box:
        return self._box

    @property
    def n_allowed(self) -> int:
        return int(self.allowed_ids.size)

    def ids_of(self, x: np.ndarray) -> np.ndarray:
        """``(n, n_tokens)`` vocabulary ids for box rows ``x`` ``(n, n_tokens)``."""
        idx = np.clip(np.rint(np.asarray(x, dtype=float)), 0, self.n_allowed - 1).astype(np.int64)
        return self.allowed_ids[idx]

    def indices_of(self, ids: np.ndarray) -> np.ndarray:
        """Box indices of vocabulary ids ``(n, n_tokens)``; raises on ids not allowed."""
        idx = self._index[np.asarray(ids, dtype=np.int64)]
        if np.any(idx < 0):
            raise ValueError("tokens: an id is not in the allowed vocabulary")
        return idx

    def validity(self, ids: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """``(n,)`` bool: retokenisation round-trips and no banned string appears."""
        ok = np.array([not contains_banned(t, self.banned) for t in texts], dtype=bool)
        if self.check_retokenisation:
            enc = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
            ok &= np.array([list(e) == list(r) for e, r in zip(enc, ids.tolist())], dtype=bool)
        return ok

    def decode(self, x: np.ndarray) -> list[TokenPrompt]:
        ids = self.ids_of(np.atleast_2d(x))  # (n, n_tokens)
        texts = self.tokenizer.batch_decode(ids.tolist())
        valid = self.validity(ids, texts)
        return [
            TokenPrompt(tuple(int(i) for i in row), t, bool(v))
            for row, t, v in zip(ids, texts, valid)
        ]

    def encode(self, candidates: Sequence[TokenPrompt]) -> np.ndarray:
        ids = np.array([c.ids for c in candidates], dtype=np.int64).reshape(-1, self.n_tokens)
        return self.indices_of(ids).astype(float)

    def from_text(self, text: str) -> TokenPrompt:
        """The candidate whose ids are ``text``'s tokens (must be ``n_tokens`` long)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != self.n_tokens:
            raise ValueError(f"tokens: {text!r} is {len(ids)} tokens, need {self.n_tokens}")
        return self.decode(self.indices_of(np.array([ids])))[0]

    def describe(self, candidate: TokenPrompt) -> dict[str, Any]:
        return {"text": candidate.text, "ids": list(candidate.ids), "valid": candidate.valid}
