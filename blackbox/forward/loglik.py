"""Batched log-likelihood scoring of many candidates (interventions) on fixed token rows.

The rows hold a task's inputs: lm-eval's ``(context + continuation)[:-1]`` per request, or,
packed, a shared context once with every continuation after it as a prefix tree, several such
sequences side by side in one row (:func:`bin_pack`); a 4-D attention mask and per-token
positions keep every sequence exactly as if it ran alone.  Each row has a few *queries*
``(position, target token)``.  One forward pass scores a block of ``candidates x rows``: rows
of the batch are candidate-major (``n * E + e``).  The LM head runs only at the queried
positions, on 2-D hidden states.

When the search space supports it, the layers below a block's lowest steered layer run once per
example and the batch branches there (see :func:`search_spaces.steering_hooks.add_per_row`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from blackbox.forward.fallbacks import is_oom as _is_oom
from blackbox.forward.fallbacks import switch_off
from blackbox.forward.rows import Rows
from blackbox.forward.trunk import Trunk, capture, final_norm, resume, soft_cap
from blackbox.models.layers import num_layers


@dataclass
class Batch:
    """Model inputs of ``B`` rows (right padded).

    Attributes:
        ids: ``(B, T)`` token ids.
        mask: ``(B, 1, T, T)`` additive attention mask, or ``None`` for plain causal rows.
        pos: ``(B, T)`` position ids, or ``None`` (``0..T-1``).
    """

    ids: torch.Tensor
    mask: torch.Tensor | None = None
    pos: torch.Tensor | None = None

    def kwargs(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"input_ids": self.ids}
        if self.mask is not None:
            out["attention_mask"] = self.mask
            out["position_ids"] = self.pos
        return out

    def repeat(self, n: int) -> Batch:
        """``n`` candidate-major copies: ``(n * B, ...)``."""
        if n == 1:
            return self
        return Batch(
            self.ids.repeat(n, 1),
            None if self.mask is None else self.mask.repeat(n, 1, 1, 1),
            None if self.pos is None else self.pos.repeat(n, 1),
        )


@dataclass
class QueryScores:
    """Per candidate and query: log-probability of the target and whether it is the argmax.

    Attributes:
        logprob: ``(N, Q)`` float64.
        greedy: ``(N, Q)`` bool.
    """

    logprob: np.ndarray
    greedy: np.ndarray


ApplyFn = Callable[[torch.nn.Module, Sequence[Any], torch.Tensor, int], Any]
"""``apply(model, candidates, rows, repeat)``: a context manager installing the interventions."""


class _ResumeRefused(Exception):
    """Trunk resume raised and was switched off: score the block again with full forwards."""


class LoglikScorer:
    """Scores queries on fixed rows under many candidates.

    Args:
        model: a Hugging Face causal LM.
        pad_id: token used for right padding (never read: causal attention).
        max_batch_tokens: upper bound on ``batch rows x padded length`` per forward pass;
            halved on out-of-memory errors.  ``None``: 2048 on CPU (measured fastest there:
            larger batches fall out of cache), 16384 on GPU.
        branch: run the unsteered trunk once per example and resume each candidate block
            from its lowest steered layer (needs ``lowest_layer`` in :meth:`score`).
        trunk_cache_mb: memory for keeping captured trunks across calls on the same rows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        pad_id: int = 0,
        max_batch_tokens: int | None = None,
        branch: bool = True,
        trunk_cache_mb: int = 1024,
    ) -> None:
        self.model = model
        self.pad_id = int(pad_id)
        self.branch = branch
        self.device = next(model.parameters()).device
        if max_batch_tokens is None:
            max_batch_tokens = 2048 if self.device.type == "cpu" else 16384
        self.max_batch_tokens = int(max_batch_tokens)
        self.n_layers = num_layers(model)
        self.lm_head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.trunk_cache_bytes = int(trunk_cache_mb) * 2**20
        self._trunks: dict[tuple[int, tuple[int, ...]], Trunk] = {}
        self._trunk_rows: dict[int, Rows] = {}  # keeps cached Rows alive (ids stay unique)
        self._cached_bytes = 0
        self.resume_ok: bool | None = None if (branch and final_norm(model) is not None) else False
        # Branching inside one forward when resume is off; ``None`` until checked.
        self.branch_ok: bool | None = None if branch else False
        # Why a fast path was switched off ("trunk_resume", "branch", "packed_rows": one line).
        self.fallbacks: dict[str, str] = {}
        if branch and self.resume_ok is False:
            self.fallbacks["trunk_resume"] = f"{type(model).__name__}: no final norm found"
        attn = getattr(model.config, "_attn_implementation", None)
        # Packed tree rows need an attention that takes a custom 4-D additive mask; ``None``
        # until checked (:func:`blackbox.evals.lm_eval_task.check_packing`).
        self.packing: bool | None = None if attn in ("sdpa", "eager") else False
        # A custom mask replaces sliding-window masks: sequences must fit in the window.
        self.sliding_window: int | None = getattr(model.config, "sliding_window", None)

    @torch.no_grad()
    def score(
        self,
        rows: Rows,
        candidates: Sequence[Any],
        apply: ApplyFn,
        lowest_layer: Callable[[Any], int | None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> QueryScores:
        """Score every query of ``rows`` under every candidate.

        Args:
            rows: the rows and queries.
            candidates: ``N`` candidates.
            apply: installs a block's interventions: ``apply(model, cands, row_index, repeat)``.
            lowest_layer: candidate -> lowest layer it changes (``None``: changes nothing).
                Enables branching; without it every row runs the full model.
            progress: called with the number of (candidate, row) pairs done after each pass.

        Returns:
            ``(N, Q)`` log-probabilities and greedy flags.
        """
        n_cand, n_q = len(candidates), len(rows.q_row)
        logprob = np.zeros((n_cand, n_q))
        greedy = np.zeros((n_cand, n_q), dtype=bool)
        if n_cand == 0:
            return QueryScores(logprob, greedy)
        lowest = [(lowest_layer(c) if lowest_layer is not None else -1) for c in candidates]
        order_c = sorted(
            range(n_cand), key=lambda i: self.n_layers if lowest[i] is None else lowest[i]
        )
        lengths = np.array([len(t) for t in rows.tokens])
        order_r = np.argsort(-lengths, kind="stable")
        queries_of_row: list[np.ndarray] = [np.zeros(0, dtype=int)] * len(rows)
        by_row = np.argsort(rows.q_row, kind="stable")
        starts = np.searchsorted(rows.q_row[by_row], np.arange(len(rows) + 1))
        for r in range(len(rows)):
            queries_of_row[r] = by_row[starts[r] : starts[r + 1]]

        r0 = 0
        while r0 < len(rows):
            width = int(lengths[order_r[r0]])
            budget_rows = max(1, self.max_batch_tokens // max(width, 1))
            if self._can_resume(lowest):
                e_count = max(1, min(len(rows) - r0, budget_rows))  # candidates resume apart
            else:
                e_count = max(1, min(len(rows) - r0, budget_rows // n_cand))
            c_count = max(1, min(n_cand, budget_rows // e_count))
            block_rows = order_r[r0 : r0 + e_count]
            try:
                trunk = None
                if self._can_resume(lowest):
                    try:
                        trunk = self._trunk_for(rows, block_rows)
                    except Exception as exc:  # fall back, or re-raise
                        self._refuse_resume(exc)
                        raise _ResumeRefused from exc
                for c0 in range(0, n_cand, c_count):
                    block_c = order_c[c0 : c0 + c_count]
                    self._run_block(
                        trunk,
                        rows,
                        block_rows,
                        [candidates[i] for i in block_c],
                        block_c,
                        [lowest[i] for i in block_c],
                        apply,
                        queries_of_row,
                        logprob,
                        greedy,
                    )
                    if progress is not None:
                        progress(len(block_c) * len(block_rows))
            except _ResumeRefused:
                continue  # this block of rows again, sized for full forwards
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc) or (e_count == 1 and c_count == 1):
                    raise  # not memory, or even one candidate on one row does not fit
                self.max_batch_tokens = max(
                    1, min(self.max_batch_tokens, e_count * c_count * width) // 2
                )
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue  # retry this block of rows with a smaller budget
            r0 += e_count
        return QueryScores(logprob, greedy)

    def _can_resume(self, lowest: list[int | None]) -> bool:
        return bool(self.resume_ok is not False and -1 not in lowest)

    def _refuse_resume(self, exc: Exception) -> None:
        """Switch trunk resume off after it raised ``exc``, loudly (reported in ``result.json``:
        ``scoring``); re-raise an out-of-memory error, or any error once resume has passed its
        self-check on this model (then it is a real error, not an architecture's)."""
        if _is_oom(exc) or self.resume_ok:
            raise exc
        self.resume_ok = False
        switch_off(
            self.fallbacks,
            "trunk_resume",
            f"{type(self.model).__name__}: {type(exc).__name__}: {exc}",
            "resuming from a captured trunk failed ({reason}); falling back to full forwards",
            stacklevel=3,
        )

    def _batch(self, rows: Rows, block_rows: np.ndarray) -> Batch:
        """The right-padded inputs of a block of rows (with a tree mask if any row is packed)."""
        width = max(len(rows.tokens[r]) for r in block_rows)
        ids = torch.full((len(block_rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(block_rows):
            toks = rows.tokens[r]
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)  # right padding
        if not any(rows.is_tree(r) for r in block_rows):
            return Batch(ids.to(self.device))  # causal rows: the model's own fast mask
        allowed = np.zeros((len(block_rows), width, width), dtype=bool)
        pos = np.zeros((len(block_rows), width), dtype=np.int64)
        allowed[:, np.arange(width), np.arange(width)] = True  # padding attends to itself
        for i, r in enumerate(block_rows):
            n = len(rows.tokens[r])
            if rows.is_tree(r):
                allowed[i, :n, :n], pos[i, :n] = rows.layout(r)
            else:
                allowed[i, :n, :n] = np.tri(n, dtype=bool)
                pos[i, :n] = np.arange(n)
        dtype = self.lm_head.weight.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~torch.from_numpy(allowed), torch.finfo(dtype).min)
        return Batch(
            ids.to(self.device),
            mask[:, None].to(self.device),
            torch.from_numpy(pos).to(self.device),
        )

    def _trunk_for(self, rows: Rows, block_rows: np.ndarray) -> Trunk:
        """The captured trunk of a block (cached across calls while memory allows)."""
        key = (id(rows), tuple(int(r) for r in block_rows))
        if key in self._trunks:
            return self._trunks[key]
        trunk = capture(self.model, **self._batch(rows, block_rows).kwargs())
        size = trunk.nbytes()
        if self._cached_bytes + size <= self.trunk_cache_bytes:
            self._trunks[key] = trunk
            self._trunk_rows[id(rows)] = rows
            self._cached_bytes += size
        return trunk

    def _run_block(
        self,
        trunk: Trunk | None,
        rows: Rows,
        block_rows: np.ndarray,
        cands: list[Any],
        cand_index: list[int],
        lowest: list[int | None],
        apply: ApplyFn,
        queries_of_row: list[np.ndarray],
        logprob: np.ndarray,
        greedy: np.ndarray,
    ) -> None:
        e, n = len(block_rows), len(cands)
        row_cand = torch.arange(n).repeat_interleave(e)  # (n*e,) candidate-major
        all_none = all(x is None for x in lowest)
        if trunk is not None:
            if all_none:
                hidden = trunk.final.repeat(n, 1, 1)  # nothing steers: the trunk is the answer
            else:
                start = min(x for x in lowest if x is not None)
                try:
                    with apply(self.model, cands, row_cand, 1):
                        hidden = resume(self.model, trunk, start, n)  # (n*e, T, d)
                except Exception as exc:  # any failure: fall back, or re-raise
                    self._refuse_resume(exc)
                    raise _ResumeRefused from exc
                if self.resume_ok is None:
                    hidden = self._verify(
                        self._batch(rows, block_rows), cands, row_cand, hidden, apply
                    )
        elif all_none:
            hidden = self._trunk(self._batch(rows, block_rows))  # (e, T, d): nothing steers
            hidden = hidden.repeat(n, 1, 1)
        elif self.branch and self.branch_ok is not False and -1 not in lowest:
            hidden = self._branched(self._batch(rows, block_rows), cands, row_cand, apply)
        else:
            hidden = self._plain(self._batch(rows, block_rows), cands, row_cand, apply)
        # Gather the queried positions of every (candidate, row) pair.
        q_idx = [queries_of_row[r] for r in block_rows]
        local_row = np.concatenate([np.full(len(q), i) for i, q in enumerate(q_idx)])
        q_flat = np.concatenate(q_idx)
        if q_flat.size == 0:
            return
        pos = torch.as_tensor(rows.q_pos[q_flat], device=self.device)
        tok = torch.as_tensor(rows.q_tok[q_flat], device=self.device)
        for c in range(n):
            b = torch.as_tensor(c * e + local_row, device=self.device)
            h = hidden[b, pos]  # (q, d)
            logits = soft_cap(self.lm_head(h).float(), self.softcap)  # (q, V)
            logp = torch.log_softmax(logits, dim=-1)
            lp = logp.gather(1, tok[:, None])[:, 0]
            gr = logits.argmax(dim=-1) == tok
            logprob[cand_index[c], q_flat] = lp.double().cpu().numpy()
            greedy[cand_index[c], q_flat] = gr.cpu().numpy()

    def _plain(self, batch: Batch, cands, row_cand, apply) -> torch.Tensor:
        """The plain steered forward: every candidate runs the whole model on its own rows
        (``(n*e, T, d)``); what every fast path is checked against."""
        with apply(self.model, cands, row_cand, 1):
            return self._trunk(batch.repeat(len(cands)))

    def _mismatch(self, hidden: torch.Tensor, ref: torch.Tensor) -> str | None:
        """``None`` when ``hidden`` equals ``ref`` (the plain forward) to rounding, else how
        far apart they are (one line)."""
        scale = ref.float().abs().max().clamp_min(1.0)
        # fp32 must agree to rounding; half precision differs with batch composition anyway.
        tol = 1e-4 if ref.dtype == torch.float32 else 3e-2
        error = float((hidden - ref).float().abs().max() / scale)
        if error < tol:
            return None
        return (
            f"{type(self.model).__name__}: differs from the plain forward by {error:.2g} of "
            f"its scale (tolerance {tol:g})"
        )

    def _verify(self, batch: Batch, cands, row_cand, hidden: torch.Tensor, apply) -> torch.Tensor:
        """Once per model: the resumed pass must equal a plain steered forward.

        Returns the hidden states to use (the plain ones if the check failed).
        """
        ref = self._plain(batch, cands, row_cand, apply)  # (n*e, T, d)
        why = self._mismatch(hidden, ref)
        self.resume_ok = why is None
        if why is not None:
            switch_off(
                self.fallbacks,
                "trunk_resume",
                f"resumed hidden states: {why}",
                f"{type(self.model).__name__}: resuming from a captured trunk does not match the "
                "plain forward; falling back to full forwards",
            )
            return ref
        return hidden

    def _branched(self, batch: Batch, cands, row_cand, apply) -> torch.Tensor:
        """Steered rows branching inside one forward (the layers below the lowest steered one
        run on ``e`` rows, the hooks repeat the batch there): ``(n*e, T, d)``.

        Once per model this is checked against the plain forward; a mismatch, or an error
        before the check passed (an architecture whose layer inputs cannot be widened), turns
        branching off, loudly (``fallbacks["branch"]``), and the plain forward is used.
        """
        try:
            with apply(self.model, cands, row_cand, len(cands)):
                hidden = self._trunk(batch)
        except Exception as exc:  # any failure: fall back, or re-raise
            if _is_oom(exc) or self.branch_ok:
                raise
            self.branch_ok = False
            switch_off(
                self.fallbacks,
                "branch",
                f"{type(self.model).__name__}: {type(exc).__name__}: {exc}",
                "branching steered rows inside one forward failed ({reason}); "
                "falling back to full forwards",
                stacklevel=3,
            )
            return self._plain(batch, cands, row_cand, apply)
        if self.branch_ok is None:
            ref = self._plain(batch, cands, row_cand, apply)
            why = self._mismatch(hidden, ref)
            self.branch_ok = why is None
            if why is not None:
                switch_off(
                    self.fallbacks,
                    "branch",
                    f"branched hidden states: {why}",
                    f"branched steered rows: {why}; falling back to full forwards",
                    stacklevel=3,
                )
                return ref
        return hidden

    def _trunk(self, batch: Batch) -> torch.Tensor:
        """``(B, T)`` inputs -> ``(B', T, d)`` final (normed) hidden states (``B'`` may branch)."""
        out = self.model.base_model(**batch.kwargs(), use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
