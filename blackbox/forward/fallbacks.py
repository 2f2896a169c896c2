"""Fast paths that switch themselves off, loudly (a leaf module).

Every fast path (packed rows, trunk resume, branching inside one forward, the cached document
prefix) is checked once per model against the plain forward; a mismatch, or an error before
the check passed, switches it off with :func:`switch_off`: its one-line reason is kept in the
owner's ``fallbacks`` (``result.json``: ``scoring.fallbacks``, the bench table) and warned
about, so it cannot scroll past unrecorded.
"""

from __future__ import annotations

import warnings

import torch


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error: never a reason to switch a fast path off (re-raise it)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def switch_off(
    fallbacks: dict[str, str],
    path: str,
    reason: str,
    warning: str,
    stacklevel: int = 2,
) -> str:
    """Record why fast path ``path`` is off and warn; returns the kept reason.

    Args:
        fallbacks: the owner's ``path -> reason`` record.
        path: ``packed_rows``, ``trunk_resume``, ``branch`` or ``pre_cache``.
        reason: why (its first line is kept).
        warning: the warning's text; ``{reason}`` in it is replaced by the reason.
        stacklevel: as :func:`warnings.warn`, counted from the caller.
    """
    reason = reason.splitlines()[0] if reason else reason
    fallbacks[path] = reason
    warnings.warn(warning.replace("{reason}", reason), stacklevel=stacklevel + 1)
    return reason
