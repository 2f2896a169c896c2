"""Token-sequence search space: ``n`` positions, each an index into an allowed vocabulary.

A box row ``x`` ``(n,)`` holds, per position, an index into :attr:`TokenSpace.allowed_ids`
(``(A,)`` vocabulary ids).  A candidate is a :class:`TokenPrompt`: the ``n`` vocabulary ids, their
decoded text and whether it survives the retokenisation check (``decode`` then ``encode`` gives
the same ids, and the text contains no banned string).  Objectives score rejected candidates
as NaN (the worst value for every strategy) with ``metrics["rejected"] = True`` and spend no
forward pass on them.

Where the tokens go in a document (before or after the input, the system turn, a template
marker) is the objective's layout (:mod:`blackbox.evals.documents`); the space only knows its
vocabulary.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from blackbox.api import PromptIntervention, SpaceTraits
from blackbox.errors import UserError
from blackbox.search_spaces.base import SearchSpace
from blackbox.search_spaces.tokens.config import TokenSpaceConfig
from blackbox.search_spaces.tokens.finishing import TokensFinisher
from blackbox.strategies.base import Box

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


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
        check_retokenisation: reject candidates whose ``encode(decode(ids)) != ids``.
    """

    traits = SpaceTraits("prompt", discrete=True, differentiable=True, vocabulary=True)
    noun = "a token space (categorical token ids)"
    config = TokenSpaceConfig
    finisher = TokensFinisher

    def __init__(
        self,
        tokenizer: Any,
        n_tokens: int = 8,
        vocab_size: int | None = None,
        ascii_only: bool = True,
        banned: Sequence[str] = (),
        check_retokenisation: bool = True,
    ) -> None:
        if n_tokens < 1:
            raise UserError(f"n_tokens: must be >= 1, got {n_tokens}")
        self.tokenizer = tokenizer
        self.n_tokens = int(n_tokens)
        self.vocab_size = int(vocab_size or len(tokenizer))
        self.banned = tuple(banned)
        self.check_retokenisation = check_retokenisation
        self.baseline_text: str | None = None
        texts = token_texts(tokenizer, min(self.vocab_size, len(tokenizer)))
        texts += [""] * (self.vocab_size - len(texts))  # ids past the tokenizer: never allowed
        self.mask = allowed_vocabulary(texts, tokenizer.all_special_ids, ascii_only, self.banned)
        self.allowed_ids = np.flatnonzero(self.mask)  # (A,)
        if self.allowed_ids.size == 0:
            raise UserError("tokens: the allowed vocabulary is empty")
        self._index = np.full(self.vocab_size, -1, dtype=np.int64)
        self._index[self.allowed_ids] = np.arange(self.allowed_ids.size)
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
        if any(len(c.ids) != self.n_tokens for c in candidates):
            raise ValueError(f"tokens: a candidate is not {self.n_tokens} tokens long")
        ids = np.array([c.ids for c in candidates], dtype=np.int64).reshape(-1, self.n_tokens)
        return self.indices_of(ids).astype(float)

    def from_text(self, text: str) -> TokenPrompt:
        """The candidate whose ids are ``text``'s tokens (must be ``n_tokens`` long)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != self.n_tokens:
            raise UserError(f"tokens: {text!r} is {len(ids)} tokens, need {self.n_tokens}")
        return self.decode(self.indices_of(np.array([ids])))[0]

    @classmethod
    def from_config(cls, section: TokenSpaceConfig, ctx: BuildContext) -> TokenSpace:
        """The space of ``section``; it also bans what the objective bans from a prompt
        (``ctx.prompt_bans``: a ``logit`` objective's target word)."""
        from blackbox.errors import ConfigError

        sc = section
        banned = [*sc.banned, *ctx.prompt_bans]
        try:
            space = cls(
                ctx.tokenizer, n_tokens=sc.n_tokens, ascii_only=sc.ascii_only, banned=banned
            )
        except ValueError as exc:
            raise ConfigError(f"config: space: {exc}") from None
        space.baseline_text = sc.baseline
        return space

    def baselines(self) -> dict[str, TokenPrompt]:
        """Reference prompts scored before the search: a hand-written text in the tokens'
        place (``space.baseline``) and no prompt at all."""
        out = {}
        if self.baseline_text:
            out["baseline"] = self.prompt_of_text(self.baseline_text)
        out["no prompt"] = TokenPrompt((), "", True)
        return out

    def prompt_of_text(self, text: str) -> TokenPrompt:
        """A token prompt of ``text``'s tokens, of any length (a baseline; not a box point)."""
        ids = tuple(int(i) for i in self.tokenizer.encode(text, add_special_tokens=False))
        return TokenPrompt(ids, text, True)

    def intervention(self, candidates: Sequence[TokenPrompt]) -> PromptIntervention:
        """Token prompts to splice into the objective's documents (rejected ones not scored)."""
        return PromptIntervention.of_ids([c.ids for c in candidates], [c.valid for c in candidates])

    def describe(self, candidate: TokenPrompt) -> dict[str, Any]:
        return {"text": candidate.text, "ids": list(candidate.ids), "valid": candidate.valid}
