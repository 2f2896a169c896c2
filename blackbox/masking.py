"""Secrets never leave the process: storage URLs are masked in every message and file."""

from __future__ import annotations

import re
from typing import Any


def mask_url(url: str) -> str:
    """Hide the password of a storage URL (``postgresql://user:***@host/db``)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def masked(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved config with its storage password masked."""
    if resolved.get("storage"):
        resolved = dict(resolved, storage=mask_url(resolved["storage"]))
    return resolved
