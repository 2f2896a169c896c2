"""What leaves the process is safe: storage URLs masked in every message and file, user values
shown bounded."""

from __future__ import annotations

import re
import reprlib
from typing import Any

# a URL's userinfo: everything between "scheme://" and the *last* "@" before the host's path,
# so an unencoded "@" inside a password is masked whole
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
# "user:password@host" without a scheme (a storage URL whose "postgresql://" was forgotten):
# the password runs to the last "@" before a space, "/", "?", "#" or a quote
_BARE_USERINFO = re.compile(r"(?<![\w.%+/:@-])(?P<user>[\w.%+-]+):(?P<password>[^\s/?#'\"]+)@")
# a password given as a query or keyword parameter (?password=..., &sslpassword=..., password=...)
_PARAM = re.compile(r"(?i)(?P<key>\b(?:ssl)?pass(?:word)?=)(?P<value>[^&\s'\"]*)")

# ``${VAR}``: a reference to the environment (read when the storage opens), not a secret
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# the word a help text shows in a password's place (``postgresql://USER:PASSWORD@HOST/DB``)
_DOC_PASSWORD = "PASSWORD"


def _kept(password: str) -> bool:
    """A password shown as it is: an environment placeholder or the help text's word."""
    return password == _DOC_PASSWORD or PLACEHOLDER.fullmatch(password) is not None


def mask_url(url: str) -> str:
    """Hide every password a storage URL (or a message quoting one) carries.

    ``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; the same for a
    password holding ``@`` or percent-encoding, for ``user:secret@host`` without a scheme, and
    for ``?password=...`` in the query string (or ``password=...`` keyword strings).
    """

    def userinfo(m: re.Match[str]) -> str:
        user, sep, password = m.group("userinfo").partition(":")
        shown = password if _kept(password) else "***"
        return f"{m.group('scheme')}{user}{':' + shown if sep else ''}@"

    def param(m: re.Match[str]) -> str:
        value = m.group("value")
        return m.group("key") + (value if PLACEHOLDER.fullmatch(value) else "***")

    def bare(m: re.Match[str]) -> str:
        password = m.group("password")
        shown = password if _kept(password) else "***"
        return f"{m.group('user')}:{shown}@"

    return _PARAM.sub(param, _BARE_USERINFO.sub(bare, _USERINFO.sub(userinfo, url)))


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
