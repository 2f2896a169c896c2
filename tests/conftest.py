"""Shared fixtures: the real SmolLM2 tokenizer and tiny random decoders built from configs.

Every tiny model uses the tokenizer's vocabulary (49152) and special token ids, so any of
them can run on real text from the `tokenizer` fixture; hidden size 64 keeps each one near
3-4 M parameters. Models are built at a fixed seed, in eval mode with frozen parameters, once
per session: tests must not modify them (wrap interventions in hooks that are removed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

SEED = 0
VOCAB_SIZE = 49152  # SmolLM2's tokenizer
SPECIAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def llama_config() -> transformers.PretrainedConfig:
    """Tiny LlamaConfig: hidden 64, 4 layers, 4 heads (2 kv), SmolLM2 vocab, tied like SmolLM2."""
    return transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, tie_word_embeddings=True, **DECODER, **SPECIAL_IDS
    )


def gpt2_config() -> transformers.PretrainedConfig:
    """Tiny GPT2Config: hidden 64, 4 layers, 4 heads, SmolLM2 vocab."""
    return transformers.GPT2Config(
        vocab_size=VOCAB_SIZE, n_embd=64, n_layer=4, n_head=4, n_positions=512, **SPECIAL_IDS
    )


def qwen2_config() -> transformers.PretrainedConfig:
    """Tiny Qwen2Config: hidden 64, 4 layers, 4 heads (2 kv), SmolLM2 vocab."""
    return transformers.Qwen2Config(vocab_size=VOCAB_SIZE, **DECODER, **SPECIAL_IDS)


def gemma_config() -> transformers.PretrainedConfig:
    """Tiny Gemma2Config: hidden 64, 4 layers, 4 heads (2 kv) of dim 16, SmolLM2 vocab."""
    return transformers.Gemma2Config(
        vocab_size=VOCAB_SIZE, head_dim=16, sliding_window=16, **DECODER, **SPECIAL_IDS
    )


def neox_config() -> transformers.PretrainedConfig:
    """Tiny GPTNeoXConfig (Pythia's architecture): hidden 64, 4 layers, 4 heads."""
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=512,
        **SPECIAL_IDS,
    )


EXTRA_CONFIGS: dict[str, Callable[[], transformers.PretrainedConfig]] = {"neox": neox_config}
"""Architectures tested by the objectives but not by every forward-pass test."""

CONFIGS: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "llama": llama_config,
    "gpt2": gpt2_config,
    "qwen2": qwen2_config,
    "gemma": gemma_config,
}


def build_tiny_model(arch: str, seed: int = SEED) -> nn.Module:
    """A tiny random causal LM of ``arch`` (a key of `CONFIGS`), eval mode, frozen, fp32."""
    torch.manual_seed(seed)
    config = {**CONFIGS, **EXTRA_CONFIGS}[arch]()
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The real SmolLM2-135M-Instruct tokenizer (pad = eos, right padding), from the GGUF.

    The first session caches it under the blackbox model cache; later sessions load it in ~1 s.
    """
    from blackbox.models import DEFAULT_MODEL, load_tokenizer

    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_llama() -> nn.Module:
    return build_tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: nn.Module, tokenizer: Any
) -> Path:
    """The tiny Llama with the real tokenizer, saved once per session: read-only for tests."""
    path = tmp_path_factory.mktemp("tiny_llama") / "model"
    tiny_llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2() -> nn.Module:
    return build_tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_qwen2() -> nn.Module:
    return build_tiny_model("qwen2")


@pytest.fixture(scope="session")
def tiny_gemma() -> nn.Module:
    return build_tiny_model("gemma")


@pytest.fixture(scope="session")
def tiny_neox() -> nn.Module:
    return build_tiny_model("neox")


@pytest.fixture(scope="session", params=list(CONFIGS))
def tiny_model(request: pytest.FixtureRequest) -> nn.Module:
    """Each tiny architecture in turn (ids: llama, gpt2, qwen2, gemma)."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def bundled_data_dir() -> Path:
    """The data cache with every bundled dataset on disk (fetched if missing)."""
    from blackbox.evals.data import blackbox_data_dir, fetch_all

    fetch_all()
    return blackbox_data_dir()


@pytest.fixture(scope="session")
def standard_data_dir() -> Path:
    """The data cache with the standard tasks' Arrow files on disk (fetched if missing)."""
    from blackbox.evals.data import blackbox_data_dir
    from blackbox.evals.standard_tasks import fetch_standard

    fetch_standard(blackbox_data_dir(), progress=False)
    return blackbox_data_dir()
