"""Secrets never leave the process: storage URLs are masked in every message and file."""

from __future__ import annotations

import re
from typing import Any

# a URL's userinfo: everything between "scheme://" and the *last* "@" before the host's path,
# so an unencoded "@" inside a password is masked whole
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
# a password given as a query or keyword parameter (?password=..., &sslpassword=..., password=...)
_PARAM = re.compile(r"(?i)(?P<key>\b(?:ssl)?pass(?:word)?=)(?P<value>[^&\s'\"]*)")


def mask_url(url: str) -> str:
    """Hide every password a storage URL (or a message quoting one) carries.

    ``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; the same for a
    password holding ``@`` or percent-encoding, and for ``?password=...`` in the query string.
    """

    def userinfo(m: re.Match[str]) -> str:
        user, sep, _ = m.group("userinfo").partition(":")
        return f"{m.group('scheme')}{user}{':***' if sep else ''}@"

    return _PARAM.sub(r"\g<key>***", _USERINFO.sub(userinfo, url))


def masked(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved config with its storage password masked."""
    if resolved.get("storage"):
        resolved = dict(resolved, storage=mask_url(resolved["storage"]))
    return resolved
