"""Shared forward pass for token-sequence objectives.

Runs the model on ``[prefix | optimised tokens | suffix]`` for a batch of candidates.  The prefix
is run once at construction; its KV cache is expanded across each batch, so a candidate costs
only its own ``n + len(suffix)`` positions.  The optimised tokens enter either as ids or as a
one-hot ``(B, n, V)`` tensor multiplied by the embedding matrix (``one_hot @ W_E``), which makes
every score differentiable with respect to the one-hot inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from blackbox.models.compat import cache_kwargs, output_cache
from blackbox.search_spaces.tokens import TokenContext


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM (``blackbox.models.layers`` when present)."""
    try:
        from blackbox.models.layers import decoder_layers as shared

        return shared(model)
    except ImportError:
        return model.model.layers


def embed_one_hot(model: torch.nn.Module, one_hot: torch.Tensor) -> torch.Tensor:
    """``(B, n, d)`` embeddings of a one-hot ``(B, n, V)`` input (``one_hot @ W_E``)."""
    w = model.get_input_embeddings().weight  # (V, d)
    return one_hot.to(w.dtype) @ w


def prompt_xentropy(
    next_logits: torch.Tensor, ids: torch.Tensor, first_predicted: bool
) -> torch.Tensor:
    """``(B,)`` mean cross-entropy of the optimised tokens under the model (self-fluency).

    Args:
        next_logits: ``(B, n, V)``; row ``i`` holds the logits predicting token ``i``.
        ids: ``(B, n)`` the tokens, or a one-hot ``(B, n, V)`` (differentiable).
        first_predicted: False when nothing precedes token 0 (its row is then ignored).
    """
    logp = F.log_softmax(next_logits.float(), dim=-1)  # (B, n, V)
    if ids.dim() == 3:
        nll = -(logp * ids.float()).sum(-1)  # (B, n)
    else:
        nll = -logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (B, n)
    if not first_predicted:
        nll = nll[:, 1:]
    if nll.shape[1] == 0:
        return torch.zeros(ids.shape[0], device=ids.device)
    return nll.mean(dim=1)


@dataclass
class ForwardOut:
    """Outputs of one batched forward.

    Attributes:
        logits: ``(B, n + S, V)`` logits at the optimised and suffix positions.
        next_logits: ``(B, n, V)`` logits predicting each optimised token (row 0 from the
            prefix's last position, zeros without a prefix).
        hidden_states: per layer (embeddings first) ``(B, n + S, d)``, or empty.
        captured: inputs of modules registered for capture, ``(B, n + S, ...)`` each.
        first_predicted: whether row 0 of ``next_logits`` is a real prediction.
        tokens: the optimised tokens as given, ids ``(B, n)`` or one-hot ``(B, n, V)``.
    """

    logits: torch.Tensor
    next_logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] = ()
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    first_predicted: bool = False
    tokens: torch.Tensor | None = None


@contextmanager
def capture_inputs(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the first positional input of each module while the block runs."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in modules.items():

        def hook(_m: torch.nn.Module, args: tuple, _name: str = name) -> None:
            store[_name] = args[0]

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class TokenForward:
    """Batched forward of ``[prefix | tokens | suffix]`` with a cached prefix.

    Args:
        model: a causal LM (eval mode; parameters are not trained).
        context: fixed ids around the optimised tokens.
        use_prefix_cache: reuse the prefix's KV cache (False recomputes it every batch; for
            parity tests).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        context: TokenContext | None = None,
        use_prefix_cache: bool = True,
    ) -> None:
        self.model = model
        self.context = context or TokenContext()
        self.use_prefix_cache = use_prefix_cache
        dev = self.device
        self.prefix = torch.tensor([self.context.prefix_ids], dtype=torch.long, device=dev)
        self.suffix = torch.tensor(self.context.suffix_ids, dtype=torch.long, device=dev)
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._prefix_last: torch.Tensor | None = None
        if self.prefix.shape[1] and use_prefix_cache:
            with torch.no_grad():
                out = model(input_ids=self.prefix, use_cache=True)
            self._kv = [(layer.keys, layer.values) for layer in output_cache(out).layers]
            self._prefix_last = out.logits[0, -1]  # (V,)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    def _cache(self, batch: int) -> DynamicCache | None:
        if not self._kv:
            return None
        data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self._kv]
        return DynamicCache(ddp_cache_data=data)

    def __call__(
        self,
        ids: torch.Tensor | None = None,
        one_hot: torch.Tensor | None = None,
        hidden: bool = False,
        capture: dict[str, torch.nn.Module] | None = None,
    ) -> ForwardOut:
        """Run a batch given ``ids`` ``(B, n)`` or ``one_hot`` ``(B, n, V)``."""
        emb_layer = self.model.get_input_embeddings()
        if one_hot is not None:
            x = embed_one_hot(self.model, one_hot)  # (B, n, d)
        else:
            x = emb_layer(ids)  # (B, n, d)
        batch, n = x.shape[:2]
        parts = [x]
        n_pre = 0
        if self.suffix.numel():
            parts.append(emb_layer(self.suffix).unsqueeze(0).expand(batch, -1, -1))
        if self.prefix.shape[1] and not self.use_prefix_cache:
            n_pre = self.prefix.shape[1]
            parts.insert(0, emb_layer(self.prefix).expand(batch, -1, -1))
        embeds = torch.cat(parts, dim=1)  # (B, [P +] n + S, d)
        with capture_inputs(capture or {}) as store:
            out = self.model(
                inputs_embeds=embeds,
                **cache_kwargs(self.model, self._cache(batch)),
                use_cache=bool(self._kv),
                output_hidden_states=hidden,
            )
        logits = out.logits[:, n_pre:]  # (B, n + S, V)
        if n_pre:
            first = out.logits[:, n_pre - 1 : n_pre]  # (B, 1, V)
        elif self._prefix_last is not None:
            first = self._prefix_last.expand(batch, 1, -1)
        else:
            first = torch.zeros_like(logits[:, :1])
        next_logits = torch.cat([first, logits[:, : n - 1]], dim=1)  # (B, n, V)
        hs = tuple(h[:, n_pre:] for h in out.hidden_states) if hidden else ()
        captured = {k: v[:, n_pre:] for k, v in store.items()}
        return ForwardOut(
            logits=logits,
            next_logits=next_logits,
            hidden_states=hs,
            captured=captured,
            first_predicted=bool(self.prefix.shape[1]),
            tokens=one_hot if one_hot is not None else ids,
        )
