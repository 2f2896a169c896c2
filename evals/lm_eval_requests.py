"""An lm-eval task's requests, built and tokenised by lm-eval itself, as packed rows.

Requests are built once per split with lm-eval's own task machinery
(``task.build_all_requests``) and tokenised once with lm-eval's own encoding (``HFLM``'s
``_encode_pair`` and truncation).  :func:`merge_rows` then merges them into rows for the
batched scorer (each context once, its continuations packed after it as a prefix tree, rows
packed side by side without padding); :func:`aggregate` sends per-request
``(loglikelihood, is_greedy)`` pairs back through ``task.process_results`` and the task's
aggregation functions, so every number is lm-eval's.

In lm-eval's chat-template mode (:class:`~blackbox.evals.lm_eval_chat.ChatFormat`,
``lm_eval --apply_chat_template``)
the requests are built as lm-eval's evaluator builds them then: every context rendered through
``HFLM.apply_chat_template`` (system instruction, few-shot examples as turns or one turn), the
same ``_encode_pair`` / ``tok_batch_encode`` on the rendered text (a context that starts with
the BOS text gets no second BOS).  :class:`~blackbox.evals.lm_eval_chat.ChatRenderer` also remembers where the last user
turn's text lies in each rendered context, so a prompt can be spliced inside that turn
(:attr:`PreparedSplit.splice_at`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from blackbox.errors import UserError
from blackbox.evals.lm_eval_chat import ChatFormat, ChatRenderer, splice_positions
from blackbox.evals.lm_eval_generate import GenRequest, encode_generation
from blackbox.forward.fallbacks import switch_off
from blackbox.forward.loglik import LoglikScorer
from blackbox.forward.rows import Rows, bin_pack


@dataclass
class PreparedSplit:
    """A split's requests, tokenised and merged into rows.

    Attributes:
        docs: ``D`` documents (in doc-id order).
        doc_ids: ``D`` doc ids as lm-eval numbered them.
        requests_of_doc: per document, its request indices in ``Instance.idx`` order.
        query_of_request: per request, its query indices (one per continuation token).
        rows: the merged rows and queries.
        pairs: the ``(context ids, continuation ids)`` scored: one per request, or for
            ``loglikelihood_rolling`` one per window (``requests_of_doc`` then lists the
            document's windows, summed into its one log-likelihood).
        kind: the task's request type: ``loglikelihood``, ``loglikelihood_rolling`` or
            ``generate_until`` (then ``gen`` holds the requests and ``pairs`` is empty).
        splice_at: chat-template mode, per pair: where a prompt goes in its context ids,
            ``(before_input, after_input)``: the start and the end of the last user turn's
            text (``None`` without a chat template: before the whole context and after it).
    """

    name: str
    docs: list[dict]
    doc_ids: list[int]
    requests_of_doc: list[list[int]]
    query_of_request: list[np.ndarray]
    rows: Rows
    pairs: list[tuple[list[int], list[int]]]
    max_length: int
    pack: bool = True
    kind: str = "loglikelihood"
    gen: list[GenRequest] = dataclasses.field(default_factory=list)
    splice_at: list[tuple[int, int]] | None = None

    @property
    def n_docs(self) -> int:
        return len(self.docs)

    def head(self, limit: int) -> PreparedSplit:
        """The same split restricted to its first ``limit`` documents (a lower fidelity)."""
        return self.slice(0, limit)

    def slice(self, start: int, stop: int) -> PreparedSplit:
        """The same split restricted to documents ``[start, stop)``, requests renumbered."""
        if start == 0 and stop >= self.n_docs:
            return self
        reqs = self.requests_of_doc[start:stop]
        flat = [r for rs in reqs for r in rs]
        pairs = [self.pairs[r] for r in flat] if self.pairs else []
        rows, per_request = merge_rows(pairs, self.max_length, self.pack)
        renum, i = [], 0
        for rs in reqs:
            renum.append(list(range(i, i + len(rs))))
            i += len(rs)
        return PreparedSplit(
            self.name,
            self.docs[start:stop],
            self.doc_ids[start:stop],
            renum,
            per_request,
            rows,
            pairs,
            self.max_length,
            self.pack,
            self.kind,
            [self.gen[r] for r in flat] if self.gen else [],
            [self.splice_at[r] for r in flat] if self.splice_at else None,
        )

    def repacked(self, pack: bool) -> PreparedSplit:
        """The same requests merged with (``pack=True``) or without packed tree rows."""
        if pack == self.pack:
            return self
        rows, per_request = merge_rows(self.pairs, self.max_length, pack)
        return dataclasses.replace(self, rows=rows, query_of_request=per_request, pack=pack)


def encode_requests(lm: Any, args: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Tokenise ``(context, continuation)`` pairs exactly as ``HFLM.loglikelihood`` does."""
    out = []
    for context, continuation in args:
        if context == "":
            cont = lm.tok_encode(continuation, add_special_tokens=False)
            if lm.prefix_token_id != cont[0]:
                out.append(([lm.prefix_token_id], cont))
            else:
                out.append((cont[:1], cont[1:]))
        else:
            out.append(lm._encode_pair(context, continuation))
    return out


def merge_rows(
    pairs: Sequence[tuple[list[int], list[int]]], max_length: int, pack: bool = True
) -> tuple[Rows, list[np.ndarray]]:
    """Merge ``(context_enc, continuation_enc)`` pairs into unique input rows.

    The input of a request is ``(ctx + cont)[-(max_length + 1):][:-1]`` (lm-eval's causal
    truncation) and its continuation's ``k`` tokens are predicted at the input's last ``k``
    positions.  Requests with the same input share one row.  With ``pack``, requests that share
    a context and need no truncation share one *packed tree* row instead: the context once, then
    the continuations' tokens as a prefix tree, each attending only to the context and its own
    earlier tokens (see :class:`~blackbox.forward.loglik.Rows`), so a multiple-choice question
    runs its context once whatever the length of its choices; the rows are then packed side by
    side (:func:`~blackbox.forward.loglik.bin_pack`), so no forward pass computes padding.

    Returns:
        the rows (with one query per continuation token) and, per request, its query indices.
    """
    if not pairs:
        empty = np.zeros(0, dtype=np.int64)
        return Rows([], empty, empty.copy(), empty.copy(), None), []
    row_of: dict[tuple[str, tuple[int, ...]], int] = {}
    tokens: list[list[int]] = []
    parents: list[list[int] | None] = []
    trie: dict[tuple[int, int, int], int] = {}  # (row, parent position, token) -> position
    q_row, q_pos, q_tok = [], [], []
    per_request: list[np.ndarray] = []
    for ctx, cont in pairs:
        if not ctx or not cont:
            raise ValueError("lm-eval request with an empty context or continuation")
        start = len(q_row)
        if pack and len(ctx) + len(cont) <= max_length + 1:
            r = row_of.setdefault(("tree", tuple(ctx)), len(tokens))
            if r == len(tokens):
                tokens.append(list(ctx))
                parents.append(list(range(-1, len(ctx) - 1)))
            node = len(ctx) - 1  # the last context token predicts the first continuation token
            for t in cont:
                q_row.append(r), q_pos.append(node), q_tok.append(t)
                if len(q_row) - start == len(cont):
                    break  # the last token is predicted, never fed
                child = trie.get((r, node, t))
                if child is None:
                    child = trie[(r, node, t)] = len(tokens[r])
                    tokens[r].append(t)
                    parents[r].append(node)  # type: ignore[union-attr]
                node = child
        else:
            inp = tuple((ctx + cont)[-(max_length + 1) :][:-1])
            r = row_of.setdefault(("seq", inp), len(tokens))
            if r == len(tokens):
                tokens.append(list(inp))
                parents.append(None)
            k = len(cont)
            for j, t in enumerate(cont):
                q_row.append(r), q_pos.append(len(inp) - k + j), q_tok.append(t)
        per_request.append(np.arange(start, len(q_row)))
    trees: list[np.ndarray | None] = [
        None if p is None or p == list(range(-1, len(p) - 1)) else np.array(p) for p in parents
    ]
    rows = Rows(
        tokens,
        np.array(q_row),
        np.array(q_pos),
        np.array(q_tok),
        trees if any(p is not None for p in trees) else None,
    )
    return (bin_pack(rows) if pack else rows), per_request


REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")
"""The lm-eval request types scored (``multiple_choice`` tasks make ``loglikelihood``)."""

_PACKING_VERDICTS: dict[tuple[str, str | None], bool] = {}
"""Packing verdicts by (model class, attention implementation): checked once per process."""
_PACKING_REASONS: dict[tuple[str, str | None], str] = {}
"""Why packing is off, by the same key (one line)."""


_PROBE_SCALE = 3.0


def fp32_probe(model: torch.nn.Module, layers: int = 2) -> torch.nn.Module:
    """A float32 model of ``model``'s architecture with ``layers`` decoder blocks, random
    weights (seeded), the same attention implementation: enough to check what depends on the
    architecture (masks, positions), never on the weights or the dtype.

    Its matrices are 3x their initial scale: at the usual init (std 0.02) attention is nearly
    uniform and a position the architecture ignores (MPT's ALiBi under packed rows) moved
    log-likelihoods by only ~1e-4, inside rounding of a long request; sharper, by ~1e-2, while
    a correct path stays at ~1e-6."""
    import copy

    import transformers

    cfg = copy.deepcopy(model.config)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(text, key, None), int):
            setattr(text, key, min(layers, getattr(text, key)))
    if getattr(text, "layer_types", None):
        with contextlib.suppress(AttributeError):  # derived from a pattern (Jamba, Mamba, ...)
            text.layer_types = list(text.layer_types)[:layers]
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    gen = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        probe = transformers.AutoModelForCausalLM.from_config(
            cfg, attn_implementation=attn, dtype=torch.float32
        )
    finally:
        torch.random.set_rng_state(gen)
    with torch.no_grad():
        for p in probe.parameters():
            if p.dim() >= 2:
                p.mul_(_PROBE_SCALE)
    return probe.to(next(model.parameters()).device).eval().requires_grad_(False)


def check_packing(
    scorer: LoglikScorer,
    pairs: Sequence[tuple[list[int], list[int]]],
    max_length: int,
    n_requests: int = 16,
) -> bool:
    """Once per architecture: packed rows must score requests as plain rows do.

    Whether packing is right depends on the attention mask and positions, not on the dtype or
    the weights, so the check runs on a float32 probe of the architecture (:func:`fp32_probe`):
    the first ``n_requests`` requests both ways, each request's log-likelihood equal to 1e-5
    relative; a packed forward that raises, or no probe, also switches packing off.  (Checked
    in the model's own half precision, batch composition alone moves log-likelihoods past any
    useful tolerance, and a correct bf16 fast path was switched off.)  The verdict is cached
    per (model class, attention implementation); sets and returns ``scorer.packing``.  A
    failed check is reported in ``result.json`` (``scoring``) and by the benchmark, its
    reason kept in ``scorer.fallbacks["packed_rows"]``, and warned about.
    """
    model = scorer.model
    key = (type(model).__name__, getattr(model.config, "_attn_implementation", None))
    if key not in _PACKING_VERDICTS:
        why = _packing_verdict(scorer, pairs, max_length, n_requests)
        _PACKING_VERDICTS[key] = why is None
        if why is not None:
            _PACKING_REASONS[key] = why
    scorer.packing = _PACKING_VERDICTS[key]
    if not scorer.packing:
        why = _PACKING_REASONS.get(key, "packed context rows do not match plain rows")
        switch_off(
            scorer.fallbacks,
            "packed_rows",
            f"{type(model).__name__}: {why}",
            "{reason}; scoring every request on its own row (reported in result.json: scoring)",
        )
    return scorer.packing


def _packing_verdict(
    scorer: LoglikScorer,
    pairs: Sequence[tuple[list[int], list[int]]],
    max_length: int,
    n_requests: int,
) -> str | None:
    """``None`` when packed rows score the first ``n_requests`` requests as plain rows do on a
    probe of the architecture; else why not (a mismatch, or the error the packed forward
    raised: e.g. BLOOM builds its ALiBi bias from a 2-D mask and rejects the 4-D tree mask)."""
    try:
        probe = LoglikScorer(fp32_probe(scorer.model), pad_id=scorer.pad_id, branch=False)
    except Exception as exc:  # no probe: packing is not checked, so it is off
        return f"no probe model to check packing on ({type(exc).__name__}: {exc})".split("\n")[0]
    vocab = probe.lm_head.weight.shape[0]
    sample = [([t % vocab for t in c], [t % vocab for t in x]) for c, x in pairs[:n_requests]]
    lls = []
    for pack in (True, False):
        rows, per_request = merge_rows(sample, max_length, pack)
        try:
            scores = probe.score(rows, [None], lambda *_: contextlib.nullcontext())
        except Exception as exc:  # a raising forward is a failed check
            what = "packed context rows fail" if pack else "the probe fails on plain rows"
            return f"{what} ({type(exc).__name__}: {exc})".split("\n")[0]
        lls.append(np.array([scores.logprob[0][q].sum() for q in per_request]))
    # Correct packing agrees to ~1e-6 in fp32; a mask or position the architecture ignores
    # (MPT's ALiBi, recurrent layers, bidirectional encoders) moves a request by 1e-2 or more
    # on the sharpened probe.  (1e-3 relative on an unsharpened one let MPT pack, wrongly.)
    if np.all(np.abs(lls[0] - lls[1]) <= 1e-5 * (1 + np.abs(lls[1]))):
        return None
    return "packed context rows do not match plain rows"


FEWSHOT_SEED = 1234
"""``simple_evaluate``'s default ``fewshot_random_seed`` (``lm_eval --seed``'s fourth value): each
split's requests are built right after seeding the task's few-shot sampler with it, as
``simple_evaluate`` does, so a few-shot task draws the examples ``lm_eval`` draws for the same
documents."""


def prepare_split(
    task: Any,
    lm: Any,
    split: str,
    samples: Sequence[int] | None,
    pack: bool = True,
    chat: ChatFormat | None = None,
) -> PreparedSplit:
    """Build and tokenise the requests of ``split`` (all docs, or the doc indices ``samples``).

    ``pack``: requests sharing a context share one packed tree row (see :func:`merge_rows`).
    ``chat``: lm-eval's chat-template mode (contexts rendered through the model's chat
    template, as ``simple_evaluate(apply_chat_template=True, ...)`` builds them).
    """
    task.config.test_split = split
    if hasattr(task, "set_fewshot_seed"):  # few-shot examples drawn as simple_evaluate draws them
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    renderer = ChatRenderer(lm) if chat is not None else None
    task.build_all_requests(
        samples=list(samples) if samples else None,
        rank=0,
        world_size=1,
        **(chat.build_kw(renderer, lm) if chat is not None else {}),
    )
    by_doc: dict[int, list[Any]] = defaultdict(list)
    kinds = {inst.request_type for inst in task.instances}
    if len(kinds) != 1 or not kinds <= set(REQUEST_TYPES):
        raise UserError(
            f"task {task.config.task!r}: request type {', '.join(sorted(map(str, kinds)))} is "
            f"not supported (allowed: {', '.join(REQUEST_TYPES)})"
        )
    kind = kinds.pop()
    for inst in task.instances:
        by_doc[inst.doc_id].append(inst)
    doc_ids = sorted(by_doc)
    flat: list[Any] = []
    for d in doc_ids:
        flat.extend(sorted(by_doc[d], key=lambda i: i.idx))
    gen: list[GenRequest] = []
    splice_at: list[tuple[int, int]] | None = None
    spans = renderer.spans if renderer is not None else {}
    if kind == "loglikelihood":
        pairs = encode_requests(lm, [inst.args for inst in flat])
        units = [[i] for i in range(len(flat))]
        if renderer is not None:  # _encode_pair moved the context's trailing blanks away
            splice_at = [
                splice_positions(lm.tok_encode, inst.args[0].rstrip(), spans.get(inst.args[0]), ctx)
                for inst, (ctx, _) in zip(flat, pairs)
            ]
    elif kind == "loglikelihood_rolling":
        pairs, units = [], []
        for inst in flat:
            windows = rolling_windows(lm, inst.args[0])
            units.append(list(range(len(pairs), len(pairs) + len(windows))))
            pairs.extend(windows)
    else:
        pairs, units = [], [[i] for i in range(len(flat))]
        gen = [
            encode_generation(lm, task.config.task, *inst.args, span=spans.get(inst.args[0]))
            for inst in flat
        ]
    requests_of_doc: list[list[int]] = []
    at = 0
    for d in doc_ids:
        n = len(by_doc[d])
        requests_of_doc.append([u for us in units[at : at + n] for u in us])
        at += n
    rows, per_request = merge_rows(pairs, lm.max_length, pack)
    return PreparedSplit(
        name=split,
        docs=[by_doc[d][0].doc for d in doc_ids],
        doc_ids=doc_ids,
        requests_of_doc=requests_of_doc,
        query_of_request=per_request,
        rows=rows,
        pairs=pairs,
        max_length=lm.max_length,
        pack=pack,
        kind=kind,
        gen=gen,
        splice_at=splice_at,
    )


def rolling_windows(lm: Any, text: str) -> list[tuple[list[int], list[int]]]:
    """A ``loglikelihood_rolling`` request's disjoint windows, as ``HFLM`` builds them
    (lm-eval's ``get_rolling_token_windows`` with the prefix token, ``max_length`` and a
    context of 1, then ``make_disjoint_window``)."""
    from lm_eval import utils

    return [
        (list(c), list(x))
        for c, x in map(
            utils.make_disjoint_window,
            utils.get_rolling_token_windows(
                token_list=lm.tok_encode(text),
                prefix_token=lm.prefix_token_id,
                max_seq_len=lm.max_length,
                context_len=1,
            ),
        )
    ]


@dataclass
class TaskSplitSpec:
    """Which split and which documents a named split of the objective uses."""

    split: str
    samples: list[int] | None = None


def aggregate(
    task: Any, prep: PreparedSplit, ll: np.ndarray, greedy: np.ndarray
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Task metrics from per-request log-likelihoods ``(R,)`` and greedy flags ``(R,)``, through
    ``task.process_results`` per document and the task's aggregation functions.

    Returns the metrics and, for each metric aggregated by lm-eval's ``mean``, its value per
    document ``(D,)`` (the unit of paired statistics; corpus-level metrics have none).
    """
    from lm_eval.api.metrics import mean

    per_metric: dict[str, list[Any]] = defaultdict(list)
    for d in range(prep.n_docs):
        reqs = prep.requests_of_doc[d]
        if prep.kind == "loglikelihood_rolling":  # one request per document: its windows' sum
            results: list[Any] = [float(sum(ll[r] for r in reqs))]
        else:
            results = [(float(ll[r]), bool(greedy[r])) for r in reqs]
        for metric, value in task.process_results(prep.docs[d], results).items():
            per_metric[metric].append(value)
    agg = task.aggregation()
    metrics = {m: float(agg[m](vals)) for m, vals in per_metric.items() if m in agg}
    per_doc = {
        m: np.asarray(vals, dtype=float)
        for m, vals in per_metric.items()
        if agg.get(m) is mean and all(isinstance(v, int | float) for v in vals)
    }
    return metrics, per_doc
