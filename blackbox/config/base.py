"""The config's error type and strict base model (unknown keys are errors)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from blackbox.masking import PLACEHOLDER


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the field."""


class Strict(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


def check_name(name: str) -> str:
    """A study name is also a directory name: letters, digits, ``_ . -``, not starting with a
    dot (so never ``.`` or ``..``), at most 100 characters."""
    if not NAME_PATTERN.match(name):
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise ValueError(
            f"{shown!r} ({len(name)} characters) is not a safe name; allowed: 1-100 of "
            "letters, digits, '_', '.', '-', not starting with '.' or '-'"
        )
    return name


def check_storage_url(url: str) -> str:
    """A storage URL with a known scheme and at most one ``@`` before its host (a password
    holding ``@`` must be percent-encoded, or half of it would be read as the host)."""
    if PLACEHOLDER.fullmatch(url):  # the whole URL is read from the environment later
        return url
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0].lower() not in STORAGE_SCHEMES:
        raise ValueError(
            f"{scheme if sep else url[:20]!r} is not a storage URL scheme; allowed: "
            "sqlite:///FILE, postgresql://USER:PASSWORD@HOST/DB, mysql://..., journal:///FILE"
        )
    if scheme.split("+")[0].lower() in ("postgresql", "mysql"):
        netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if netloc.count("@") > 1:
            raise ValueError(
                "the user or password holds an unencoded '@'; percent-encode it as %40"
            )
    return url


StorageURL = Annotated[str, AfterValidator(check_storage_url)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
