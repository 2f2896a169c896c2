"""Proposal operators for token-sequence search (EPO/GCG mutations and gradient-free ones).

Everything works in a token space's *box-index* coordinates: a prompt is ``(n,)`` integers in
``[0, A)`` indexing ``TokenSpace.allowed_ids``.  An operator maps parent rows to children:

    op(inputs: ProposalInputs, rows: (c,) parent index per child, rng) -> (c, n) children

Operators that need model information read it from :class:`ProposalInputs`: ``grad`` (the
gradient of the objective minus lambda times the self cross-entropy with respect to the one-hot
inputs, restricted to the allowed columns) or ``next_logits`` (the model's logits for each
position given the tokens before it).  :class:`ProposalMix` composes operators, each with a
probability, so "GA + random mutation" and "GA + EPO proposals" differ by one argument.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from blackbox.errors import UserError


@dataclass
class ProposalInputs:
    """What operators may read about the parents.

    Attributes:
        parents: ``(P, n)`` box indices.
        n_choices: ``A``, the size of the allowed vocabulary.
        grad: ``(P, n, A)`` gradient of the (fluency-penalised) objective, or ``None``.
        next_logits: ``(P, n, A)`` logits predicting each position, or ``None``.
    """

    parents: np.ndarray
    n_choices: int
    grad: np.ndarray | None = None
    next_logits: np.ndarray | None = None


Operator = Callable[[ProposalInputs, np.ndarray, np.random.Generator], np.ndarray]


def topk_tokens(grad: np.ndarray, k: int) -> np.ndarray:
    """``(..., n, k)`` indices of the ``k`` largest entries of ``grad`` ``(..., n, A)`` (pure).

    For a maximised objective the first-order gain of swapping in token ``j`` at position ``i``
    is ``grad[i, j] - grad[i, current]``, so the best substitutes have the largest gradient.
    Ties and order within the top k are not specified.
    """
    k = min(int(k), grad.shape[-1])
    return np.argpartition(-grad, k - 1, axis=-1)[..., :k]


def gradient_topk(
    inputs: ProposalInputs,
    rows: np.ndarray,
    rng: np.random.Generator,
    k: int = 64,
    n_replace: int = 1,
) -> np.ndarray:
    """GCG/EPO step: replace ``n_replace`` random positions by random top-``k`` gradient tokens."""
    if inputs.grad is None:
        raise ValueError("gradient_topk: needs gradients")
    children = inputs.parents[rows].copy()  # (c, n)
    c, n = children.shape
    top = topk_tokens(inputs.grad, k)  # (P, n, k)
    m = min(max(1, n_replace), n)
    for j in range(c):
        pos = rng.choice(n, size=m, replace=False)
        pick = rng.integers(0, top.shape[-1], size=m)
        children[j, pos] = top[rows[j], pos, pick]
    return children


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis at ``temperature`` (pure)."""
    z = logits / max(float(temperature), 1e-6)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def logit_sample(
    inputs: ProposalInputs,
    rows: np.ndarray,
    rng: np.random.Generator,
    temperature: tuple[float, float] = (0.5, 2.0),
) -> np.ndarray:
    """Resample one position from the model's next-token distribution at a random temperature.

    The temperature is log-uniform in ``temperature``; position 0 is never chosen when the
    prompt has no preceding context (its row of ``next_logits`` is all zeros: uniform).
    """
    if inputs.next_logits is None:
        raise ValueError("logit_sample: needs next-token logits")
    children = inputs.parents[rows].copy()
    c, n = children.shape
    lo, hi = np.log(temperature[0]), np.log(temperature[1])
    for j in range(c):
        pos = int(rng.integers(0, n))
        t = float(np.exp(rng.uniform(lo, hi)))
        p = softmax(inputs.next_logits[rows[j], pos].astype(np.float64), t)
        children[j, pos] = rng.choice(p.size, p=p)
    return children


def random_replace(
    inputs: ProposalInputs, rows: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Replace one random position by a uniform random token."""
    children = inputs.parents[rows].copy()
    c, n = children.shape
    pos = rng.integers(0, n, size=c)
    children[np.arange(c), pos] = rng.integers(0, inputs.n_choices, size=c)
    return children


def multi_resample(
    inputs: ProposalInputs, rows: np.ndarray, rng: np.random.Generator, max_positions: int = 3
) -> np.ndarray:
    """Resample 2..``max_positions`` random positions uniformly."""
    children = inputs.parents[rows].copy()
    c, n = children.shape
    for j in range(c):
        m = int(rng.integers(min(2, n), min(max_positions, n) + 1))
        pos = rng.choice(n, size=m, replace=False)
        children[j, pos] = rng.integers(0, inputs.n_choices, size=m)
    return children


def swap(inputs: ProposalInputs, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Swap the tokens of two distinct random positions (identity when ``n == 1``)."""
    children = inputs.parents[rows].copy()
    c, n = children.shape
    if n < 2:
        return children
    for j in range(c):
        a, b = rng.choice(n, size=2, replace=False)
        children[j, [a, b]] = children[j, [b, a]]
    return children


OPERATORS: dict[str, Operator] = {
    "gradient_topk": gradient_topk,
    "logit_sample": logit_sample,
    "random_replace": random_replace,
    "multi_resample": multi_resample,
    "swap": swap,
}
NEEDS_GRAD = frozenset({"gradient_topk"})
NEEDS_LOGITS = frozenset({"logit_sample"})

#: EPO's proposals as in the paper (gradient top-k only); GA + random mutation.
EPO_PROPOSALS: dict[str, float] = {"gradient_topk": 1.0}
RANDOM_PROPOSALS: dict[str, float] = {"random_replace": 1.0}


def _check_operator_settings(settings: Mapping[str, Mapping[str, Any]], field: str) -> None:
    """Unknown operators or keyword arguments in per-operator settings: one line naming them
    (else they would fail only when the operator first runs, mid-search)."""
    unknown = sorted(set(settings) - set(OPERATORS), key=str)
    if unknown:
        raise UserError(f"{field}: unknown operator(s) {unknown}; allowed: {sorted(OPERATORS)}")
    for name, kwargs in settings.items():
        params = list(inspect.signature(OPERATORS[name]).parameters)[3:]  # after inputs, rows, rng
        extra = sorted(set(kwargs) - set(params), key=str)
        if extra:
            raise UserError(
                f"{field}: {name!r} takes no setting(s) {extra}; allowed: {params or 'none'}"
            )


class ProposalMix:
    """Operators composed with probabilities.

    Args:
        weights: operator name -> weight (normalised to probabilities), or a single name.
        settings: per-operator keyword arguments, e.g. ``{"gradient_topk": {"k": 128}}``.
        field: the setting ``weights`` came from, named in errors (``token_ga.mutation``).
        settings_field: the setting ``settings`` came from.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | str = "random_replace",
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        field: str = "proposals",
        settings_field: str = "proposals",
    ) -> None:
        if isinstance(weights, str):
            weights = {weights: 1.0}
        unknown = sorted(set(weights) - set(OPERATORS), key=str)
        if unknown:
            raise UserError(f"{field}: unknown {unknown}; allowed: {sorted(OPERATORS)}")
        w = np.array([float(v) for v in weights.values()])
        if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise UserError(f"{field}: weights must be finite, >= 0, with a positive sum")
        self.names = tuple(weights)
        self.probs = w / w.sum()
        settings = settings or {}
        _check_operator_settings(settings, settings_field)
        self.ops: tuple[Operator, ...] = tuple(
            partial(OPERATORS[name], **dict(settings.get(name, {}))) for name in self.names
        )

    @property
    def needs_grad(self) -> bool:
        return any(p > 0 and n in NEEDS_GRAD for n, p in zip(self.names, self.probs))

    @property
    def needs_logits(self) -> bool:
        return any(p > 0 and n in NEEDS_LOGITS for n, p in zip(self.names, self.probs))

    def __call__(
        self, inputs: ProposalInputs, rows: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """``(c, n)`` children of ``inputs.parents[rows]``, each from one drawn operator."""
        rows = np.asarray(rows, dtype=np.int64)
        out = inputs.parents[rows].copy()
        which = rng.choice(len(self.ops), size=rows.size, p=self.probs)
        for o in np.unique(which):
            sel = np.flatnonzero(which == o)
            out[sel] = self.ops[o](inputs, rows[sel], rng)
        return out
