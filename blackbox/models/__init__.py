"""Models: loading (hub id, local directory, ``.gguf``, the embedded SmolLM2) with a safetensors
cache, and architecture-generic access to decoder blocks and MLPs.

``load_model`` and ``load_tokenizer`` are the public entry points.
"""

from blackbox.models.cache import DEFAULT_MODEL, ModelLoadError
from blackbox.models.loading import LoadedModel, load_model, load_tokenizer

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelLoadError", "load_model", "load_tokenizer"]
