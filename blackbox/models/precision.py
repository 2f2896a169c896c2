"""``model.dtype: auto``: choose the precision by measuring it on this machine.

Whether bf16 is faster than fp32 on a CPU depends on the CPU: with AMX (or fast AVX512-BF16
paths) bf16 matrix multiplies run several times faster; without them bf16 can be a third
*slower* than fp32 (measured on a Xeon with AVX512-BF16 and no AMX).  A user cannot know which,
so ``auto`` measures it once, at load:

1. the model is loaded in float32 and run on a fixed probe batch (``PROBE_ROWS`` rows of
   ``PROBE_TOKENS`` tokens, half the CPU scoring batch) as far as its first decoder block, whose
   inputs are captured;
2. that block is timed in float32 and in bfloat16 on those inputs, the two alternating call by
   call (median of ``REPEATS`` each, after a warm-up); a model under ``MIN_PARAMETERS`` stays in
   float32 untimed;
3. bfloat16 is chosen only if its block is at least ``MARGIN`` times faster *and* the whole model
   in bfloat16 passes the exactness check on the probe: the log-probability it gives float32's
   top token at every position is within ``TOLERANCE`` nats on average, and the top token agrees
   at ``AGREEMENT`` of the positions.  Otherwise float32 stays.

On CUDA ``auto`` means bfloat16 when the device supports it (tensor-core bf16 matmuls are faster
than fp32 on every such GPU, and loading an 8B model in float32 first would not fit), else
float32; nothing is timed.  The decision, its timings and the CPU's bf16 features are returned
as a :class:`PrecisionChoice` and written to ``result.json -> precision``.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

PROBE_ROWS = 4
PROBE_TOKENS = 256
REPEATS = 3
MIN_PARAMETERS = 20_000_000
"""Below this a model stays in float32 untimed: per-call overhead, not matmuls, sets its speed,
so a timing would measure noise (and two processes could choose differently)."""
MARGIN = 1.15
"""bf16 must be this much faster on the block: it costs precision, so a tie keeps fp32."""
TOLERANCE = 0.1
"""Mean |log p_bf16 - log p_fp32| of fp32's top token over the probe's positions, in nats."""
AGREEMENT = 0.9
"""Share of probe positions at which bf16's top token is fp32's."""

_PROBE_TEXT = (
    "The river rose slowly through the night, and by morning the lower fields were under water. "
    "Farmers moved their animals to the hills, while the town council met to decide whether the "
    "old bridge could still carry the weight of the supply trucks. An engineer measured the "
    "cracks, wrote down three numbers and said the bridge would hold for one more week. "
)


@dataclass
class PrecisionChoice:
    """What ``dtype: auto`` chose and why (``result.json -> precision``).

    Attributes:
        requested: The config's value, ``"auto"``.
        chosen: ``"float32"`` or ``"bfloat16"``.
        reason: One sentence: the measured ratio and the check, or why nothing was timed.
        block_seconds: Median seconds of one decoder block per precision (empty when untimed).
        check: The bf16 exactness check on the probe (``mean_abs_logprob_diff``,
            ``top1_agreement``, ``passed``), when it ran.
        cpu_bf16_features: The CPU flags that make bf16 fast (``amx_bf16``, ``avx512_bf16``)
            found in ``/proc/cpuinfo`` (empty elsewhere).
        seconds: Wall time the choice took.
    """

    requested: str
    chosen: str
    reason: str
    block_seconds: dict[str, float] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    cpu_bf16_features: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def cpu_bf16_features() -> list[str]:
    """The bf16-relevant CPU flags of this machine (``amx_bf16``, ``avx512_bf16``, ...)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def _blocks(model: Any) -> Any:
    """The model's stack of decoder blocks (a ``ModuleList``), or ``None``."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return module
    return None


def _probe_ids(tokenizer: Any, vocab_size: int, device: str) -> torch.Tensor:
    """``[PROBE_ROWS, PROBE_TOKENS]`` token ids: the probe text repeated, each row shifted."""
    ids = tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if i < vocab_size] or [0]
    need = PROBE_ROWS + PROBE_TOKENS
    ids = (ids * (need // len(ids) + 1))[:need]
    rows = [ids[r : r + PROBE_TOKENS] for r in range(PROBE_ROWS)]
    return torch.tensor(rows, device=device)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating tensor inside (tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _time_pair(block: Any, args: tuple, kwargs: dict) -> tuple[float, float]:
    """Median seconds of ``block`` in float32 and in bfloat16 (copies) on the captured inputs.

    The two precisions alternate call by call, so a load that comes and goes on the machine
    slows both alike; after the first pair, a bf16 call 1.5x slower than fp32's ends the
    timing (it cannot win)."""
    runs = {
        dt: (copy.deepcopy(block).to(dt), _cast(args, dt), _cast(kwargs, dt))
        for dt in (torch.float32, torch.bfloat16)
    }
    times: dict[torch.dtype, list[float]] = {dt: [] for dt in runs}
    with torch.inference_mode():
        for b, a, k in runs.values():
            b(*a, **k)  # warm-up
        for i in range(REPEATS):
            for dt, (b, a, k) in runs.items():
                t0 = time.perf_counter()
                b(*a, **k)
                times[dt].append(time.perf_counter() - t0)
            if i == 0 and times[torch.bfloat16][0] > 1.5 * times[torch.float32][0]:
                break
    return statistics.median(times[torch.float32]), statistics.median(times[torch.bfloat16])


class _Captured(Exception):
    """Raised by the pre-hook once the first block's inputs are held: the rest of the forward
    pass is not needed to time the block."""


def _logprobs(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """``[rows, tokens, vocab]`` float32 log-probabilities of ``model`` on ``ids``."""
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits
    return torch.log_softmax(logits.float(), dim=-1)


def compare_logprobs(ref: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """The exactness check: ``other`` against the float32 reference ``ref``.

    Args:
        ref: ``[rows, tokens, vocab]`` float32 log-probabilities.
        other: the same from the candidate precision.

    Returns:
        ``mean_abs_logprob_diff`` (of ref's top token), ``top1_agreement`` and ``passed``.
    """
    top = ref.argmax(-1, keepdim=True)
    diff = (ref.gather(-1, top) - other.gather(-1, top)).abs()
    finite = bool(torch.isfinite(other).all())
    mean = float(diff.mean()) if finite else float("inf")
    agree = float((other.argmax(-1, keepdim=True) == top).float().mean())
    return {
        "mean_abs_logprob_diff": round(mean, 5),
        "top1_agreement": round(agree, 4),
        "passed": finite and mean <= TOLERANCE and agree >= AGREEMENT,
    }


def choose_cuda_dtype(device: str) -> PrecisionChoice:
    """``auto`` on a CUDA device: bfloat16 where supported, else float32 (nothing timed)."""
    index = torch.device(device).index
    with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
        return cuda_choice(torch.cuda.is_bf16_supported())


def cuda_choice(bf16_supported: bool) -> PrecisionChoice:
    """The CUDA rule: bfloat16 if the device supports it, else float32."""
    if bf16_supported:
        why = "bfloat16: a CUDA device with bf16 support (tensor-core bf16 matmuls beat fp32)"
        return PrecisionChoice("auto", "bfloat16", why)
    return PrecisionChoice("auto", "float32", "float32: this CUDA device has no bf16 support")


def choose_and_convert(model: Any, tokenizer: Any) -> PrecisionChoice:
    """Time ``model`` (loaded in float32) in float32 and bfloat16; convert it in place to
    bfloat16 if that is faster by ``MARGIN`` and passes the check, else leave it in float32.

    Returns:
        The :class:`PrecisionChoice` (``chosen`` is the model's dtype on return).
    """
    start = time.perf_counter()
    features = cpu_bf16_features()
    device = next(model.parameters()).device
    size = sum(p.numel() for p in model.parameters())
    if size < MIN_PARAMETERS:
        why = f"float32: {size / 1e6:.1f}M parameters, too few for bf16 to pay (nothing timed)"
        return PrecisionChoice("auto", "float32", why, {}, None, features)
    blocks = _blocks(model)
    if blocks is None:
        return PrecisionChoice(
            "auto", "float32", "no decoder-block stack found to time: float32", {}, None, features
        )
    vocab = int(model.get_output_embeddings().weight.shape[0])
    ids = _probe_ids(tokenizer, vocab, str(device))
    captured: dict[str, Any] = {}

    def grab(_module: Any, args: tuple, kwargs: dict) -> None:
        captured["args"], captured["kwargs"] = args, kwargs
        raise _Captured

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        return PrecisionChoice(
            "auto", "float32", "the first decoder block never ran: float32", {}, None, features
        )
    args, kwargs = captured["args"], dict(captured["kwargs"])
    kwargs.pop("past_key_values", None)
    kwargs.pop("past_key_value", None)
    fp32, bf16 = _time_pair(blocks[0], args, kwargs)
    seconds = {"float32": round(fp32, 5), "bfloat16": round(bf16, 5)}

    def chose(dtype: str, reason: str, check: dict[str, Any] | None = None) -> PrecisionChoice:
        return PrecisionChoice(
            "auto", dtype, reason, seconds, check, features, time.perf_counter() - start
        )

    ratio = seconds["float32"] / max(seconds["bfloat16"], 1e-9)
    shown = f"one decoder block {seconds['bfloat16']:.4f} s in bf16 vs {seconds['float32']:.4f} s"
    if ratio < MARGIN:
        slower = "slower" if ratio < 1 else f"faster by less than {MARGIN:g}x"
        return chose("float32", f"float32: bf16 is {slower} here ({shown}, {ratio:.2f}x)")
    ref = _logprobs(model, ids)
    trial = copy.deepcopy(model).to(torch.bfloat16)  # the fp32 weights stay exact if it fails
    check = compare_logprobs(ref, _logprobs(trial, ids))
    del trial
    agreement = (
        f"mean |d log p| {check['mean_abs_logprob_diff']}, top-1 agreement "
        f"{check['top1_agreement']}"
    )
    if not check["passed"]:
        why = f"float32: bf16 is {ratio:.2f}x faster ({shown}) but fails the exactness check"
        return chose("float32", f"{why} ({agreement})", check)
    model.to(torch.bfloat16)  # the same rounding as loading in bf16
    return chose("bfloat16", f"bfloat16: {ratio:.2f}x faster ({shown}); probe {agreement}", check)
