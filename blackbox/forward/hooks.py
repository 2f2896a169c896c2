"""Forward hooks: per-row steering additions to decoder-layer outputs, and activation capture.

One batch can carry many candidates: row ``b`` of the batch belongs to candidate ``rows[b]``
and receives, at each hooked layer, the sum of ``coeff * v`` of that candidate's vectors on
that layer (zero for candidates that steer elsewhere).  Optionally the lowest hooked layer
*branches* the batch: the layers below it ran once per example (``E`` rows), and its output is
repeated ``repeat`` times (candidate-major: row ``n * E + e``) before the additions, so the
unsteered trunk is computed once for all candidates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from blackbox.models.layers import (
    decoder_layers,
    layer_output_hidden,
    mlp_output_projection,
    repeat_batch,
    replace_layer_output,
)


def _repeat_rows(t: torch.Tensor, repeat: int) -> torch.Tensor:
    """Repeat a ``(E, ...)`` tensor to ``(repeat * E, ...)`` candidate-major."""
    return t.repeat(repeat, *([1] * (t.dim() - 1)))


@contextmanager
def add_per_row(
    model: torch.nn.Module,
    additions: dict[int, torch.Tensor],
    repeat: int = 1,
) -> Iterator[None]:
    """Add ``additions[layer][b]`` to row ``b`` of the output of each decoder layer.

    Args:
        model: a Hugging Face decoder whose layer list :func:`decoder_layers` finds.
        additions: layer index -> ``(B, d)`` tensor (one vector per batch row) or ``(d,)``
            (the same vector for every row).  Added at every sequence position.
        repeat: if > 1, the model is fed ``E = B / repeat`` rows; the lowest hooked layer
            repeats its output ``repeat`` times (candidate-major) before adding, and every later
            layer repeats batch-shaped keyword tensors (e.g. an eager attention mask) to match.

    The hooks are always removed, also when the block raises.
    """
    layers = decoder_layers(model)
    handles: list[Any] = []
    lowest = min(additions) if additions else None

    def make_hook(layer: int, add: torch.Tensor):
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            hidden = layer_output_hidden(output)  # (B or E, T, d)
            if repeat > 1 and layer == lowest:
                hidden = _repeat_rows(hidden, repeat)
            delta = add.to(device=hidden.device, dtype=hidden.dtype)
            if delta.dim() == 2:
                delta = delta[:, None, :]  # (B, 1, d)
            return replace_layer_output(output, hidden + delta)

        return hook

    def widen_inputs(_module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            return None
        big = hidden.shape[0]
        small = big // repeat

        def widen(value: Any, name: str | None = None) -> Any:
            return value if small == big else repeat_batch(value, small, repeat, name)

        args = tuple(a if i == 0 else widen(a) for i, a in enumerate(args))
        kwargs = {k: (v if k == "hidden_states" else widen(v, k)) for k, v in kwargs.items()}
        return args, kwargs

    try:
        for layer, add in sorted(additions.items()):
            handles.append(layers[layer].register_forward_hook(make_hook(layer, add)))
        if repeat > 1 and lowest is not None:
            for layer in range(lowest + 1, len(layers)):
                handles.append(
                    layers[layer].register_forward_pre_hook(widen_inputs, with_kwargs=True)
                )
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Capture:
    """An activation to record: decoder block ``layer``'s output (``"residual"``) or the input
    of its MLP output projection (``"mlp"``, the neurons)."""

    layer: int
    kind: Literal["residual", "mlp"] = "residual"


@contextmanager
def capture(model: torch.nn.Module, wanted: Sequence[Capture]) -> Iterator[dict[Capture, Any]]:
    """Record the activations ``wanted`` while the block runs (hooks always removed).

    Every capture is ``(B, T, width)``.  Architectures that flatten the MLP input to
    ``(B*T, f)`` (OPT runs ``fc1``/``fc2`` on 2-D hidden states) are reshaped back, with
    ``(B, T)`` read from the block's own input.

    Register after any steering hooks: forward hooks run in registration order, so a residual
    capture at a steered layer sees the steered output.
    """
    store: dict[Capture, Any] = {}
    layers = decoder_layers(model) if wanted else None
    with ExitStack() as stack:
        for cap in dict.fromkeys(wanted):
            if cap.kind == "residual":
                handle = layers[cap.layer].register_forward_hook(  # type: ignore[index]
                    lambda _m, _a, out, c=cap: store.__setitem__(c, layer_output_hidden(out))
                )
            else:
                shape: list[torch.Size] = []  # (B, T, d) of the block's input, last call
                block = layers[cap.layer]  # type: ignore[index]
                pre = block.register_forward_pre_hook(_block_input_shape(shape), with_kwargs=True)
                stack.callback(pre.remove)
                proj = mlp_output_projection(model, cap.layer)
                handle = proj.register_forward_pre_hook(
                    lambda _m, args, c=cap, s=shape: store.__setitem__(c, _unflatten(args[0], s))
                )
            stack.callback(handle.remove)
        yield store


def _block_input_shape(shape: list[torch.Size]) -> Any:
    """A forward pre-hook keeping the shape of a block's hidden-states input in ``shape``."""

    def hook(_m: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if torch.is_tensor(hidden):
            shape[:] = [hidden.shape]

    return hook


def _unflatten(x: torch.Tensor, shape: list[torch.Size]) -> torch.Tensor:
    """``(B, T, f)`` from an MLP input that is ``(B, T, f)`` already or flattened ``(B*T, f)``
    (``shape`` holds the block input's ``(B', T, d)``)."""
    if x.dim() != 2 or not shape or len(shape[0]) != 3:
        return x
    t = int(shape[0][1])  # rows may have been widened since (branching): trust T only
    if t == 0 or x.shape[0] % t:
        raise RuntimeError(f"MLP input of shape {tuple(x.shape)} does not flatten {t} positions")
    return x.reshape(-1, t, x.shape[-1])
