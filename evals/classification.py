"""Classification of a labelled set (Rotten Tomatoes from the bundled data) by label words.

Each document becomes ``[pre | prompt | post]`` (or runs whole under steering) and the answer is
the label word whose first token is likeliest after it.  Value: the mean log-probability of the
gold label normalised over the label words (``label_logprob``, smooth, differentiable);
metrics: accuracy and the full-vocabulary log-probability of the gold label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from blackbox.errors import UserError
from blackbox.evals.document_objective import DocumentObjective, at_last
from blackbox.evals.documents import ids_of, layout
from blackbox.evals.sections import ClassificationObjectiveConfig
from blackbox.forward.splice import Items, SpliceOut

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


class Classification(DocumentObjective):
    """Label log-likelihood and accuracy of a labelled set (see the module docstring).

    Args:
        model: the causal LM.
        splits: ``Items`` with ``gold`` per split.
        label_ids: first token id of each label word, in gold-index order.
    """

    config = ClassificationObjectiveConfig

    metric = "label_logprob"

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        label_ids: Sequence[int],
        **kw: Any,
    ) -> None:
        if len(set(label_ids)) != len(label_ids):
            raise UserError(f"labels must start with distinct tokens, got ids {list(label_ids)}")
        super().__init__(model, splits, **kw)
        for name, items in splits.items():
            if items.gold is None:
                raise UserError(f"objective: split {name!r} has no gold labels")
        self.label_ids = torch.tensor(list(label_ids), dtype=torch.long)

    @classmethod
    def from_rows(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        rows: dict[str, list[dict[str, Any]]],
        labels: Sequence[str],
        layout_kw: dict[str, Any],
        **kw: Any,
    ) -> Classification:
        """Build from records with ``query`` and ``gold`` (label index), by split."""
        splits = {}
        for split, recs in rows.items():
            items, _ = layout(tokenizer, [str(r["query"]) for r in recs], **layout_kw)
            items.gold = np.asarray([int(r["gold"]) for r in recs])
            splits[split] = items
        label_ids = [ids_of(tokenizer, " " + lab.strip())[0] for lab in labels]
        return cls(model, splits, label_ids, **kw)

    @classmethod
    def from_config(
        cls, section: ClassificationObjectiveConfig, ctx: BuildContext
    ) -> Classification:
        from blackbox.errors import ConfigError
        from blackbox.evals.data import DataError, fetch, is_ready, read_split
        from blackbox.evals.sampling import size_warning, subsample

        o = section
        try:
            if not is_ready(o.data):
                fetch(o.data)
            rows = {s: read_split(o.data, s) for s in {o.search_split, o.heldout_split}}
        except (DataError, FileNotFoundError, KeyError) as exc:
            raise ConfigError(f"config: objective.data: {o.data!r}: {exc}") from None
        search = rows[o.search_split]
        pick = subsample(len(search), o.search_size, ctx.seed, labels=[r["gold"] for r in search])
        if o.search_size > len(search):
            ctx.warn(
                size_warning("objective.search_size", o.search_size, len(search), o.search_split)
            )
        held_rows = rows[o.heldout_split]
        exclude = set(pick) if o.heldout_split == o.search_split else None
        held = subsample(len(held_rows), o.heldout_size, 1234, exclude)  # one set for every seed
        data = {"search": [search[i] for i in pick], "heldout": [held_rows[i] for i in held]}
        try:
            return cls.from_rows(
                ctx.model, ctx.tokenizer, data, o.labels, ctx.layout_kw(o), **ctx.objective_kw()
            )
        except ValueError as exc:
            raise ConfigError(f"config: objective: {exc}") from None

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        h = at_last(out.hidden, out)  # (R, d)
        logp = torch.log_softmax(self.splice.logits(h).float(), dim=-1)  # (R, V)
        lab = logp[:, self.label_ids.to(logp.device)]  # (R, L)
        gold = torch.as_tensor(items.gold, device=logp.device).repeat(c)  # (R,)
        norm = torch.log_softmax(lab, dim=-1).gather(1, gold[:, None])[:, 0]
        return {
            "value": norm,
            "acc": (lab.argmax(-1) == gold).float(),
            "vocab_logprob": lab.gather(1, gold[:, None])[:, 0],
        }
