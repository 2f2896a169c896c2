"""Objectives measured over a set of documents with the splice engine, for any intervention.

:class:`DocumentObjective` runs its documents (:class:`~blackbox.forward.splice.Items`) under a
prompt (token or soft) or hooks (steering), ``C`` candidates by ``D`` documents per forward
call, and averages per-row statistics over the documents.  A subclass only says which
activations it reads (:attr:`DocumentObjective.captures`) and how a row's statistics follow
from the forward output (:meth:`DocumentObjective.row_stats`); batching, the ``pre`` cache,
gradients, fluency, costs and the repeat cache are shared.

:class:`Standardised` turns a subclass's raw value into a z-score against random candidates of
the search space (Fluent Dreaming's eq. 5 for token prompts), so that one set of fluency
weights means the same for every objective.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from blackbox.api import PER_DOC, HookIntervention, ObjectiveTraits
from blackbox.errors import UserError
from blackbox.evals.base import Differentiable, prompt_xentropy
from blackbox.forward.splice import Capture, Items, Splice, SpliceOut, prompt_next_logits


def states_before(out: SpliceOut, positions: torch.Tensor) -> torch.Tensor:
    """Final hidden states at ``positions`` ``(R, m)`` of ``out.hidden``, where ``-1`` means the
    last ``pre`` token (cached, outside ``hidden``) -> ``(R, m, d)``."""
    h = torch.cat([out.pre_last[:, None].to(out.hidden.dtype), out.hidden], dim=1)
    return h.gather(1, (positions + 1)[..., None].expand(-1, -1, h.shape[-1]))


def at_last(x: torch.Tensor, out: SpliceOut) -> torch.Tensor:
    """``x[r, out.last[r]]`` for ``x`` ``(R, T, k)`` -> ``(R, k)``."""
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, out.last.to(x.device)]


RowFn = Callable[[SpliceOut, Items, int], dict[str, torch.Tensor]]


def run_documents(
    splice: Splice,
    data: Items,
    order: Sequence[int],
    tag: Hashable,
    row_fn: RowFn,
    max_rows: int = 64,
    prompt: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    hooks: HookIntervention | None = None,
    captures: Sequence[Capture] = (),
    next_logits: bool = False,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Run ``C`` candidates on documents ``order`` of ``data``, a chunk at a time.

    Yields each chunk's document indices, its per-document statistics ``{name: (C, m, ...)}``
    (``row_fn(out, items, C)``'s) and, for the chunk holding the first document of ``order``
    when ``tokens`` (ids ``(C, n)`` or one-hot ``(C, n, V)``) are given, the token prompt's
    fluency there: ``{"xentropy": (C,)}`` (and ``"next_logits"``: ``(C, n, V)``).  A prompt's
    fluency is measured in one document's context (the first), so that it costs ``C`` rows of
    the LM head, not ``C x D``.  ``pre`` key/values are cached under ``(tag, document index)``.
    """
    c = len(hooks) if hooks is not None else int(prompt.shape[0])  # type: ignore[union-attr]
    per_call = max(1, max_rows // max(1, c))
    for start in range(0, len(order), per_call):
        chunk = list(order[start : start + per_call])
        m = len(chunk)
        sub = data.subset(chunk)
        out = splice(
            sub, prompt=prompt, hooks=hooks, keys=[(tag, i) for i in chunk], captures=captures
        )
        rows = row_fn(out, sub, c)
        fluency: dict[str, torch.Tensor] = {}
        if tokens is not None and start == 0:
            pick = torch.arange(c, device=out.hidden.device) * m  # document order[0], candidate c
            first = _rows_of(out, pick)
            logits = prompt_next_logits(splice, first)  # (C, n, V)
            fluency["xentropy"] = prompt_xentropy(logits, tokens, first.has_pre_last)
            if next_logits:
                fluency["next_logits"] = logits.float()
        yield chunk, {k: v.reshape(c, m, *v.shape[1:]) for k, v in rows.items()}, fluency


def _rows_of(out: SpliceOut, rows: torch.Tensor) -> SpliceOut:
    """The rows ``rows`` of a forward's output (for the prompt positions only)."""
    return SpliceOut(
        hidden=out.hidden[rows],
        mask=out.mask[rows],
        n_prompt=out.n_prompt,
        post_start=out.post_start[rows],
        last=out.last[rows],
        pre_last=out.pre_last[rows],
        has_pre_last=out.has_pre_last[rows],
    )


class DocumentObjective(Differentiable):
    """Mean statistics over documents under any intervention (see the module docstring).

    Args:
        model: the causal LM (eval mode, frozen).
        splits: the documents, by split name (``search``, ``heldout``, ...).
        max_rows: rows (candidates x documents) per forward call.
        cache_mb: memory for cached ``pre`` key/values.
    """

    captures: tuple[Capture, ...] = ()

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        max_rows: int = 64,
        cache_mb: int = 512,
    ) -> None:
        super().__init__()
        if not splits or any(len(v) == 0 for v in splits.values()):
            raise UserError("objective: every split needs at least one document")
        self.model = model
        self.splice = Splice(model, cache_mb=cache_mb)
        self._splits = dict(splits)
        self.max_rows = int(max_rows)

    def items(self, split: str) -> Items:
        self.check_split(split)
        return self._splits[split]

    def n_examples(self, split: str = "search") -> int:
        return len(self.items(split))

    @abstractmethod
    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        """Per-row statistics ``{name: (C * D,)}`` of one forward call, ``"value"`` first."""

    def transform(self, st: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Post-process document means (standardisation); identity here."""
        return st

    def stats(
        self,
        split: str,
        idx: Sequence[int] | None = None,
        prompt: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        hooks: HookIntervention | None = None,
        next_logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        c = len(hooks) if hooks is not None else int(prompt.shape[0])  # type: ignore[union-attr]
        if c > self.max_rows:  # many candidates: a group at a time
            groups = []
            for i in range(0, c, self.max_rows):
                sl = list(range(i, min(c, i + self.max_rows)))
                groups.append(
                    self.stats(
                        split,
                        idx,
                        prompt=None if prompt is None else prompt[sl],
                        tokens=None if tokens is None else tokens[sl],
                        hooks=None if hooks is None else hooks.subset(sl),
                        next_logits=next_logits,
                    )
                )
            return {k: torch.cat([g[k] for g in groups]) for k in groups[0]}
        data = self.items(split)
        order = list(range(len(data))) if idx is None else list(idx)
        sums: dict[str, torch.Tensor] = {}
        docs: list[torch.Tensor] = []  # (C, m) values of each chunk's documents
        fluency: dict[str, torch.Tensor] = {}
        for _, rows, flu in run_documents(
            self.splice,
            data,
            order,
            split,
            self.row_stats,
            max_rows=self.max_rows,
            prompt=prompt,
            tokens=tokens,
            hooks=hooks,
            captures=self.captures,
            next_logits=next_logits,
        ):
            fluency.update(flu)
            docs.append(rows["value"])
            for name, v in rows.items():
                sums[name] = sums[name] + v.sum(1) if name in sums else v.sum(1)
        means = {k: v / len(order) for k, v in sums.items()}
        return self.transform({**means, PER_DOC: torch.cat(docs, dim=1), **fluency})


class Standardised(DocumentObjective):
    """A document objective whose value is a z-score against random candidates.

    After :meth:`calibrate` the value is ``(f - mu) / sigma`` with ``mu`` and ``sigma`` the mean
    and standard deviation of the raw value ``f`` over random candidates of the search space
    (random token prompts: Fluent Dreaming's eq. 5); the raw value stays a metric under the
    objective's raw name (``raw_metric``).  Uncalibrated (or ``standardise=False``) the value is
    the raw value.
    """

    raw_metric = "raw"
    traits = ObjectiveTraits(needs_documents_for_hooks=True)

    def __init__(self, *args: Any, standardise: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.standardise = bool(standardise)
        self.mu: float | None = None
        self.sigma: float | None = None
        self._raw_only = False
        self.metric = self.raw_metric

    @property
    def calibrated(self) -> bool:
        return self.mu is not None and bool(self.sigma)

    def set_calibration(self, raw_values: np.ndarray) -> None:
        """Set ``mu`` and ``sigma`` from raw values of random candidates ``(R,)``."""
        vals = np.asarray(raw_values, dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size < 2:
            raise UserError("calibration: fewer than 2 finite values from random candidates")
        self.mu, self.sigma = float(vals.mean()), float(vals.std(ddof=1))
        if not self.sigma > 0:
            raise UserError("calibration: random candidates all give the same value")
        if self.standardise:
            self.metric = "z"
        self.reset_cache()

    def calibrate(self, problem: Any, n: int, seed: int) -> dict[str, float]:
        """Score ``n`` random candidates of ``problem.space`` (raw) and set the calibration.

        Returns ``{"candidates", "mu", "sigma", "cost"}`` (cost in forward-pass equivalents).
        """
        rng = np.random.default_rng(seed)
        cands = problem.space.decode(problem.space.box.sample(n, rng))
        self._raw_only = True
        try:
            ev = self._score_uncached(problem.space.intervention(cands))
        finally:
            self._raw_only = False
        self.set_calibration(ev.values)
        return {"candidates": n, "mu": self.mu, "sigma": self.sigma, "cost": ev.cost}

    def _score_uncached(self, iv: Any) -> Any:
        valid = list(getattr(iv, "valid", [True] * len(iv)))
        keep = [i for i, v in enumerate(valid) if v]
        return self._score(iv.subset(keep), "search", None)

    def transform(self, st: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self._raw_only or not (self.standardise and self.calibrated):
            if not self._raw_only and self.calibrated:
                st[self.raw_metric + "_z"] = (st["value"] - self.mu) / self.sigma
            return st
        raw = st["value"]
        out = {"value": (raw - self.mu) / self.sigma, self.raw_metric: raw}
        out.update({k: v for k, v in st.items() if k != "value"})
        if PER_DOC in st:  # z-scores are linear: the documents' mean is still the value
            out[PER_DOC] = (st[PER_DOC] - self.mu) / self.sigma
        return out
