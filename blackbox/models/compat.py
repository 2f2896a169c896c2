"""Names that changed within transformers 5.x, resolved once per model class.

Transformers 5.2x renamed the key/value cache argument and output field from
``past_key_values`` to ``cache`` (the old name warns and goes away in 5.40); earlier 5.x
releases only know ``past_key_values``.  Callers pass the cache through :func:`cache_kwargs`
and read it back with :func:`output_cache`, so both work.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_name(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(...)``, under the name this transformers version takes."""
    return {_cache_name(type(model)): cache}


def output_cache(out: Any) -> Any:
    """The key/value cache of a model output (``out.cache`` or ``out.past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
