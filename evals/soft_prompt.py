"""Objectives of soft prompts, batched over candidates and items, differentiable for Adam.

- :class:`SoftClassification`: a labelled set (Rotten Tomatoes from the bundled data); each
  document becomes ``[pre | soft | post]`` and the answer is the label word whose first token
  is likeliest after ``post``.  Value: the mean log-probability of the gold label normalised
  over the label words (``label_logprob``); metrics: accuracy and the full-vocabulary
  log-probability of the gold label.
- :class:`BehaviourMatching`: reference completions generated greedily by the model under a
  reference prompt (for example a system prompt "Talk only about cats."), over a set of user
  prompts; the soft prompt takes the reference prompt's place.  Value: minus the
  teacher-forced cross-entropy of the completions, the first ``k`` tokens weighted ``weight``
  times more; metrics: exact-match@k (the soft prompt's greedy completion equals the
  reference's first ``k`` tokens: teacher-forced argmax agreement at every one of them, which is
  the same thing) and token overlap@k (the fraction of those ``k`` positions that agree).

Both take candidates of any length ``n`` (a hand-written prompt is its token embeddings), run
through :class:`~blackbox.forward.splice.SoftForward` (``pre`` cached), and charge one
forward-pass equivalent per item and candidate (a backward pass two more).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from blackbox.evals.base import Evaluation, Objective
from blackbox.forward.splice import SoftForward, SpliceOut

SOFT = "{soft}"
QUERY = "{query}"
_MARK = "\x00SOFT\x00"


@dataclass
class Items:
    """One data split: ``D`` items as ids around the soft prompt.

    Attributes:
        pre: ``D`` id lists before the soft prompt.
        post: ``D`` id lists after it.
        gold: ``(D,)`` gold label index (classification).
        targets: per item, the ``post`` offset where the reference completion starts and its
            ids (behaviour matching).
    """

    pre: list[list[int]]
    post: list[list[int]]
    gold: np.ndarray | None = None
    targets: list[tuple[int, list[int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.post)

    def subset(self, idx: Sequence[int]) -> Items:
        return Items(
            [self.pre[i] for i in idx],
            [self.post[i] for i in idx],
            None if self.gold is None else self.gold[list(idx)],
            [self.targets[i] for i in idx] if self.targets else [],
        )


def render(
    tokenizer: Any,
    user: str,
    system: str | None = None,
    chat: bool = False,
    completion_prefix: str = "",
) -> tuple[str, str]:
    """The text before and after the ``{soft}`` marker (in ``user`` or ``system``).

    With ``chat`` the turns go through the tokenizer's chat template (generation prompt
    added) and ``completion_prefix`` follows the assistant header.
    """
    where = [t for t in (user, system or "") if SOFT in t]
    if len(where) != 1 or where[0].count(SOFT) != 1:
        raise ValueError("the prompt must hold exactly one {soft} marker (template or system)")
    user, system = user.replace(SOFT, _MARK), (system or "").replace(SOFT, _MARK)
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text += completion_prefix
    else:
        if system:
            raise ValueError("a system prompt needs chat: true")
        text = user + completion_prefix
    before, after = text.split(_MARK)
    return before, after


def place(template: str, placement: str) -> tuple[str, str | None]:
    """(user template, system template) with ``{soft}`` put where ``placement`` says.

    ``before_input``: first in the user turn; ``after_input``: right after ``{query}`` (on a
    line of its own, before the answer cue); ``system``: the whole system turn; ``template``:
    the template already holds ``{soft}``.
    """
    if placement == "template":
        return template, None
    if SOFT in template:
        raise ValueError(f"placement {placement!r}: the template must not hold {{soft}} then")
    if placement == "before_input":
        return SOFT + template, None
    if placement == "after_input":
        if QUERY not in template:
            raise ValueError("placement 'after_input' needs {query} in the template")
        return template.replace(QUERY, QUERY + "\n" + SOFT, 1), None
    if placement == "system":
        return template, SOFT
    raise ValueError(
        f"placement {placement!r}: allowed before_input, after_input, system, template"
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def by_length(candidates: Sequence[Any]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Candidates grouped by soft-prompt length: their indices and ``(C_g, n, d)`` embeddings."""
    groups: dict[int, list[int]] = {}
    for i, cand in enumerate(candidates):
        groups.setdefault(int(cand.embeddings.shape[0]), []).append(i)
    for members in groups.values():
        yield members, torch.stack([candidates[i].embeddings for i in members]).float()


class SoftObjective(Objective):
    """Shared batching: chunks of items, candidates grouped by length, costs.

    Args:
        model: the causal LM (eval mode, frozen).
        splits: the data, by split name (``search``, ``heldout``, ...).
        max_rows: rows (candidates x items) per forward call.
        cache_mb: memory for cached ``pre`` key/values.
    """

    name: ClassVar[str] = "soft"

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        max_rows: int = 64,
        cache_mb: int = 512,
    ) -> None:
        self.model = model
        self.forward = SoftForward(model, cache_mb=cache_mb)
        self.splits = splits
        self.max_rows = max_rows
        self.cache_hits = 0

    def items(self, split: str) -> Items:
        if split not in self.splits:
            raise KeyError(f"split {split!r}: allowed {sorted(self.splits)}")
        return self.splits[split]

    def n_examples(self, split: str = "search") -> int:
        """Items of a split (what minibatch indices pick)."""
        return len(self.items(split))

    def _chunk_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        """Per-row statistics ``{name: (C * D,)}`` of one forward call (``value`` first)."""
        raise NotImplementedError

    def stats(
        self,
        soft: torch.Tensor,
        split: str = "search",
        idx: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean statistics ``{name: (C,)}`` of ``C`` soft prompts ``(C, n, d)`` over a split.

        Differentiable in ``soft`` (the ``pre`` cache is constant).
        """
        c = soft.shape[0]
        if c > self.max_rows:  # many candidates (a repair step): a group at a time
            groups = [
                self.stats(soft[i : i + self.max_rows], split, idx)
                for i in range(0, c, self.max_rows)
            ]
            return {k: torch.cat([g[k] for g in groups]) for k in groups[0]}
        data = self.items(split)
        order = list(range(len(data))) if idx is None else list(idx)
        per_call = max(1, self.max_rows // max(1, c))
        sums: dict[str, torch.Tensor] = {}
        for start in range(0, len(order), per_call):
            chunk = order[start : start + per_call]
            sub = data.subset(chunk)
            out = self.forward(soft, sub.pre, sub.post, keys=[(split, i) for i in chunk])
            rows = self._chunk_stats(out, sub, c)
            for name, v in rows.items():
                total = v.reshape(c, len(chunk)).sum(1)
                sums[name] = sums[name] + total if name in sums else total
        return {k: v / len(order) for k, v in sums.items()}

    def loss(
        self, soft: torch.Tensor, split: str = "search", idx: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``(C,)`` minus the value (to minimise; differentiable)."""
        return -self.stats(soft, split, idx)["value"]

    def cost_of(self, candidates: int, items: int, backward: bool = False) -> float:
        """Forward-pass equivalents of running ``candidates`` on ``items`` (backward: x3)."""
        return float(candidates * items * (3 if backward else 1))

    def gradient_cost(self, idx: Sequence[int] | None = None, split: str = "search") -> float:
        """Forward-pass equivalents of one gradient of the loss over ``idx`` (all: ``None``)."""
        n = self.n_examples(split) if idx is None else len(idx)
        return self.cost_of(1, n, backward=True)

    def evaluate(
        self, candidates: Sequence[Any], split: str = "search", limit: int | None = None
    ) -> Evaluation:
        data = self.items(split)
        idx = None if limit is None else list(range(min(limit, len(data))))
        n_items = len(data) if idx is None else len(idx)
        values = np.full(len(candidates), np.nan)
        metrics: list[dict[str, Any]] = [{} for _ in candidates]
        with torch.no_grad():
            for members, soft in by_length(candidates):
                st = self.stats(soft, split, idx)
                for j, i in enumerate(members):
                    row = {k: float(v[j]) for k, v in st.items()}
                    values[i] = row.pop("value")
                    metrics[i] = {self.metric: values[i], **row}
        return Evaluation(values, metrics, cost=self.cost_of(len(candidates), n_items))


class SoftClassification(SoftObjective):
    """Label log-likelihood and accuracy of a labelled set (see the module docstring).

    Args:
        model: the causal LM.
        splits: ``Items`` with ``gold`` per split.
        label_ids: first token id of each label word, in gold-index order.
    """

    name: ClassVar[str] = "classification"
    metric = "label_logprob"

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        label_ids: Sequence[int],
        max_rows: int = 64,
        cache_mb: int = 512,
    ) -> None:
        if len(set(label_ids)) != len(label_ids):
            raise ValueError(f"labels must start with distinct tokens, got ids {list(label_ids)}")
        super().__init__(model, splits, max_rows, cache_mb)
        self.label_ids = torch.tensor(list(label_ids), dtype=torch.long)

    @classmethod
    def from_rows(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        rows: dict[str, list[dict[str, Any]]],
        template: str,
        labels: Sequence[str],
        system: str | None = None,
        chat: bool = False,
        **kw: Any,
    ) -> SoftClassification:
        """Build from records with ``query`` and ``gold`` (label index), by split."""
        splits = {}
        for split, recs in rows.items():
            pre, post, gold = [], [], []
            for r in recs:
                q = str(r["query"])
                before, after = render(
                    tokenizer,
                    template.replace(QUERY, q),
                    system.replace(QUERY, q) if system else None,
                    chat,
                )
                pre.append(_ids(tokenizer, before))
                post.append(_ids(tokenizer, after))
                gold.append(int(r["gold"]))
            splits[split] = Items(pre, post, np.asarray(gold))
        label_ids = [_ids(tokenizer, " " + lab.strip())[0] for lab in labels]
        return cls(model, splits, label_ids, **kw)

    def _chunk_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        rows = torch.arange(out.hidden.shape[0], device=out.hidden.device)
        h = out.hidden[rows, out.last]  # (C*D, d)
        logp = torch.log_softmax(self.forward.logits(h).float(), dim=-1)  # (C*D, V)
        lab = logp[:, self.label_ids.to(logp.device)]  # (C*D, L)
        gold = torch.as_tensor(items.gold, device=logp.device).repeat(c)  # (C*D,)
        norm = torch.log_softmax(lab, dim=-1).gather(1, gold[:, None])[:, 0]
        return {
            "value": norm,
            "acc": (lab.argmax(-1) == gold).float(),
            "vocab_logprob": lab.gather(1, gold[:, None])[:, 0],
        }


class BehaviourMatching(SoftObjective):
    """Teacher-forced match of reference completions (see the module docstring).

    Args:
        model: the causal LM.
        splits: ``Items`` with ``targets`` per split.
        k: the first ``k`` completion tokens weigh ``weight`` times more and define the @k
            metrics.
        weight: their weight.
    """

    name: ClassVar[str] = "behaviour"
    metric = "neg_xentropy"

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        k: int = 32,
        weight: float = 3.0,
        max_rows: int = 16,
        cache_mb: int = 256,
    ) -> None:
        super().__init__(model, splits, max_rows, cache_mb)
        self.k, self.weight = int(k), float(weight)

    @classmethod
    def from_prompts(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        reference: str,
        prompts: dict[str, list[str]],
        placement: str = "system",
        max_new_tokens: int = 48,
        **kw: Any,
    ) -> tuple[BehaviourMatching, dict[str, list[str]]]:
        """Generate the reference completions (greedy) and build the splits.

        Returns the objective and the reference completions' text by split.
        """
        user_t, system_t = place(QUERY, placement)
        dev = next(model.parameters()).device
        splits, texts = {}, {}
        for split, plist in prompts.items():
            pre, post, targets, outs = [], [], [], []
            for prompt in plist:
                before, after = render(
                    tokenizer,
                    user_t.replace(QUERY, prompt),
                    system_t.replace(QUERY, prompt) if system_t else None,
                    chat=True,
                )
                p_ids, a_ids = _ids(tokenizer, before), _ids(tokenizer, after)
                ref_ids = p_ids + _ids(tokenizer, reference) + a_ids
                with torch.no_grad():
                    gen = model.generate(
                        torch.tensor([ref_ids], device=dev),
                        attention_mask=torch.ones(1, len(ref_ids), dtype=torch.long, device=dev),
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                comp = [int(t) for t in gen[0, len(ref_ids) :]]
                if tokenizer.eos_token_id in comp:
                    comp = comp[: comp.index(tokenizer.eos_token_id) + 1]
                pre.append(p_ids)
                post.append(a_ids + comp)
                targets.append((len(a_ids), comp))
                outs.append(tokenizer.decode(comp, skip_special_tokens=True))
            splits[split] = Items(pre, post, targets=targets)
            texts[split] = outs
        return cls(model, splits, **kw), texts

    def _chunk_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        dev = out.hidden.device
        t_max = max(len(t) for _, t in items.targets)
        d_items = len(items)
        pos = torch.zeros(d_items, t_max, dtype=torch.long, device=dev)
        tgt = torch.zeros(d_items, t_max, dtype=torch.long, device=dev)
        w = torch.zeros(d_items, t_max, device=dev)
        for i, (start, comp) in enumerate(items.targets):
            m = len(comp)
            # the hidden state before completion token j sits at n + start + j - 1
            pos[i, :m] = out.n_soft + start - 1 + torch.arange(m, device=dev)
            tgt[i, :m] = torch.tensor(comp, device=dev)
            w[i, :m] = torch.where(torch.arange(m, device=dev) < self.k, self.weight, 1.0)
        pos, tgt, w = pos.repeat(c, 1), tgt.repeat(c, 1), w.repeat(c, 1)  # (C*D, T)
        h = out.hidden.gather(1, pos[..., None].expand(-1, -1, out.hidden.shape[-1]))
        logits = self.forward.logits(h).float()  # (C*D, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), tgt, reduction="none"
        )  # (C*D, T)
        xent = (nll * w).sum(1) / w.sum(1)
        valid = w > 0
        first_k = valid & (torch.arange(t_max, device=dev)[None] < self.k)
        agree = (logits.argmax(-1) == tgt) & first_k
        return {
            "value": -xent,
            "exact_match_at_k": (agree.sum(1) == first_k.sum(1)).float(),
            "overlap_at_k": agree.sum(1) / first_k.sum(1).clamp(min=1),
        }
