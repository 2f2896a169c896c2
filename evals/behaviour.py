"""Teacher-forced targets after each document: a fixed string, or the model's own behaviour.

- :class:`ReferenceObjective` (GCG's objective, Zou et al. 2023): a target string the prompt
  should make the model say after each document.
- :class:`BehaviourMatching`: the model's own greedy completions of each document under a
  *reference prompt* (for example the system prompt "Talk only about cats."); the intervention
  (a prompt in the reference's place, or steering without it) should reproduce them.

Both score minus the teacher-forced cross-entropy of the target tokens, the first ``k``
weighted ``weight`` times more (early tokens decide where a completion goes), and report
``loss``, exact-match@k (every one of the first ``k`` targets is the argmax: the greedy
completion starts with them) and token overlap@k (the fraction that are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from blackbox.api import ObjectiveTraits
from blackbox.errors import UserError
from blackbox.evals.document_objective import DocumentObjective, states_before
from blackbox.evals.documents import ids_of, layout
from blackbox.evals.sections import BehaviourObjectiveConfig, ReferenceObjectiveConfig
from blackbox.forward.splice import Items, SpliceOut

if TYPE_CHECKING:
    from blackbox.study.context import BuildContext


def with_targets(items: Items, targets: Sequence[Sequence[int]]) -> Items:
    """``items`` with each document's target appended to its ``post`` (teacher forcing)."""
    post, spans = [], []
    for p, t in zip(items.post, targets):
        spans.append((len(p), [int(x) for x in t]))
        post.append(list(p) + [int(x) for x in t])
    return Items(list(items.pre), post, items.gold, spans)


class TargetObjective(DocumentObjective):
    """Weighted teacher-forced cross-entropy of each document's target (see the module
    docstring).

    Args:
        model: the causal LM.
        splits: ``Items`` with ``targets`` per split.
        k: the first ``k`` target tokens weigh ``weight`` times more and define the @k metrics.
        weight: their weight (1: a plain mean).
    """

    metric = "neg_loss"
    traits = ObjectiveTraits(needs_documents_for_hooks=True)

    def __init__(
        self,
        model: torch.nn.Module,
        splits: dict[str, Items],
        k: int = 32,
        weight: float = 1.0,
        **kw: Any,
    ) -> None:
        super().__init__(model, splits, **kw)
        for name, items in splits.items():
            if not items.targets or any(not t for _, t in items.targets):
                raise UserError(f"objective: split {name!r}: every document needs a target")
        self.k, self.weight = int(k), float(weight)

    def row_stats(self, out: SpliceOut, items: Items, c: int) -> dict[str, torch.Tensor]:
        dev = out.hidden.device
        t_max = max(len(t) for _, t in items.targets)
        d_items = len(items)
        offset = torch.zeros(d_items, t_max, dtype=torch.long, device=dev)
        tgt = torch.zeros(d_items, t_max, dtype=torch.long, device=dev)
        w = torch.zeros(d_items, t_max, device=dev)
        steps = torch.arange(t_max, device=dev)
        for i, (start, ids) in enumerate(items.targets):
            m = len(ids)
            offset[i, :m] = start + steps[:m] - 1  # the state before target token j
            tgt[i, :m] = torch.tensor(ids, device=dev)
            w[i, :m] = torch.where(steps[:m] < self.k, self.weight, 1.0)
        offset, tgt, w = offset.repeat(c, 1), tgt.repeat(c, 1), w.repeat(c, 1)  # (R, T)
        h = states_before(out, out.post_start[:, None] + offset)  # (R, T, d)
        logits = self.splice.logits(h).float()  # (R, T, V)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
        loss = (nll * w).sum(1) / w.sum(1)
        first_k = (w > 0) & (steps[None] < self.k)
        agree = (logits.argmax(-1) == tgt) & first_k
        return {
            "value": -loss,
            "loss": loss,
            "exact_match_at_k": (agree.sum(1) == first_k.sum(1)).float(),
            "overlap_at_k": agree.sum(1) / first_k.sum(1).clamp(min=1),
        }


class ReferenceObjective(TargetObjective):
    """Minus the teacher-forced cross-entropy of a target string after each document."""

    config = ReferenceObjectiveConfig

    @classmethod
    def from_config(
        cls, section: ReferenceObjectiveConfig, ctx: BuildContext
    ) -> ReferenceObjective:
        o = section
        return cls.from_documents(
            ctx.model,
            ctx.tokenizer,
            ctx.documents(o),
            o.target,
            ctx.layout_kw(o),
            k=o.k,
            weight=o.weight,
            **ctx.objective_kw(),
        )

    @classmethod
    def from_documents(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        documents: dict[str, list[str]],
        target: str,
        layout_kw: dict[str, Any],
        **kw: Any,
    ) -> ReferenceObjective:
        """Documents (by split) laid out by :func:`~blackbox.evals.documents.layout`, each
        followed by ``target``."""
        target_ids = ids_of(tokenizer, target)
        if not target_ids:
            raise UserError("reference: empty target")
        splits = {}
        for split, docs in documents.items():
            items, _ = layout(tokenizer, docs, **layout_kw)
            splits[split] = with_targets(items, [target_ids] * len(docs))
        return cls(model, splits, **kw)


class BehaviourMatching(TargetObjective):
    """Match the model's own completions under a reference prompt (see the module docstring).

    ``reference_completions`` holds the completions' text by split (reported in result.json).
    """

    config = BehaviourObjectiveConfig

    reference_completions: dict[str, list[str]]
    reference_text: str = ""

    @classmethod
    def check_config(cls, section: BehaviourObjectiveConfig, placement: str | None) -> None:
        from blackbox.errors import ConfigError

        if not section.has_documents():
            raise ConfigError(
                "config: objective.prompts: behaviour matching needs user prompts whose "
                "reference completions to match (objective.prompts or objective.prompts_file)"
            )
        if placement == "template":
            raise ConfigError(
                "config: space.placement: behaviour matching takes before_input, after_input or "
                "system (the reference prompt goes where the prompt goes)"
            )

    @classmethod
    def from_config(cls, section: BehaviourObjectiveConfig, ctx: BuildContext) -> BehaviourMatching:
        from blackbox.errors import ConfigError

        o = section
        lay = ctx.layout_kw(o)
        if lay["placement"] == "template":
            raise ConfigError(
                "config: space.placement: behaviour matching takes before_input, after_input or "
                "system (the reference prompt goes where the prompt goes)"
            )
        # the reference prompt takes the prompt's place; steering matches it without a prompt
        ref = dict(lay, placement=lay["placement"] if ctx.has_prompt else "system")
        if ref["placement"] == "system" and o.system is not None:
            raise ConfigError(
                "config: objective.system: the reference prompt fills the system turn"
            )
        if ref["placement"] == "system" and not o.chat:
            raise ConfigError("config: objective.chat: a system-turn reference needs chat: true")
        obj, texts = cls.from_prompts(
            ctx.model,
            ctx.tokenizer,
            o.reference,
            ctx.documents(o),
            lay,
            ref,
            max_new_tokens=o.max_new_tokens,
            k=o.k,
            weight=o.weight,
            **ctx.objective_kw(max_rows=16),
        )
        obj.reference_completions, obj.reference_text = texts, o.reference
        return obj

    @classmethod
    def from_prompts(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        reference: str,
        documents: dict[str, list[str]],
        layout_kw: dict[str, Any],
        reference_kw: dict[str, Any],
        max_new_tokens: int = 48,
        **kw: Any,
    ) -> tuple[BehaviourMatching, dict[str, list[str]]]:
        """Generate the reference completions (greedy) and build the splits.

        Args:
            model: the causal LM.
            tokenizer: its tokenizer.
            reference: the reference prompt's text.
            documents: user prompts by split.
            layout_kw: how the intervened documents are laid out (the prompt's place).
            reference_kw: how the reference prompt is laid out (its ``placement``; the
                reference text goes where a prompt would).
            max_new_tokens: completion length.

        Returns:
            the objective and the reference completions' text by split.
        """
        dev = next(model.parameters()).device
        ref_ids = ids_of(tokenizer, reference)
        splits, texts = {}, {}
        for split, docs in documents.items():
            ref_items, _ = layout(tokenizer, docs, **reference_kw)
            items, _ = layout(tokenizer, docs, **layout_kw)
            comps, outs = [], []
            for pre, post in zip(ref_items.pre, ref_items.post):
                ctx = pre + ref_ids + post
                with torch.no_grad():
                    gen = model.generate(
                        torch.tensor([ctx], device=dev),
                        attention_mask=torch.ones(1, len(ctx), dtype=torch.long, device=dev),
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                comp = [int(t) for t in gen[0, len(ctx) :]]
                if tokenizer.eos_token_id in comp:
                    comp = comp[: comp.index(tokenizer.eos_token_id) + 1]
                if not comp:
                    raise UserError(f"behaviour: the reference completion of {docs[0]!r} is empty")
                comps.append(comp)
                outs.append(tokenizer.decode(comp, skip_special_tokens=True))
            splits[split] = with_targets(items, comps)
            texts[split] = outs
        return cls(model, splits, **kw), texts
