from __future__ import annotations

import copy
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from blackbox.models import loading as models
from blackbox.models.cache import embedded_gguf_path, is_valid_cache, source_stamp
from blackbox.models.loading import (
    DEFAULT_MODEL,
    ModelLoadError,
    dtype_name,
    load_model,
    parse_dtype,
    prepare_tokenizer,
    resolve_device,
)

# --- dtype and device ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_parse_dtype(given: Any, expected: torch.dtype) -> None:
    assert parse_dtype(given) == expected
    assert dtype_name(given) == str(expected).removeprefix("torch.")


@pytest.mark.parametrize("bad", ["float64", "int8", "", torch.int64])
def test_bad_dtype_is_one_clear_error(bad: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"expected auto, float32, bfloat16 or float16") as err:
        parse_dtype(bad)
    assert isinstance(err.value, ValueError)
    assert "\n" not in str(err.value)


def test_load_model_rejects_bad_dtype_before_loading() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="dtype 'float64'"):
        load_model("blackbox-test/does-not-exist", dtype="float64")
    assert time.perf_counter() - start < 1


def test_resolve_device() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ModelLoadError, match="device 'banana'"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda:0")


# --- resolving names -------------------------------------------------------------------------


def test_offline_unknown_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_model("blackbox-test/does-not-exist")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert message.startswith(
        "model 'blackbox-test/does-not-exist': not a local directory and not in the "
        "Hugging Face cache; this machine is offline (HF_HUB_OFFLINE is set)"
    )
    assert "\n" not in message


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def refuse(*_args: Any, **_kwargs: Any) -> socket.socket:
        raise OSError("network is unreachable")

    monkeypatch.setattr(models.socket, "create_connection", refuse)
    start = time.perf_counter()
    with pytest.raises(
        ModelLoadError, match=r"this machine is offline \(cannot reach .*unreachable"
    ):
        load_model("blackbox-test/does-not-exist")
    assert time.perf_counter() - start < 5


def test_missing_local_path_is_clear() -> None:
    with pytest.raises(ModelLoadError, match="no such local directory"):
        load_model("./no/such/model/dir")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model("missing.gguf")


# --- tokenizer -------------------------------------------------------------------------------


def test_prepare_tokenizer_sets_pad_and_side(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    assert tok.pad_token is None
    prepare_tokenizer(tok, padding_side="left")
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    batch = tok(["a", "a longer text"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # left-padded
    with pytest.raises(ModelLoadError, match="padding_side 'middle'"):
        prepare_tokenizer(tok, padding_side="middle")


def test_tokenizer_fixture_has_chat_template(tokenizer: Any) -> None:
    assert len(tokenizer) == 49152
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


# --- generic local directory -----------------------------------------------------------------


@pytest.fixture
def saved_tiny(tmp_path: Path, tiny_llama: nn.Module, tokenizer: Any) -> Path:
    path = tmp_path / "tiny"
    tiny_llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_load_local_directory(saved_tiny: Path, tiny_llama: nn.Module) -> None:
    loaded = load_model(str(saved_tiny), device="cpu", dtype="bf16", padding_side="left")
    assert loaded.path == saved_tiny and loaded.name == str(saved_tiny)
    assert loaded.device == "cpu" and loaded.dtype == "bfloat16"
    assert loaded.model.dtype == torch.bfloat16 and not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    assert loaded.tokenizer.model_max_length == 512  # from max_position_embeddings
    assert loaded.load_seconds > 0
    fp32 = load_model(str(saved_tiny), device="cpu")
    ids = torch.tensor([[1, 504, 3458, 314]])
    with torch.no_grad():  # sdpa (loaded) vs eager (fixture) attention: equal up to rounding
        torch.testing.assert_close(fp32.model(ids).logits, tiny_llama(ids).logits)


# --- the embedded model (slow) ---------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_matches_gguf() -> None:
    from transformers import AutoModelForCausalLM

    loaded = load_model(DEFAULT_MODEL, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert is_valid_cache(loaded.path, source_stamp(embedded_gguf_path()))
    assert (loaded.path / "generation_config.json").is_file()
    assert model.generation_config.eos_token_id == 2
    assert "<|im_start|>" in tok.chat_template and tok.pad_token is not None

    gguf = embedded_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    batch = tok(["The capital of France is", "Hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch).logits  # (2, T, 49152)
        theirs = reference(**batch).logits
    assert torch.equal(ours, theirs)
    top = tok.decode(ours[0, batch["attention_mask"][0].sum() - 1].argmax())
    assert top.strip() == "Paris"
