"""The suite's one atomic writer: all-or-nothing writes of files and directories (a leaf
module: the standard library only, so every folder may use it).

:class:`Staged` hands out temporary paths next to each target; :meth:`Staged.commit` moves
them into place (``os.replace`` for a file; for a directory the old one is renamed aside,
the new one renamed in, the old one removed), :meth:`Staged.abort` removes them.  Used as a
context manager, an exception aborts, so a failing export leaves every target as it was.
:func:`atomic_write` is the one-file case (run files, data files, caches).

The model cache (:func:`blackbox.models.cache.write_cache_atomically`) publishes its directory
its own way: there the first complete copy wins a race between processes, where a commit here
replaces whatever is in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType


class Staged:
    """Temporary paths for a set of targets, moved into place together."""

    def __init__(self) -> None:
        self._moves: list[tuple[Path, Path]] = []  # (temporary, target)
        self._tag = f"partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._made: list[Path] = []  # parent directories this made (removed on abort)

    def path(self, target: Path) -> Path:
        """A temporary path beside ``target`` (same file system), to be moved onto it."""
        target = Path(target)
        missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        self._made += missing  # deepest first
        tmp = target.with_name(f".{target.name}.{self._tag}")
        self._moves.append((tmp, target))
        return tmp

    def final(self, path: Path) -> Path:
        """Where ``path`` (a temporary path or a file under one) will be after the commit."""
        path = Path(path)
        for tmp, target in self._moves:
            if path == tmp:
                return target
            if path.is_relative_to(tmp):
                return target / path.relative_to(tmp)
        return path

    def commit(self) -> None:
        """Move every written temporary path onto its target.

        If a move fails, the temporary paths not yet moved are removed and the error is
        raised (targets already moved stay, and so do the directories made for them).
        """
        try:
            while self._moves:
                tmp, target = self._moves[0]
                if os.path.lexists(tmp):
                    if tmp.is_dir() and target.is_dir() and not target.is_symlink():
                        old = target.with_name(f".{target.name}.old-{self._tag}")
                        os.replace(target, old)
                        os.replace(tmp, target)
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        os.replace(tmp, target)
                self._moves.pop(0)
        except BaseException:
            self._made.clear()
            self.abort()
            raise
        self._made.clear()

    def abort(self) -> None:
        """Remove every temporary path; the targets are untouched."""
        for tmp, _ in self._moves:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                tmp.unlink()
        self._moves.clear()
        for d in self._made:
            try:
                d.rmdir()  # only if still empty
            except OSError:
                pass
        self._made.clear()

    def __enter__(self) -> Staged:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text, or bytes) to ``path`` through a temporary file beside it and one
    ``os.replace``: readers see the old file or the new one, never a part (:class:`Staged`)."""
    with Staged() as staged:
        tmp = staged.path(Path(path))
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
