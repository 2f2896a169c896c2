"""Generative lm-eval requests (``generate_until``) as lm-eval's HF model runs them.

:func:`encode_generation` reads a request's context and generation arguments exactly as
``HFLM.generate_until`` does (lm-eval's own ``normalize_gen_kwargs`` and
``handle_stop_sequences``: the stop strings plus the EOS text; ``max_gen_toks``; the context
left-truncated to ``max_length - max_gen_toks`` tokens by ``tok_batch_encode``).
:func:`finish_text` turns generated ids into the string lm-eval would return
(``tok_decode`` and ``postprocess_generated_text``), and :func:`generated_metrics` sends the
strings through the task's filter ensembles, ``process_results`` and aggregations, naming each
metric ``metric,filter`` as lm-eval's results do (and ``metric`` alone for the first filter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from blackbox.errors import UserError


@dataclass(frozen=True)
class GenRequest:
    """A generation request, tokenised.

    Attributes:
        ids: the context's token ids (truncated from the left as the HF model does).
        until: stop strings (the task's, plus the EOS text).
        max_new: ``max_gen_toks``.
        splice: chat-template mode: where a prompt goes in ``ids``, ``(before_input,
            after_input)`` (the start and the end of the last user turn's text); ``None``:
            before the whole context and after it.
    """

    ids: tuple[int, ...]
    until: tuple[str, ...]
    max_new: int
    splice: tuple[int, int] | None = None


def token_at(encode: Any, text: str, char: int, ids: Sequence[int]) -> int:
    """The token boundary of ``ids`` (``encode(text)``) at character ``char`` of ``text``:
    the longest common prefix of ``ids`` and ``encode(text[:char])``.  That is exactly the
    tokens of ``text[:char]`` when ``char`` falls between two tokens of ``ids``; when a token
    straddles it, the boundary before that token."""
    head = encode(text[:char])
    n = 0
    for a, b in zip(head, ids):
        if a != b:
            break
        n += 1
    return n


def encode_generation(
    lm: Any,
    task_name: str,
    context: str,
    gen_kwargs: dict,
    span: tuple[int, int] | None = None,
) -> GenRequest:
    """One ``generate_until`` request as ``HFLM.generate_until`` prepares it.

    ``span``: chat-template mode, the characters of ``context`` holding the last user turn's
    text: their token boundaries become :attr:`GenRequest.splice` (in the truncated ids).

    Raises:
        ValueError: the task samples (``do_sample: true``): its scores are not reproducible
            by greedy decoding.
    """
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    kwargs = normalize_gen_kwargs(dict(gen_kwargs), lm.max_gen_toks)
    if kwargs.get("do_sample"):
        raise UserError(
            f"task {task_name!r}: its generation samples (do_sample: true); only greedy "
            "generation is supported (scores reproducible by lm-eval's HF model)"
        )
    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
    max_new = int(kwargs.pop("max_gen_toks"))
    max_ctx = lm.max_length - max_new
    if max_ctx <= 0:
        raise UserError(
            f"task {task_name!r}: max_gen_toks {max_new} leaves no room for a context in the "
            f"model's max_length {lm.max_length}"
        )
    ids, _ = lm.tok_batch_encode([context], left_truncate_len=max_ctx, truncation=lm.truncation)
    kept = tuple(int(t) for t in ids[0].tolist())
    splice = None
    if span is not None:

        def encode(text: str) -> list[int]:
            return [int(t) for t in lm.tok_batch_encode([text], truncation=lm.truncation)[0][0]]

        whole = encode(context)
        cut = len(whole) - len(kept)  # tokens the left truncation dropped
        a, b = (max(0, token_at(encode, context, c, whole) - cut) for c in span)
        splice = (a, b)
    return GenRequest(kept, tuple(until), max_new, splice)


def cap_generation(task: Any, max_gen_toks: int | None) -> None:
    """Cap a generative task's ``max_gen_toks`` (as ``lm_eval --gen_kwargs`` does)."""
    if max_gen_toks is not None and task.config.output_type == "generate_until":
        task.set_config("generation_kwargs", {"max_gen_toks": int(max_gen_toks)}, update=True)


def finish_text(lm: Any, ids: Sequence[int], until: Sequence[str]) -> str:
    """The string lm-eval's HF model returns for generated ``ids`` (decoded, thinking
    stripped where the model has a think-end token, cut at the first stop string)."""
    from lm_eval.models.utils import postprocess_generated_text

    ids = list(ids)
    think = getattr(lm, "think_end_token", None)
    if isinstance(think, int):
        at = [i for i, t in enumerate(ids) if t == think]
        if at:
            ids = ids[at[-1] + 1 :]
    s = lm.tok_decode(ids)
    if isinstance(think, int):
        s = s.lstrip()
    return postprocess_generated_text(
        generation=s, stop=list(until), think_end_token=think if isinstance(think, str) else None
    )


class StopCheck:
    """``stop(row, ids)``: true once the row's decoded text holds one of its stop strings.

    Only the last few tokens are decoded at each step (enough to hold the longest stop string);
    a hit there is confirmed on the whole text, so a row never stops before lm-eval's output
    is settled (the text before the first stop string cannot change after it).
    """

    def __init__(self, lm: Any, until_of_row: Sequence[Sequence[str]]) -> None:
        self.lm = lm
        self.until = [[u for u in us if u] for us in until_of_row]
        self._window: dict[tuple[str, ...], int] = {}

    def window(self, until: Sequence[str]) -> int:
        key = tuple(until)
        if key not in self._window:
            lens = [len(self.lm.tok_encode(u, add_special_tokens=False)) for u in until]
            self._window[key] = max(lens, default=0) + 2
        return self._window[key]

    def __call__(self, row: int, ids: list[int]) -> bool:
        until = self.until[row]
        if not until:
            return False
        tail = self.lm.tok_decode(ids[-self.window(until) :], skip_special_tokens=False)
        if not any(u in tail for u in until):
            return False
        text = self.lm.tok_decode(ids, skip_special_tokens=False)
        return any(u in text for u in until)


def filter_keys(task: Any) -> list[str]:
    """The names of ``task``'s filter ensembles, in order (``["none"]`` without filters)."""
    return [f.name for f in getattr(task, "_filters", [])] or ["none"]


def generated_metrics(
    task: Any, docs: Sequence[dict], texts_of_doc: Sequence[Sequence[str]]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Task metrics from generated strings, per document its requests' strings.

    Every filter ensemble of the task runs on the strings (as ``task.apply_filters`` does),
    then ``process_results`` per document and the aggregations.  Metrics are named
    ``metric,filter`` for every filter and ``metric`` for the first.

    Returns:
        the metrics and, for metrics aggregated by lm-eval's ``mean``, values per document.
    """
    from lm_eval.api.metrics import mean

    insts = [
        [SimpleNamespace(resps=[text], doc=doc, filtered_resps={}) for text in texts]
        for doc, texts in zip(docs, texts_of_doc)
    ]
    flat = [inst for doc_insts in insts for inst in doc_insts]
    agg = task.aggregation()
    metrics: dict[str, float] = {}
    per_doc: dict[str, np.ndarray] = {}
    ensembles = list(getattr(task, "_filters", []))
    keys = [f.name for f in ensembles] or ["none"]
    for ens in ensembles:
        ens.apply(flat)
    for n, key in enumerate(keys):
        per_metric: dict[str, list[Any]] = defaultdict(list)
        for doc, doc_insts in zip(docs, insts):
            results = [i.filtered_resps[key] if ensembles else i.resps[0] for i in doc_insts]
            for metric, value in task.process_results(doc, results).items():
                per_metric[metric].append(value)
        for m, vals in per_metric.items():
            if m not in agg:
                continue
            value = float(agg[m](vals))
            names = [f"{m},{key}"] + ([m] if n == 0 else [])
            for name in names:
                metrics[name] = value
                if agg.get(m) is mean and all(isinstance(v, int | float) for v in vals):
                    per_doc[name] = np.asarray(vals, dtype=float)
    return metrics, per_doc


def generation_rows(
    prep_gen: Sequence[GenRequest],
    n_candidates: int,
    prompts: Sequence[Any] | None = None,
    placement: str = "before_input",
) -> list[Any]:
    """Rows ``candidate * R + request`` for :func:`~blackbox.forward.generate.greedy_generate`.

    ``prompts``: per candidate, its token ids (a list) or soft prompt ``(n, d)`` embeddings,
    placed before the context (``before_input``) or right after it (``after_input``, where
    the generation starts); in chat-template mode (:attr:`GenRequest.splice`) at the start or
    the end of the last user turn's text instead; ``None`` for hooks (steering) or no
    intervention.
    """
    from blackbox.forward.generate import GenRow

    rows = []
    for c in range(n_candidates):
        p = None if prompts is None else prompts[c]
        for g in prep_gen:
            ids = list(g.ids)
            where = (0, len(ids)) if g.splice is None else g.splice
            at = where[0] if placement == "before_input" else where[1]
            if p is None:
                rows.append(GenRow(ids, g.max_new, c))
            elif isinstance(p, list | tuple):
                rows.append(GenRow(ids[:at] + [int(t) for t in p] + ids[at:], g.max_new, c))
            else:
                rows.append(GenRow(ids, g.max_new, c, soft=(at, p)))
    return rows
