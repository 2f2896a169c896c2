"""Benchmark fitness: a candidate's score on an lm-eval task, for every intervention.

Requests come from lm-eval's own machinery (:mod:`~blackbox.evals.lm_eval_requests`), so
contexts, continuations and generation arguments are token for token those lm-eval uses, and
results go back through the task's filters, ``process_results`` and aggregations, so the
metrics are lm-eval's.  Three request types, each with its engine:

- ``loglikelihood`` (multiple choice): per-request ``(loglikelihood, is_greedy)`` pairs.
  Hooks (steering): :class:`~blackbox.forward.loglik.LoglikScorer` on packed rows (each
  question's context once, its choices as a prefix tree, rows packed without padding), many
  candidates per forward pass, the unsteered trunk below the lowest steered layer run once.
  Prompts (token and soft): :class:`~blackbox.forward.splice.Splice` with the prompt before the
  whole context (``before_input``) or right before the continuation (``after_input``, the
  context's key/values cached per request);
- ``loglikelihood_rolling`` (perplexity): each text's disjoint windows, built as lm-eval's HF
  model builds them, scored as loglikelihood requests and summed per text;
- ``generate_until``: greedy decoding of every candidate x request row in one batched loop
  with a key/value cache (:mod:`~blackbox.forward.generate`), stop strings and lengths as
  lm-eval's HF model applies them (:mod:`~blackbox.evals.lm_eval_generate`).

In lm-eval's chat-template mode (``task.chat_template``, ``lm_eval --apply_chat_template``;
:class:`~blackbox.evals.lm_eval_chat.ChatFormat`) every request is built as lm-eval
builds it then, and a prompt is spliced inside the rendered chat: at the start
(``before_input``) or the end (``after_input``) of the last user turn's text.

For gradient-guided search on prompts, :meth:`LMEvalTask.stats` gives a differentiable value:
per document, the log-probability of the gold choice among the document's choices (softmax
over their summed log-likelihoods), averaged (multiple-choice tasks only).  Cost: one
forward-pass equivalent per document and candidate for loglikelihood requests (per window for
perplexity); for generation, one per model call a row takes (one per generated token: the
prefill yields the first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from blackbox.api import Evaluation, HookIntervention, Intervention, ObjectiveTraits
from blackbox.errors import UserError
from blackbox.evals.base import Differentiable, Docs, doc_range
from blackbox.evals.document_objective import run_documents
from blackbox.evals.lm_eval_chat import ChatFormat, check_chat
from blackbox.evals.lm_eval_generate import (
    StopCheck,
    finish_text,
    generated_metrics,
    generation_rows,
)
from blackbox.evals.lm_eval_metrics import check_metric, metric_per_document
from blackbox.evals.lm_eval_prompts import PROMPT_PLACEMENTS, continuation_scores, request_items
from blackbox.evals.lm_eval_requests import (
    PreparedSplit,
    TaskSplitSpec,
    aggregate,
    check_packing,
    prepare_split,
)
from blackbox.evals.sections import LmEvalTaskObjectiveConfig
from blackbox.forward.generate import GenStats, eos_ids, greedy_generate
from blackbox.forward.loglik import LoglikScorer
from blackbox.forward.splice import Items, Splice

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


class LMEvalTask(Differentiable):
    """An lm-eval task under any intervention: loglikelihood (multiple choice), perplexity
    (``loglikelihood_rolling``) and generative (``generate_until``) requests.

    Args:
        task: an lm-eval ``Task``.
        lm: an ``HFLM`` wrapping the model (its tokenisation and ``max_length`` only).
        splits: objective split name -> task split and document indices.
        metric: the task metric maximised (``acc``, ``acc_norm``, ``exact_match``, ...; for a
            generative task also ``metric,filter``), or ``gold_logprob``: the mean
            log-probability of the gold choice among the choices (smooth).  A metric lm-eval
            marks lower-is-better (perplexities, bits per byte) is maximised negated: the
            evaluation's value is ``-metric`` (``metrics`` keep lm-eval's number).
        placement: where a prompt goes (``before_input`` or ``after_input``).
        max_batch_tokens: steering engine: tokens per forward pass (halved on OOM).
        branch: steering engine: run the unsteered trunk once, branch at the lowest layer.
        trunk_cache_mb: steering engine: memory for trunks reused across calls.
        pack: steering engine: a question's choices share one packed row (checked once per
            model against plain rows; off for a split longer than a sliding attention window).
        max_rows: prompt engine: rows (candidates x requests) per forward call.
        cache_mb: prompt engine: memory for cached context key/values.
        gen_rows: generative tasks: rows (candidates x requests) decoded together.
        chat: lm-eval's chat-template mode (``None``: plain contexts); the model's tokenizer
            must have a chat template.
    """

    config = LmEvalTaskObjectiveConfig

    traits = ObjectiveTraits(needs_task=True)

    def __init__(
        self,
        task: Any,
        lm: Any,
        splits: dict[str, TaskSplitSpec],
        metric: str = "acc",
        placement: str = "before_input",
        max_batch_tokens: int | None = None,
        branch: bool = True,
        trunk_cache_mb: int = 1024,
        pack: bool = True,
        max_rows: int = 32,
        cache_mb: int = 512,
        gen_rows: int = 64,
        chat: ChatFormat | None = None,
    ) -> None:
        super().__init__()
        check_metric(task, metric)
        if chat is not None:
            check_chat(task, lm)
        self.chat = chat
        better = task.higher_is_better().get(metric.split(",")[0], True)
        self.sign = 1.0 if better or metric == "gold_logprob" else -1.0
        if placement not in PROMPT_PLACEMENTS:
            raise UserError(
                f"placement: an lm-eval task takes {', '.join(PROMPT_PLACEMENTS)}, "
                f"not {placement!r}"
            )
        self.task, self.lm, self.metric, self.placement = task, lm, metric, placement
        self._splits = dict(splits)
        self.pack, self.max_rows = pack, int(max_rows)
        self.model = lm.model
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0
        self.scorer = LoglikScorer(
            lm.model,
            pad_id=int(pad),
            max_batch_tokens=max_batch_tokens,
            branch=branch,
            trunk_cache_mb=trunk_cache_mb,
        )
        self.splice = Splice(lm.model, cache_mb=cache_mb)
        self.gen_rows = int(gen_rows)
        self.gen_stats = GenStats()
        self._eos = eos_ids(lm.model, tok)
        self._prepared: dict[str, PreparedSplit] = {}
        self._heads: dict[tuple[str, int, int], PreparedSplit] = {}
        self._items: dict[tuple[str, Any], Any] = {}
        self._gold: dict[str, list[int]] = {}

    @classmethod
    def check_config(cls, section: LmEvalTaskObjectiveConfig, placement: str | None) -> None:
        from blackbox.errors import ConfigError

        if placement is not None and placement not in PROMPT_PLACEMENTS:
            raise ConfigError(
                f"config: space.placement: an lm-eval task takes a prompt before_input or "
                f"after_input, not {placement!r}"
            )

    @classmethod
    def from_config(cls, section: LmEvalTaskObjectiveConfig, ctx: BuildContext) -> LMEvalTask:
        from blackbox.errors import ConfigError
        from blackbox.evals.lm_eval_splits import task_splits
        from blackbox.evals.lm_eval_tasks import quiet_lm_eval

        task, lm, tc = ctx.task(), ctx.lm(), ctx.task_config
        assert tc is not None  # the objective's traits need a task: the config check said so
        chat = ChatFormat.of(tc)
        if chat is not None:  # before any request is built or scored
            try:
                check_chat(task, lm)
            except ValueError as exc:
                raise ConfigError(f"config: task.chat_template: {exc}") from None
        splits = task_splits(task, tc, ctx.seed, warn=ctx.warn)
        sc = ctx.scoring
        try:
            obj = cls(
                task,
                lm,
                splits,
                metric=tc.metric,
                placement=ctx.placement,
                max_batch_tokens=sc.max_batch_tokens,
                branch=sc.branch,
                trunk_cache_mb=sc.trunk_cache_mb,
                pack=sc.pack,
                gen_rows=sc.gen_rows,
                chat=chat,
                **ctx.objective_kw(max_rows=32),
            )
        except ValueError as exc:
            field = "space.placement" if "placement" in str(exc) else "task.metric"
            msg = str(exc).split(": ", 1)[-1]
            raise ConfigError(f"config: {field}: {msg}") from None
        with quiet_lm_eval():
            for split in splits:
                obj.prepared(split)
        return obj

    # -- data ---------------------------------------------------------------------------------
    def prepared(self, split: str) -> PreparedSplit:
        """The prepared requests of an objective split (built on first use)."""
        self.check_split(split)
        if split not in self._prepared:
            spec = self._splits[split]
            pack = self.pack and self.scorer.packing is not False
            prep = prepare_split(self.task, self.lm, spec.split, spec.samples, pack, self.chat)
            window = self.scorer.sliding_window
            if pack and window and max(len(c) + len(t) - 1 for c, t in prep.pairs) > window:
                pack = False  # the tree mask would override the model's sliding window
            elif prep.rows.parents is not None and self.scorer.packing is None:
                check_packing(self.scorer, prep.pairs, prep.max_length)
            self._prepared[split] = prep.repacked(self.scorer.packing is not False and pack)
        return self._prepared[split]

    def spec(self, split: str) -> TaskSplitSpec:
        """Which task split and which of its documents an objective split uses."""
        self.check_split(split)
        return self._splits[split]

    def _head(self, split: str, limit: Docs) -> tuple[PreparedSplit, int]:
        """The documents ``limit`` of ``split`` (requests renumbered) and the first one's index."""
        prep = self.prepared(split)
        start, stop = doc_range(limit, prep.n_docs)
        if (start, stop) == (0, prep.n_docs):
            return prep, 0
        return self._heads.setdefault((split, start, stop), prep.slice(start, stop)), start

    @property
    def per_document(self) -> bool:  # type: ignore[override]
        """The metric is a mean over documents: aggregated by lm-eval's ``mean`` (accuracy-type
        metrics), or ``gold_logprob`` (the mean of the gold choice's log-probability)."""
        return metric_per_document(self.task, self.metric)

    def n_examples(self, split: str = "search") -> int:
        return self.prepared(split).n_docs

    def cost_per_candidate(self, split: str = "search") -> float:
        """What one new candidate costs on ``split``: one forward-pass equivalent per document
        (per window for perplexity); for generation, the documents times the mean tokens a row
        has generated so far (at least one: known only after decoding, so a cost budget's last
        batch is planned on this estimate)."""
        prep = self.prepared(split)
        if prep.kind == "loglikelihood_rolling":
            return float(len(prep.pairs))
        if prep.kind == "generate_until":
            rows = max(self.gen_stats.rows, 1)
            return float(prep.n_docs * max(1.0, self.gen_stats.generated_tokens / rows))
        return float(prep.n_docs)

    @property
    def gradients_ok(self) -> bool:
        """Gradients exist: a loglikelihood task whose targets are choice indices (not a
        generative or perplexity task: nothing to follow)."""
        if self.prepared("search").kind != "loglikelihood":
            return False
        try:
            self.gold("search")
        except ValueError:
            return False
        return True

    def gold(self, split: str) -> list[int]:
        """Gold choice index of every document of ``split``."""
        if split not in self._gold:
            gold = [self.task.doc_to_target(d) for d in self.prepared(split).docs]
            if not all(isinstance(g, int | np.integer) for g in gold):
                raise UserError(
                    f"objective: task {self.task.config.task!r}: its targets are not choice "
                    "indices, so gradient-guided search cannot follow the gold choice"
                )
            self._gold[split] = [int(g) for g in gold]
        return self._gold[split]

    def _request_items(self, split: str) -> Items:
        key = (split, "items")
        if key not in self._items:
            self._items[key] = request_items(self.prepared(split), self.placement)
        return self._items[key]

    # -- scoring ------------------------------------------------------------------------------
    def _score(self, iv: Intervention, split: str, limit: Docs) -> Evaluation:
        prep, start = self._head(split, limit)  # the documents asked for, requests renumbered
        n = len(iv)
        metrics: list[dict[str, Any]] = [{} for _ in range(n)]
        per_doc: list[np.ndarray | None] = [None] * n
        if prep.kind == "generate_until":
            return self._generate(iv, prep, split, start)
        if isinstance(iv, HookIntervention):
            lls, greedy = self._hook_scores(iv, prep)
            for i in range(n):
                metrics[i], per_doc[i] = self._metrics(split, prep, lls[i], greedy[i], start)
        else:
            docs = list(range(start, start + prep.n_docs))
            for members in iv.groups():
                prompt, tokens = self._prompt_of(iv, members)
                with torch.no_grad():
                    ll, gr, means = self.request_scores(split, docs, prompt, tokens)
                for j, i in enumerate(members):
                    m, per_doc[i] = self._metrics(
                        split, prep, ll[j].cpu().numpy(), gr[j].numpy(), start
                    )
                    if "xentropy" in means:
                        m["xentropy"] = float(means["xentropy"][j])
                    metrics[i] = m
        values = self.sign * np.array([m[self.metric] for m in metrics], dtype=float)
        per_doc = [None if p is None else self.sign * p for p in per_doc]
        xent = np.array([m.get("xentropy", np.nan) for m in metrics], dtype=float)
        if not isinstance(iv, HookIntervention) and iv.is_tokens:
            self._remember([iv.ids[i] for i in range(n)], xent)  # type: ignore[misc]
        extra = xent[:, None] if self.extra_names else None
        units = len(prep.pairs) if prep.kind == "loglikelihood_rolling" else prep.n_docs
        return Evaluation(values, metrics, extra=extra, cost=float(n * units), per_doc=per_doc)

    def _generate(
        self, iv: Intervention, prep: PreparedSplit, split: str, start: int
    ) -> Evaluation:
        """Generative requests: every candidate x request decoded in one batched loop, the
        strings through the task's filters and metrics.  Cost: one forward-pass equivalent per
        model call of a row (one per generated token)."""
        texts, calls = self.generate(iv, prep)
        n = len(iv)
        metrics: list[dict[str, Any]] = []
        per_doc: list[np.ndarray | None] = []
        for c in range(n):
            of_doc = [[texts[c][r] for r in reqs] for reqs in prep.requests_of_doc]
            m, docs = generated_metrics(self.task, prep.docs, of_doc)
            m["generated_tokens"] = float(calls[c] / max(prep.n_docs, 1))
            metrics.append(m)
            per_doc.append(docs.get(self.metric))
        values = self.sign * np.array([m[self.metric] for m in metrics], dtype=float)
        per_doc = [None if p is None else self.sign * p for p in per_doc]
        extra = np.full((n, 1), np.nan) if self.extra_names else None
        return Evaluation(values, metrics, extra=extra, cost=float(sum(calls)), per_doc=per_doc)

    def generate(self, iv: Intervention, prep: PreparedSplit) -> tuple[list[list[str]], list[int]]:
        """Per candidate, the string lm-eval returns for each request of ``prep``, and the
        model calls (generated tokens) the candidate's rows took."""
        n, r = len(iv), len(prep.gen)
        hooks, lowest = None, None
        prompts: list[Any] | None = None
        if isinstance(iv, HookIntervention):
            hooks, lowest = iv.apply, (iv.lowest_layer if self.scorer.branch else None)
        else:
            prompts = [
                list(iv.ids[c]) if iv.ids[c] is not None else iv.embeds[c].float()  # type: ignore[union-attr]
                for c in range(n)
            ]
        rows = generation_rows(prep.gen, n, prompts, self.placement)
        stop = StopCheck(self.lm, [g.until for _ in range(n) for g in prep.gen])
        ids, stats = greedy_generate(
            self.model,
            rows,
            stop,
            self._eos,
            self.scorer.pad_id,
            hooks=hooks,
            max_rows=self.gen_rows,
            lowest=lowest,
        )
        self.gen_stats.add(stats)
        texts = [
            [finish_text(self.lm, ids[c * r + j], prep.gen[j].until) for j in range(r)]
            for c in range(n)
        ]
        calls = [sum(len(ids[c * r + j]) for j in range(r)) for c in range(n)]
        return texts, calls

    def _metrics(
        self,
        split: str,
        prep: PreparedSplit,
        ll: np.ndarray,
        greedy: np.ndarray,
        start: int = 0,
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """The task's metrics, and ``gold_logprob`` (the mean over documents of the gold
        choice's log-probability among the choices) when targets are choice indices; and the
        primary metric per document ``(D,)`` (``None`` if it is not a mean over documents)."""
        m, docs = aggregate(self.task, prep, ll, greedy)
        try:
            gold = self.gold(split)
        except ValueError:
            return m, docs.get(self.metric)
        terms = []
        for d in range(prep.n_docs):
            x = np.asarray([ll[r] for r in prep.requests_of_doc[d]], dtype=float)
            x = x - x.max()
            terms.append(float(x[gold[start + d]] - np.log(np.exp(x).sum())))
        m["gold_logprob"] = float(np.mean(terms))
        docs["gold_logprob"] = np.asarray(terms)
        return m, docs.get(self.metric)

    def _hook_scores(
        self, iv: HookIntervention, prep: PreparedSplit
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(C, R)`` per-request log-likelihoods and greedy flags under hooks."""
        index = list(range(len(iv)))

        def apply(model: torch.nn.Module, block: list[int], rows: torch.Tensor, repeat: int):
            return iv.apply(model, torch.tensor(block, dtype=torch.long)[rows.cpu()], repeat)

        scores = self.scorer.score(prep.rows, index, apply, lambda i: iv.lowest_layer[i])
        n_req = len(prep.query_of_request)
        lls = np.zeros((len(iv), n_req))
        greedy = np.zeros((len(iv), n_req), dtype=bool)
        for r, q in enumerate(prep.query_of_request):
            lls[:, r] = scores.logprob[:, q].sum(1)
            greedy[:, r] = scores.greedy[:, q].all(1)
        return lls, greedy

    def _prompt_of(self, iv: Any, members: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if iv.ids[members[0]] is not None:
            ids = torch.tensor([iv.ids[i] for i in members], dtype=torch.long)
            ids = ids.reshape(len(members), -1).to(self.splice.device)
            return self.splice.embed(ids), ids
        return torch.stack([iv.embeds[i] for i in members]).float(), None

    def request_scores(
        self,
        split: str,
        docs: Sequence[int],
        prompt: torch.Tensor,
        tokens: torch.Tensor | None = None,
        next_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Requests of documents ``docs`` under ``C`` prompts ``(C, n, d)``.

        Returns:
            ``(C, R)`` continuation log-likelihoods (differentiable), ``(C, R)`` greedy flags
            and, for token prompts, ``{"xentropy": (C,)}`` (and ``"next_logits"``), the
            prompt's fluency in the context of the first document.
        """
        prep = self.prepared(split)
        items = self._request_items(split)
        doc_items = self._doc_items(split)
        order = [i for d in docs for i in doc_items[d]]
        reqs = [r for d in docs for r in prep.requests_of_doc[d]]
        col = {r: j for j, r in enumerate(reqs)}
        c = int(prompt.shape[0])
        ll = torch.zeros(c, len(reqs), device=self.splice.device)
        greedy = torch.zeros(c, len(reqs), dtype=torch.bool)
        fluency: dict[str, torch.Tensor] = {}
        parts_ll, parts_cols = [], []
        for chunk, rows, flu in run_documents(
            self.splice,
            items,
            order,
            f"{split}/{self.placement}",
            lambda out, its, c: continuation_scores(self.splice, out, its, c),
            max_rows=self.max_rows,
            prompt=prompt,
            tokens=tokens,
            next_logits=next_logits,
        ):
            fluency.update(flu)
            for j, i in enumerate(chunk):
                for k, r in enumerate(items.requests[i]):
                    parts_ll.append(rows["ll"][:, j, k])
                    parts_cols.append(col[r])
                    greedy[:, col[r]] = rows["greedy"][:, j, k].bool().cpu()
        if parts_ll:  # differentiable assembly (no in-place writes into a leaf)
            ll = torch.stack(parts_ll, 1)[:, np.argsort(parts_cols)]
        return ll, greedy, fluency

    def _doc_items(self, split: str) -> list[list[int]]:
        """Per document of the split, the items holding its requests."""
        key = (split, "docs")
        if key not in self._items:
            prep, items = self.prepared(split), self._request_items(split)
            owner = {r: d for d, reqs in enumerate(prep.requests_of_doc) for r in reqs}
            out: list[list[int]] = [[] for _ in range(prep.n_docs)]
            for i, members in enumerate(items.requests):
                out[owner[members[0]]].append(i)
            self._items[key] = out  # type: ignore[assignment]
        return self._items[key]  # type: ignore[return-value]

    def stats(
        self,
        split: str,
        idx: Sequence[int] | None = None,
        prompt: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        hooks: HookIntervention | None = None,
        next_logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{"value": (C,)}``: mean log-probability of the gold choice among each document's
        choices (differentiable in ``prompt``); ``idx`` picks documents (all when ``None``)."""
        if hooks is not None or prompt is None:
            raise ValueError("lm_eval_task: gradients exist for prompt interventions only")
        prep = self.prepared(split)
        if prep.kind != "loglikelihood":
            raise UserError(
                f"lm_eval_task: task {self.task.config.task!r} ({prep.kind}) has no choices "
                "whose log-probability a gradient could follow"
            )
        docs = list(range(prep.n_docs)) if idx is None else list(idx)
        ll, _, means = self.request_scores(split, docs, prompt, tokens, next_logits)
        gold, terms, at = self.gold(split), [], 0
        for d in docs:
            k = len(prep.requests_of_doc[d])
            terms.append(torch.log_softmax(ll[:, at : at + k], dim=1)[:, gold[d]])
            at += k
        return {"value": torch.stack(terms, 1).mean(1), **means}

    def gradient_cost(self, idx: Sequence[int] | None = None, split: str = "search") -> float:
        n = self.n_examples(split) if idx is None else len(idx)
        return 3.0 * n

    def request_logliks(self, iv: Intervention, split: str = "search") -> list[list[float]]:
        """Per document, the log-likelihood of each request under the first candidate of
        ``iv`` (for parity tests against ``simple_evaluate``)."""
        prep = self.prepared(split)
        if isinstance(iv, HookIntervention):
            lls, _ = self._hook_scores(iv.subset([0]), prep)
            ll = lls[0]
        else:
            prompt, tokens = self._prompt_of(iv, [0])
            with torch.no_grad():
                ll = self.request_scores(split, range(prep.n_docs), prompt, tokens)[0][0].numpy()
        return [[float(ll[r]) for r in reqs] for reqs in prep.requests_of_doc]
