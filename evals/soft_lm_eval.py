"""An lm-eval task scored with a soft prompt inserted: lm-eval's requests, our spliced forward.

Requests come from lm-eval's own machinery (:func:`~blackbox.evals.lm_eval_task.prepare_split`:
``task.build_all_requests`` and ``HFLM``'s encoding, truncation included), so contexts and
continuations are token for token those lm-eval scores.  The soft prompt goes before the whole
context (``before_input``: ``[soft | context | continuation]``) or right before the
continuation (``after_input``: ``[context | soft | continuation]``, the context's key/values
cached per request as in :mod:`~blackbox.forward.splice`).  Per request the
continuation's log-likelihood and greedy flag go through ``task.process_results`` and the
task's aggregations, so the metrics are lm-eval's; the search value is the chosen metric.

For Adam, :meth:`SoftLMEvalTask.stats` gives a differentiable value: per document, the
log-probability of the gold choice among the document's choices (softmax over their summed
log-likelihoods), averaged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from blackbox.evals.base import Evaluation
from blackbox.evals.lm_eval_task import PreparedSplit
from blackbox.evals.soft_prompt import Items, SoftObjective, by_length


def items_of(prep: PreparedSplit, placement: str) -> Items:
    """One item per request, with the continuation as its target."""
    pre, post, targets = [], [], []
    for ctx, cont in prep.pairs:
        if placement == "before_input":
            pre.append([])
            post.append(list(ctx) + list(cont))
            targets.append((len(ctx), list(cont)))
        elif placement == "after_input":
            pre.append(list(ctx))
            post.append(list(cont))
            targets.append((0, list(cont)))
        else:
            raise ValueError(
                f"placement {placement!r}: an lm-eval task takes before_input or after_input"
            )
    return Items(pre, post, targets=targets)


class SoftLMEvalTask(SoftObjective):
    """An lm-eval (loglikelihood / multiple-choice) task under a soft prompt.

    Args:
        model: the causal LM.
        task: the lm-eval ``Task``.
        prepared: objective split name -> its :class:`PreparedSplit`.
        placement: ``before_input`` or ``after_input``.
        metric: the task metric maximised (``acc``, ``acc_norm``, ...).
    """

    name: ClassVar[str] = "lm_eval_task"

    def __init__(
        self,
        model: torch.nn.Module,
        task: Any,
        prepared: dict[str, PreparedSplit],
        placement: str = "before_input",
        metric: str = "acc",
        max_rows: int = 32,
        cache_mb: int = 512,
    ) -> None:
        metrics = list(task.aggregation())
        if metric not in metrics:
            raise ValueError(
                f"objective.metric: {metric!r} is not a metric of the task; allowed: {metrics}"
            )
        splits = {k: items_of(p, placement) for k, p in prepared.items()}
        super().__init__(model, splits, max_rows, cache_mb)
        # an empty soft prompt (the task's own prompt) is scored as [context | continuation]
        self._plain = {k: items_of(p, "before_input") for k, p in prepared.items()}
        self.task, self.prepared, self.metric = task, prepared, metric
        self.gold = {}
        for k, p in prepared.items():
            gold = [task.doc_to_target(d) for d in p.docs]
            if not all(isinstance(g, int | np.integer) for g in gold):
                raise ValueError("objective: the task's targets must be choice indices")
            self.gold[k] = gold

    def n_examples(self, split: str = "search") -> int:
        """Documents of a split (minibatches pick documents, not requests)."""
        return self.prepared[split].n_docs

    def gradient_cost(self, idx: Sequence[int] | None = None, split: str = "search") -> float:
        """A gradient runs every request of the chosen documents (backward: x3)."""
        prep = self.prepared[split]
        docs = range(prep.n_docs) if idx is None else idx
        return self.cost_of(1, sum(len(prep.requests_of_doc[d]) for d in docs), backward=True)

    def request_scores(
        self, soft: torch.Tensor, split: str, requests: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, R)`` continuation log-likelihoods (differentiable) and greedy flags of the
        ``requests`` (all when ``None``), in that order."""
        data, tag = self.items(split), split
        if soft.shape[1] == 0:
            data, tag = self._plain[split], f"{split}/plain"
        order = list(range(len(data))) if requests is None else list(requests)
        c = soft.shape[0]
        per_call = max(1, self.max_rows // max(1, c))
        ll, greedy = [], []
        for start in range(0, len(order), per_call):
            chunk = order[start : start + per_call]
            sub = data.subset(chunk)
            out = self.forward(soft, sub.pre, sub.post, keys=[(tag, i) for i in chunk])
            dev = out.hidden.device
            t_max = max(len(t) for _, t in sub.targets)
            pos = torch.zeros(len(chunk), t_max, dtype=torch.long, device=dev)
            tgt = torch.zeros(len(chunk), t_max, dtype=torch.long, device=dev)
            valid = torch.zeros(len(chunk), t_max, dtype=torch.bool, device=dev)
            for i, (s, cont) in enumerate(sub.targets):
                m = len(cont)
                pos[i, :m] = out.n_soft + s - 1 + torch.arange(m, device=dev)
                tgt[i, :m] = torch.tensor(cont, device=dev)
                valid[i, :m] = True
            pos, tgt, valid = pos.repeat(c, 1), tgt.repeat(c, 1), valid.repeat(c, 1)
            h = out.hidden.gather(1, pos[..., None].expand(-1, -1, out.hidden.shape[-1]))
            logp = torch.log_softmax(self.forward.logits(h).float(), dim=-1)  # (C*r, T, V)
            tok = logp.gather(2, tgt[..., None])[..., 0] * valid
            ll.append(tok.sum(1).reshape(c, len(chunk)))
            hit = (logp.argmax(-1) == tgt) | ~valid
            greedy.append(hit.all(1).reshape(c, len(chunk)))
        return torch.cat(ll, 1), torch.cat(greedy, 1)

    def stats(
        self, soft: torch.Tensor, split: str = "search", idx: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"value": (C,)}``: mean log-probability of the gold choice among each document's
        choices (differentiable); ``idx`` picks documents (all when ``None``)."""
        prep = self.prepared[split]
        docs = list(range(prep.n_docs)) if idx is None else list(idx)
        reqs = [r for d in docs for r in prep.requests_of_doc[d]]
        ll, _ = self.request_scores(soft, split, reqs)
        return {"value": self._gold_logprob(ll, split, docs)}

    def _gold_logprob(self, ll: torch.Tensor, split: str, docs: list[int]) -> torch.Tensor:
        """``(C,)`` mean log-probability of the gold choice; ``ll`` holds the requests of
        ``docs`` in order."""
        prep, terms, at = self.prepared[split], [], 0
        for d in docs:
            k = len(prep.requests_of_doc[d])
            terms.append(torch.log_softmax(ll[:, at : at + k], dim=1)[:, self.gold[split][d]])
            at += k
        return torch.stack(terms, 1).mean(1)

    def _aggregate(
        self, prep: PreparedSplit, ll: np.ndarray, greedy: np.ndarray
    ) -> dict[str, float]:
        per_metric: dict[str, list[Any]] = defaultdict(list)
        for d in range(prep.n_docs):
            results = [(float(ll[r]), bool(greedy[r])) for r in prep.requests_of_doc[d]]
            for metric, value in self.task.process_results(prep.docs[d], results).items():
                per_metric[metric].append(value)
        agg = self.task.aggregation()
        return {m: float(agg[m](v)) for m, v in per_metric.items() if m in agg}

    def evaluate(
        self, candidates: Sequence[Any], split: str = "search", limit: int | None = None
    ) -> Evaluation:
        if limit is not None:
            raise ValueError("lm_eval_task soft objective: limit is not supported")
        prep = self.prepared[split]
        values = np.full(len(candidates), np.nan)
        metrics: list[dict[str, Any]] = [{} for _ in candidates]
        with torch.no_grad():
            for members, soft in by_length(candidates):
                ll, greedy = self.request_scores(soft, split)
                value = self._gold_logprob(ll, split, list(range(prep.n_docs)))
                for j, i in enumerate(members):
                    m = self._aggregate(prep, ll[j].cpu().numpy(), greedy[j].cpu().numpy())
                    m["gold_logprob"] = float(value[j])
                    metrics[i] = m
                    values[i] = m[self.metric]
        cost = self.cost_of(len(candidates), len(self.items(split)))  # one per request
        return Evaluation(values, metrics, cost=cost)
