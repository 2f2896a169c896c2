"""What leaves the process is safe: storage URLs masked in every message and file, user values
shown bounded."""

from __future__ import annotations

import re
import reprlib
from typing import Any

# a URL's userinfo: everything between "scheme://" and the *last* "@" before the host's path,
# so an unencoded "@" inside a password is masked whole
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
# a password given as a query or keyword parameter (?password=..., &sslpassword=..., password=...)
_PARAM = re.compile(r"(?i)(?P<key>\b(?:ssl)?pass(?:word)?=)(?P<value>[^&\s'\"]*)")

# ``${VAR}``: a reference to the environment (read when the storage opens), not a secret
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def mask_url(url: str) -> str:
    """Hide every password a storage URL (or a message quoting one) carries.

    ``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; the same for a
    password holding ``@`` or percent-encoding, and for ``?password=...`` in the query string.
    """

    def userinfo(m: re.Match[str]) -> str:
        user, sep, password = m.group("userinfo").partition(":")
        shown = password if PLACEHOLDER.fullmatch(password) else "***"
        return f"{m.group('scheme')}{user}{':' + shown if sep else ''}@"

    def param(m: re.Match[str]) -> str:
        value = m.group("value")
        return m.group("key") + (value if PLACEHOLDER.fullmatch(value) else "***")

    return _PARAM.sub(param, _USERINFO.sub(userinfo, url))


def masked(resolved: dict[str, Any]) -> dict[str, Any]:
    """A resolved config with every ``storage`` password masked (nested sections too: a
    comparison's study, a tune's inner study)."""
    out: dict[str, Any] = {}
    for key, value in resolved.items():
        if key == "storage" and isinstance(value, str):
            out[key] = mask_url(value)
        elif isinstance(value, dict):
            out[key] = masked(value)
        else:
            out[key] = value
    return out


def short_repr(value: Any, width: int = 40) -> str:
    """``repr`` bounded in depth, items and width (never expands a nested value whole)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxtuple = 2, 4, 4, 4
    r.maxstring, r.maxother = width, width
    return r.repr(value)
